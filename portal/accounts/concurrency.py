"""Detecting that someone else saved an account while it was being edited.

An edit form carries the account's ``version`` and a signed copy of the values
it was opened with. A save whose version is older than the stored one is
refused; the difference between that copy and the stored values is what the
other person changed, and it is shown beside the typed values, which stay.
"""

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer

SALT = "account-form-original"


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def stamp(values: dict) -> str:
    """Sign the values a form was opened with (no secrets belong in them)."""
    return _serializer().dumps(values)


def read_stamp(token: str) -> dict:
    try:
        values = _serializer().loads(token)
    except BadSignature:
        return {}
    return values if isinstance(values, dict) else {}


def changes_since(token: str, current: dict) -> dict:
    """The fields whose stored value differs from the one the form was opened with."""
    original = read_stamp(token)
    return {
        name: value for name, value in current.items() if original.get(name) != value
    }
