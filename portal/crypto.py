"""Encryption of stored secrets with a rotatable list of Fernet keys.

The first configured key encrypts; every key decrypts, so an operator can put
a new key first, run ``flask --app portal rotate-keys`` and then drop the old
one.
"""

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with any configured key."""


def _box() -> MultiFernet:
    keys = current_app.config["ENCRYPTION_KEYS"]
    return MultiFernet([Fernet(key) for key in keys])


def encrypt(plaintext: str) -> str:
    return _box().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    try:
        return _box().decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken as error:
        raise SecretUnreadable(
            "A stored secret cannot be decrypted with the configured "
            "PORTAL_ENCRYPTION_KEYS; was a key removed before rotate-keys ran?"
        ) from error


def reencrypt(token: str) -> str:
    """Return ``token`` encrypted with the first key."""
    try:
        return _box().rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken as error:
        raise SecretUnreadable("A stored secret cannot be decrypted.") from error


# A value typed into a secret field survives a failed form step as a sealed
# token in a hidden input: encrypted, bound to the staff member, and short-lived.
SEAL_MAX_AGE = 3600  # seconds


def seal(value: str, staff_id: int) -> str:
    return _box().encrypt(f"{staff_id}:{value}".encode()).decode("ascii")


def unseal(token: str, staff_id: int) -> str | None:
    """Return the sealed value, or None when the token is invalid, old or not ours."""
    try:
        plaintext = _box().decrypt(token.encode("ascii"), ttl=SEAL_MAX_AGE).decode()
    except (InvalidToken, UnicodeError):
        return None
    owner, _, value = plaintext.partition(":")
    return value if owner == str(staff_id) else None


def read_secret(rows, name: str) -> str:
    """Return the decrypted secret called ``name`` among ``rows``, or ""."""
    for row in rows:
        if row.name == name:
            return decrypt(row.ciphertext)
    return ""


def put_secret(rows: list, make_row, name: str, value: str | None) -> None:
    """Store ``value`` encrypted in the row called ``name`` of ``rows``.

    ``rows`` is a relationship list such as ``EmailAccount.secrets`` and
    ``make_row`` its row class; None or "" removes the secret.
    """
    existing = next((row for row in rows if row.name == name), None)
    if not value:
        if existing is not None:
            rows.remove(existing)
        return
    if existing is None:
        rows.append(make_row(name=name, ciphertext=encrypt(value)))
    else:
        existing.ciphertext = encrypt(value)
