"""Creating, editing, enabling and deleting email accounts, and their secrets."""

import logging
from collections.abc import Iterable

from sqlalchemy import func, select

from .. import crypto
from ..extensions import db
from ..models import AccountSecret, EmailAccount
from ..transports.base import ReadSettings, Security, SmtpSettings
from . import audit

log = logging.getLogger(__name__)

INTERNET = "internet"
SECRET_NAMES = ("smtp_password", "read_password")

# Authentication choices of an Internet account. "oauth2-google" and
# "oauth2-microsoft" sign in to SMTP and IMAP with SASL XOAUTH2, using an
# access token from the refresh token of a Google or Microsoft sign-in.
AUTH_PASSWORD = "password"  # noqa: S105 (a choice's name, not a password)
AUTH_NONE = "none"
OAUTH_PREFIX = "oauth2-"
OAUTH_PROVIDERS = ("google", "microsoft")
OAUTH_REFRESH_TOKEN = "refresh_token"  # noqa: S105 (the name of the stored secret)


def oauth_provider(auth: str | None) -> str | None:
    """Return "google" or "microsoft" for an OAuth2 choice, else None."""
    if not isinstance(auth, str) or not auth.startswith(OAUTH_PREFIX):
        return None
    provider = auth.removeprefix(OAUTH_PREFIX)
    return provider if provider in OAUTH_PROVIDERS else None


class AccountError(ValueError):
    """A change to an account was rejected; the message says why."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# -- secrets ---------------------------------------------------------------


def get_secret(account: EmailAccount, name: str) -> str:
    return crypto.read_secret(account.secrets, name)


def set_secret(account: EmailAccount, name: str, value: str | None) -> None:
    """Store ``value`` encrypted; None or "" removes the secret."""
    crypto.put_secret(account.secrets, AccountSecret, name, value)


# -- queries ---------------------------------------------------------------


def friendly_name_taken(
    owner_id: int | None, name: str, exclude_id: int | None
) -> bool:
    """True when another account of the same owner (or another global account) has ``name``."""
    query = select(EmailAccount.id).where(
        func.coalesce(EmailAccount.owner_id, 0) == (owner_id or 0),
        func.lower(EmailAccount.friendly_name) == name.lower(),
    )
    if exclude_id is not None:
        query = query.where(EmailAccount.id != exclude_id)
    return db.session.scalar(query.limit(1)) is not None


def list_accounts(owner_id: int | None) -> list[EmailAccount]:
    """Personal accounts of ``owner_id``, or the global accounts when it is None."""
    if owner_id is None:
        condition = EmailAccount.owner_id.is_(None)
    else:
        condition = EmailAccount.owner_id == owner_id
    query = (
        select(EmailAccount)
        .where(condition)
        .order_by(func.lower(EmailAccount.friendly_name))
    )
    return list(db.session.scalars(query))


# -- the Internet account type ------------------------------------------------


def form_data_from_account(account: EmailAccount) -> dict:
    """Return the form's initial values for ``account``; secrets are left out."""
    smtp = account.settings.get("smtp", {})
    read = account.settings.get("read") or {}
    return {
        "email_address": account.email_address,
        "from_name": account.from_name,
        "friendly_name": account.friendly_name,
        "description": account.description,
        "enabled": account.enabled,
        "smtp_host": smtp.get("host", ""),
        "smtp_port": str(smtp.get("port", "")),
        "smtp_security": smtp.get("security", "starttls"),
        "smtp_auth": smtp.get("auth", "password"),
        "smtp_username": smtp.get("username", ""),
        "read_protocol": read.get("protocol", ""),
        "read_host": read.get("host", ""),
        "read_port": str(read.get("port", "")),
        "read_security": read.get("security", "ssl"),
        "read_username": read.get("username", ""),
        "read_folder": read.get("folder", "INBOX"),
        "trusted_fingerprint": account.settings.get("trusted_fingerprint", ""),
    }


def settings_from_form(form) -> dict:
    """Build the stored settings mapping from a validated form."""
    settings = {
        "smtp": {
            "host": form.smtp_host.data,
            "port": int(form.smtp_port.data),
            "security": form.smtp_security.data,
            "auth": form.smtp_auth.data,
            "username": form.smtp_username.data
            if form.smtp_auth.data != AUTH_NONE
            else "",
        },
        "read": None,
        "trusted_fingerprint": form.trusted_fingerprint.data or "",
    }
    if form.read_protocol.data:
        settings["read"] = {
            "protocol": form.read_protocol.data,
            "host": form.read_host.data,
            "port": int(form.read_port.data),
            "security": form.read_security.data,
            "username": form.smtp_username.data
            if oauth_provider(form.smtp_auth.data)
            else form.read_username.data,
            "folder": (form.read_folder.data or "INBOX")
            if form.read_protocol.data == "imap"
            else "",
        }
    return settings


def save_internet_account(
    form,
    *,
    account: EmailAccount | None,
    owner_id: int | None,
    security: str | None = None,
) -> EmailAccount:
    """Create or update an Internet account from a validated form.

    Raises ``AccountError`` when the friendly name is taken. The caller commits.
    """
    name = form.friendly_name.data
    if friendly_name_taken(owner_id, name, account.id if account else None):
        scope = "your accounts" if owner_id else "the global accounts"
        raise AccountError(
            f"Another account among {scope} is already named {name!r}. Choose another name.",
            field="friendly_name",
        )

    if account is None:
        account = EmailAccount(account_type=INTERNET, owner_id=owner_id)
        db.session.add(account)
    else:
        account.version += 1

    account.friendly_name = name
    account.description = form.description.data or ""
    account.email_address = form.email_address.data
    account.from_name = form.from_name.data or ""
    account.enabled = bool(form.enabled.data)
    previous = account.settings or {}
    account.settings = settings_from_form(form)
    if security is not None:
        account.security = security

    if form.smtp_auth.data != AUTH_PASSWORD:
        set_secret(account, "smtp_password", None)
    elif form.typed_secrets.get("smtp_password"):
        set_secret(account, "smtp_password", form.typed_secrets["smtp_password"])
    _keep_or_drop_sign_in(account, previous, form)
    if not form.read_protocol.data or oauth_provider(form.smtp_auth.data):
        set_secret(account, "read_password", None)
    elif form.typed_secrets.get("read_password"):
        set_secret(account, "read_password", form.typed_secrets["read_password"])
    return account


def _keep_or_drop_sign_in(account: EmailAccount, previous: dict, form) -> None:
    """Keep an OAuth2 sign-in while the provider and user name stay the same.

    Any other change removes the stored refresh token, because it signs in
    someone else, or to another provider, than the form now names.
    """
    link = previous.get("oauth") or {}
    if sign_in_fits(
        link.get("provider"),
        str(link.get("identity", "")),
        form.smtp_auth.data,
        form.smtp_username.data,
    ):
        account.settings = {
            **account.settings,
            "oauth": link,
            "reconnect_needed": bool(previous.get("reconnect_needed")),
            "reconnect_reason": previous.get("reconnect_reason", ""),
        }
        return
    if link or OAUTH_REFRESH_TOKEN in account.secret_names():
        log.info("Account %s: the stored OAuth2 sign-in no longer applies", account.id)
    set_secret(account, OAUTH_REFRESH_TOKEN, None)


def sign_in_fits(
    provider: str | None, identity: str, auth: str | None, username: str | None
) -> bool:
    """Return whether a sign-in with ``provider`` as ``identity`` serves an
    account whose authentication is ``auth`` and user name ``username``."""
    expected = oauth_provider(auth)
    return (
        expected is not None
        and provider == expected
        and bool(identity)
        and identity.lower() == (username or "").lower()
    )


def oauth_identity(account: EmailAccount) -> str:
    """Return who the account's stored OAuth2 sign-in is for, or "" without one."""
    if OAUTH_REFRESH_TOKEN not in account.secret_names():
        return ""
    return str((account.settings.get("oauth") or {}).get("identity", ""))


def smtp_settings(form, account: EmailAccount | None, timeout: float) -> SmtpSettings:
    """Connection settings from the form's values; a blank password means the stored one.

    For OAuth2 the access token is added by the caller (``mail_oauth``).
    """
    password = form.typed_secrets.get("smtp_password") or (
        get_secret(account, "smtp_password") if account else ""
    )
    use_auth = form.smtp_auth.data != AUTH_NONE
    with_password = form.smtp_auth.data == AUTH_PASSWORD
    return SmtpSettings(
        host=form.smtp_host.data,
        port=int(form.smtp_port.data),
        security=Security(form.smtp_security.data),
        username=form.smtp_username.data if use_auth else "",
        password=password if with_password else "",
        use_auth=use_auth,
        trusted_fingerprint=form.trusted_fingerprint.data or "",
        timeout=timeout,
    )


def stored_smtp_settings(account: EmailAccount, timeout: float) -> SmtpSettings:
    """Connection settings of a saved Internet account, for the delivery worker."""
    smtp = account.settings["smtp"]
    use_auth = smtp.get("auth", AUTH_PASSWORD) != AUTH_NONE
    with_password = smtp.get("auth", AUTH_PASSWORD) == AUTH_PASSWORD
    return SmtpSettings(
        host=smtp["host"],
        port=int(smtp["port"]),
        security=Security(smtp["security"]),
        username=smtp.get("username", "") if use_auth else "",
        password=get_secret(account, "smtp_password") if with_password else "",
        use_auth=use_auth,
        trusted_fingerprint=account.settings.get("trusted_fingerprint", ""),
        timeout=timeout,
    )


def read_settings(form, account: EmailAccount | None, timeout: float) -> ReadSettings:
    """Read settings from the form's values; OAuth2 signs in as the SMTP user name."""
    oauth = oauth_provider(form.smtp_auth.data) is not None
    password = form.typed_secrets.get("read_password") or (
        get_secret(account, "read_password") if account else ""
    )
    return ReadSettings(
        host=form.read_host.data,
        port=int(form.read_port.data),
        security=Security(form.read_security.data),
        username=form.smtp_username.data if oauth else form.read_username.data,
        password="" if oauth else password,
        protocol=form.read_protocol.data,
        folder=form.read_folder.data or "INBOX",
        trusted_fingerprint=form.trusted_fingerprint.data or "",
        timeout=timeout,
    )


def set_enabled(account: EmailAccount, enabled: bool) -> None:
    if account.enabled != enabled:
        audit.record(
            "account.enable" if enabled else "account.disable",
            object_type="account",
            object_id=account.id,
            label=account.friendly_name,
            changes={"enabled": [account.enabled, enabled]},
        )
    account.enabled = enabled
    log.info("Account %s %s", account.id, "enabled" if enabled else "disabled")


def delete_account(account: EmailAccount) -> None:
    log.info("Account %s deleted", account.id)
    audit.record(
        "account.delete",
        object_type="account",
        object_id=account.id,
        label=account.friendly_name,
        changes={name: [value, None] for name, value in snapshot(account).items()},
    )
    db.session.delete(account)


# -- audit -----------------------------------------------------------------------


def snapshot(account: EmailAccount) -> dict:
    """The account's recorded fields, flat, for the audit trail; no secrets."""
    values = {
        "friendly_name": account.friendly_name,
        "description": account.description,
        "email_address": account.email_address,
        "from_name": account.from_name,
        "enabled": account.enabled,
        "account_type": account.account_type,
    }
    if account.owner_id is None:
        values["security"] = account.security
    _flatten("settings", account.settings or {}, values)
    return values


def _flatten(prefix: str, value, into: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, into)
    else:
        into[prefix] = value


def record_saved(
    account: EmailAccount, before: dict | None, changed_secrets: Iterable[str] = ()
) -> None:
    """Audit a create (``before`` None) or an update, after the account is flushed."""
    db.session.flush()
    changes = audit.diff(before or {}, snapshot(account))
    for name in changed_secrets:
        changes[name] = audit.SECRET_MARK
    audit.record(
        "account.create" if before is None else "account.update",
        object_type="account",
        object_id=account.id,
        label=account.friendly_name,
        changes=changes,
    )
