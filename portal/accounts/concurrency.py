"""Detecting that someone else saved an account while it was being edited.

An edit form carries the account's ``version`` and a signed copy of the values
it was opened with. A save whose version is older than the stored one is
refused; the difference between that copy and the stored values is what the
other person changed, and it is shown beside the typed values, which stay.
"""

import logging

from flask import current_app, request
from itsdangerous import BadSignature, URLSafeSerializer

from ..models import EmailAccount

log = logging.getLogger(__name__)

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


def form_fields(account: EmailAccount | None, stamp_values: dict | None = None) -> dict:
    """Return the values of the edit form's hidden ``version`` and ``original`` fields.

    ``stamp_values``, the stored values in the form's field names, stamp the
    form as opened now at the account's current version: on GET, and when a
    save is rejected. Without them a POST passes on the fields it was sent, so
    a request that does not reload the account (a test, a search) keeps them.
    """
    if account is None:
        return {"version": "", "original": ""}
    if stamp_values is not None:
        return {"version": str(account.version), "original": stamp(stamp_values)}
    return {
        "version": request.form.get("version", str(account.version)),
        "original": request.form.get("original", ""),
    }


def reject_if_stale(account: EmailAccount, form, stored_values: dict) -> bool:
    """Reject a save based on an older version, naming what the other save changed.

    Returns True after adding the message to ``form.form_errors``, and the
    caller then renders the form again with ``form_fields(account,
    stored_values)``. ``stored_values`` are the account's values in the form's
    field names.
    """
    posted = request.form.get("version", "")
    if posted == str(account.version):
        return False
    changed = changes_since(request.form.get("original", ""), stored_values)
    described = "; ".join(
        f"{form[name].label.text}: {_shown_value(form[name], value)}"
        for name, value in changed.items()
        if name in form
    )
    form.form_errors.append(
        "Someone else saved this account while you were editing it, so your "
        "changes were not saved. "
        + (f"They changed {described}. " if described else "")
        + "Your values are still on the form: check them and save again to "
        "replace theirs."
    )
    log.info(
        "Save of account %s rejected: the form's version %r is not the stored %s",
        account.id,
        posted,
        account.version,
    )
    return True


def _shown_value(field, value) -> str:
    """Return a stored value as the form shows it: a choice's label, yes or no."""
    if value in ("", None):
        return "(empty)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(field, "iter_choices"):
        for choice in field.iter_choices():
            if choice.value == str(value):
                return str(choice.label)
    return str(value)
