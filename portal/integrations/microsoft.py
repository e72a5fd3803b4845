"""The Microsoft 365 tenant connection: settings, consent, tokens and search.

An administrator registers an application in Microsoft Entra ID, enters its
tenant ID, application (client) ID, client secret and the secret's expiry
date on Integrations › Microsoft 365, and grants admin consent. The portal
then obtains app-only tokens with the client credentials grant (through
Authlib) for the mailbox search and for global accounts. Personal accounts use
the same application with delegated, per-user tokens (see
``microsoft_mailboxes``).

Sign-in and Graph hosts follow the tenant's cloud unless
``MICROSOFT_LOGIN_URL`` or ``MICROSOFT_GRAPH_URL`` override them, as the
tests do to reach a local fake.
"""

import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from authlib.common.security import generate_token
from authlib.common.urls import add_params_to_uri
from flask import current_app, session
from flask_login import current_user

from .. import crypto
from ..extensions import db
from ..models import Integration, IntegrationSecret
from ..services import audit
from ..transports.base import Step, TransportError
from ..transports.graph import GraphClient, GraphUser, RetryPolicy
from .microsoft_tokens import (
    CACHE,
    OAuthApp,
    SignInFailed,
    explain,
    request_app_token,
    token_claims,
)

log = logging.getLogger(__name__)

KIND = "microsoft365"  # Integration.kind, and the account type's key
CLIENT_SECRET = "client_secret"  # noqa: S105 (the name of the stored secret)


@dataclass(frozen=True)
class Cloud:
    key: str
    label: str
    login_url: str
    graph_url: str  # also the resource identifier in Graph scopes
    # The resource of SMTP and IMAP OAuth2 scopes, such as SMTP.Send.
    outlook_resource: str


# The sign-in and Graph root endpoints of each cloud, from Microsoft Graph's
# "national cloud deployments" page, and the Exchange Online resource whose
# scopes SMTP and IMAP sign-in with OAuth2 need.
# NOTE: only the global cloud's Exchange Online resource has been checked
# against Microsoft's documentation. The US Government and China values are
# their clouds' Outlook hosts, and no sign-in has tried them.
CLOUDS = {
    cloud.key: cloud
    for cloud in (
        Cloud(
            "global",
            "Global (Microsoft 365)",
            "https://login.microsoftonline.com",
            "https://graph.microsoft.com",
            "https://outlook.office.com",
        ),
        Cloud(
            "usgov",
            "US Government (GCC High)",
            "https://login.microsoftonline.us",
            "https://graph.microsoft.us",
            "https://outlook.office365.us",
        ),
        Cloud(
            "china",
            "China (operated by 21Vianet)",
            "https://login.chinacloudapi.cn",
            "https://microsoftgraph.chinacloudapi.cn",
            "https://partner.outlook.cn",
        ),
    )
}


@dataclass(frozen=True)
class Permission:
    name: str
    feature: str
    purpose: str


# Graph application permissions, each with the feature that needs it.
APP_PERMISSIONS = (
    Permission(
        "User.Read.All", "Mailbox search", "lists users when you search for a mailbox"
    ),
    Permission("Mail.Send", "Sending", "sends mail from the chosen mailboxes"),
    Permission(
        "Mail.ReadWrite",
        "Reading",
        "counts the inbox for Test read and lets the Email Manager read mail",
    ),
)
# Delegated permissions that a staff member grants for a personal mailbox.
DELEGATED_PERMISSIONS = ("offline_access", "User.Read", "Mail.Send")

STATE_MAX_AGE = 600  # seconds a consent or sign-in round trip may take
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


# -- settings and secrets -----------------------------------------------------


def get_integration() -> Integration | None:
    return db.session.get(Integration, KIND)


def current_settings() -> dict:
    """Return the stored settings, or an empty mapping before the first save."""
    integration = get_integration()
    return dict(integration.settings or {}) if integration else {}


def get_integration_secret(name: str) -> str:
    """Decrypt a secret of the Microsoft 365 integration; "" when none is stored."""
    row = db.session.scalar(
        db.select(IntegrationSecret).filter_by(kind=KIND, name=name)
    )
    return crypto.decrypt(row.ciphertext) if row else ""


def set_integration_secret(integration: Integration, name: str, value: str) -> None:
    """Encrypt and store ``value``; an empty value removes the secret."""
    crypto.put_secret(integration.secrets, IntegrationSecret, name, value)


def has_client_secret() -> bool:
    integration = get_integration()
    return bool(integration) and any(
        s.name == CLIENT_SECRET for s in integration.secrets
    )


def is_configured(settings: dict | None = None) -> bool:
    settings = current_settings() if settings is None else settings
    return (
        bool(settings.get("tenant_id") and settings.get("client_id"))
        and has_client_secret()
    )


def is_connected() -> bool:
    """Return whether the last connection check obtained a token."""
    settings = current_settings()
    return bool(settings.get("connected")) and is_configured(settings)


def secret_expiry(settings: dict) -> date | None:
    value = settings.get("secret_expires") or ""
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def save_settings(
    *,
    tenant_id: str,
    client_id: str,
    cloud: str,
    secret_expires: date | None,
    client_secret: str = "",
) -> bool:
    """Store the connection settings; a blank ``client_secret`` keeps the stored one.

    Changing the tenant, application, cloud or secret marks the connection
    unchecked until the next Check connection. Returns whether anything
    changed. The caller commits.
    """
    integration = get_integration()
    if integration is None:
        integration = Integration(kind=KIND, settings={})
        db.session.add(integration)
    before = dict(integration.settings or {})
    public_before = _public(before) | {CLIENT_SECRET: 0}

    after = dict(before)
    after.update(
        tenant_id=tenant_id,
        client_id=client_id,
        cloud=cloud,
        secret_expires=secret_expires.isoformat() if secret_expires else "",
    )
    credentials_changed = bool(client_secret) or any(
        before.get(name) != after[name] for name in ("tenant_id", "client_id", "cloud")
    )
    if client_secret:
        set_integration_secret(integration, CLIENT_SECRET, client_secret)
    if credentials_changed:
        after.update(connected=False, check={}, consent={})
        forget_app_tokens()
    integration.settings = after

    changes = audit.diff(
        public_before,
        _public(after) | {CLIENT_SECRET: 1 if client_secret else 0},
        secret_fields=(CLIENT_SECRET,),
    )
    if changes:
        audit.record(
            "integration.update",
            object_type="integration",
            object_id=KIND,
            label="Microsoft 365",
            changes=changes,
        )
        log.info("Microsoft 365 integration settings changed: %s", sorted(changes))
    return bool(changes)


def _public(settings: dict) -> dict:
    return {
        name: settings.get(name, "")
        for name in ("tenant_id", "client_id", "cloud", "secret_expires")
    }


# -- endpoints ----------------------------------------------------------------


def cloud_of(settings: dict) -> Cloud:
    return CLOUDS.get(settings.get("cloud") or "global", CLOUDS["global"])


def login_url(settings: dict) -> str:
    return current_app.config.get("MICROSOFT_LOGIN_URL") or cloud_of(settings).login_url


def graph_url(settings: dict) -> str:
    return current_app.config.get("MICROSOFT_GRAPH_URL") or cloud_of(settings).graph_url


def graph_scope(settings: dict, permission: str) -> str:
    """Return a Graph permission as a scope. The resource is the cloud's Graph, even
    when the requests go to an overridden URL."""
    return f"{cloud_of(settings).graph_url}/{permission}"


def delegated_scope(settings: dict) -> str:
    return " ".join(
        name if name == "offline_access" else graph_scope(settings, name)
        for name in DELEGATED_PERMISSIONS
    )


def request_timeout() -> float:
    return float(current_app.config.get("MICROSOFT_TIMEOUT", 30.0))


def retry_policy() -> RetryPolicy:
    config = current_app.config
    return RetryPolicy(
        max_retries=int(config.get("MICROSOFT_GRAPH_MAX_RETRIES", 3)),
        max_wait=float(config.get("MICROSOFT_GRAPH_MAX_RETRY_WAIT", 30.0)),
    )


def oauth_app(settings: dict | None = None) -> OAuthApp:
    settings = current_settings() if settings is None else settings
    return OAuthApp(
        login_url=login_url(settings),
        tenant=settings.get("tenant_id", ""),
        client_id=settings.get("client_id", ""),
        client_secret=get_integration_secret(CLIENT_SECRET),
        timeout=request_timeout(),
    )


def not_connected_error() -> TransportError:
    return TransportError(
        Step.AUTHENTICATION,
        "The Microsoft 365 tenant is not connected.",
        "An administrator enters the tenant's application on Integrations › "
        "Microsoft 365, grants consent and checks the connection.",
    )


# -- app-only tokens and the directory ---------------------------------------


def _app_token_key(app: OAuthApp, scope: str) -> tuple:
    return ("app", app.login_url, app.tenant, app.client_id, scope)


def app_token_provider(settings: dict | None = None):
    """Return a token provider for Graph with the application's own permissions."""
    settings = current_settings() if settings is None else settings
    app = oauth_app(settings)
    scope = graph_scope(settings, ".default")
    key = _app_token_key(app, scope)

    def provide(stale: str | None = None) -> str:
        return CACHE.get(key, lambda: request_app_token(app, scope), stale=stale)

    return provide


def forget_app_tokens() -> None:
    CACHE.forget(lambda key: key[0] == "app")


def directory_client() -> GraphClient:
    settings = current_settings()
    return GraphClient(
        graph_url(settings),
        app_token_provider(settings),
        timeout=request_timeout(),
        retry=retry_policy(),
        label="the directory",
    )


@dataclass
class SearchResult:
    query: str
    users: list[GraphUser] = field(default_factory=list)
    next_link: str = ""
    error: TransportError | None = None


def search_mailboxes(query: str, next_link: str = "") -> SearchResult:
    """Search the tenant's users by the start of address, UPN or display name."""
    query = query.strip()
    if not is_connected():
        return SearchResult(query, error=not_connected_error())
    client = directory_client()
    try:
        page = client.search_users(query, next_link)
    except TransportError as error:
        log.info("Mailbox search for %r failed: %s", query, error.summary)
        return SearchResult(query, error=error)
    finally:
        client.close()
    return SearchResult(query, page.users, page.next_link)


def lookup_user(user_id: str) -> GraphUser:
    """Read one user by id or user principal name; raises TransportError."""
    if not is_connected():
        raise not_connected_error()
    client = directory_client()
    try:
        return client.get_user(user_id)
    finally:
        client.close()


def find_user(address: str) -> GraphUser | None:
    """Find the user whose address or user principal name is ``address``."""
    if not is_connected():
        raise not_connected_error()
    client = directory_client()
    try:
        return client.find_user(address)
    finally:
        client.close()


# -- connection check ---------------------------------------------------------


@dataclass(frozen=True)
class CheckItem:
    permission: Permission
    granted: bool


def checklist(settings: dict | None = None) -> list[CheckItem]:
    """Pair each needed permission with whether the last checked token carried it."""
    settings = current_settings() if settings is None else settings
    roles = set((settings.get("check") or {}).get("roles") or [])
    return [
        CheckItem(permission, permission.name in roles)
        for permission in APP_PERMISSIONS
    ]


def check_connection() -> dict:
    """Obtain a fresh app-only token and record the permissions it carries.

    Returns the stored check: ``ok`` (a token was obtained), ``roles``,
    ``summary``, ``advice``, ``reply`` and ``at``. The caller commits.
    """
    integration = get_integration()
    settings = current_settings()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if integration is None or not is_configured(settings):
        check = {
            "ok": False,
            "at": now,
            "roles": [],
            "summary": "The connection is not set up yet.",
            "advice": "Enter the tenant ID, the application (client) ID and the "
            "client secret, and save.",
            "reply": "",
        }
        return check

    app = oauth_app(settings)
    scope = graph_scope(settings, ".default")
    log.info("Checking the Microsoft 365 connection of client %s", app.client_id)
    try:
        token, lifetime = request_app_token(app, scope)
    except SignInFailed as failure:
        check = {
            "ok": False,
            "at": now,
            "roles": [],
            "summary": failure.summary,
            "advice": failure.advice,
            "reply": failure.reply,
        }
    else:
        # The fresh token replaces any cached one, so new roles apply at once.
        key = _app_token_key(app, scope)
        CACHE.forget(lambda cached: cached == key)
        CACHE.get(key, lambda: (token, lifetime))
        roles = sorted(token_claims(token).get("roles") or [])
        missing = [p.name for p in APP_PERMISSIONS if p.name not in roles]
        if missing:
            summary = (
                "Signed in to the tenant, but these permissions are not granted: "
                + ", ".join(missing)
                + "."
            )
            advice = (
                "In the app registration add them under API permissions › Microsoft "
                "Graph › Application permissions, then press Grant consent here."
            )
        else:
            summary = (
                "Signed in to the tenant; every permission the portal needs is granted."
            )
            advice = ""
        check = {
            "ok": True,
            "at": now,
            "roles": roles,
            "summary": summary,
            "advice": advice,
            "reply": "",
        }

    settings.update(check=check, connected=check["ok"])
    integration.settings = settings
    audit.record(
        "integration.check",
        object_type="integration",
        object_id=KIND,
        label="Microsoft 365",
        outcome=audit.SUCCESS if check["ok"] else audit.FAILURE,
        detail=check["summary"],
    )
    return check


# -- admin consent ------------------------------------------------------------

CONSENT_KEY = "microsoft365_consent"


class ConsentRefused(Exception):
    """The consent response is not usable; the message explains why and what to do."""


def start_admin_consent(redirect_uri: str) -> str:
    """Remember a one-time state in the session and return the consent URL."""
    settings = current_settings()
    if not is_configured(settings):
        raise ConsentRefused(
            "Enter and save the tenant ID, application (client) ID and client "
            "secret before granting consent."
        )
    state = generate_token(32)
    session[CONSENT_KEY] = {"state": state, "at": time.time(), "staff": current_user.id}
    app = oauth_app(settings)
    log.info("Admin consent started for client %s", app.client_id)
    return add_params_to_uri(
        app.admin_consent_url,
        [
            ("client_id", app.client_id),
            # .default requests every permission configured on the registration.
            ("scope", graph_scope(settings, ".default")),
            ("redirect_uri", redirect_uri),
            ("state", state),
        ],
    )


def state_matches(pending: dict | None, state: str) -> bool:
    """Return whether ``state`` is the one this browser session started, still fresh."""
    if not pending or not state:
        return False
    fresh = time.time() - float(pending.get("at", 0)) <= STATE_MAX_AGE
    ours = pending.get("staff") == current_user.id
    return fresh and ours and hmac.compare_digest(str(pending.get("state", "")), state)


def finish_admin_consent(args) -> str:
    """Check the consent response and record it; return the tenant that consented.

    The state is removed from the session first, so a response works once.
    Raises ``ConsentRefused``. The caller commits.
    """
    pending = session.pop(CONSENT_KEY, None)
    if not state_matches(pending, args.get("state", "")):
        _record_consent(audit.DENIED, "state missing, reused or from another session")
        raise ConsentRefused(
            "The response from Microsoft did not match a consent request started in "
            "this browser session, or it was already used or is too old. Nothing "
            "was changed. Press Grant consent again."
        )

    if args.get("error"):
        failure = explain(
            args.get("error", ""), args.get("error_description", ""), for_user=False
        )
        _record_consent(audit.FAILURE, failure.reply)
        raise ConsentRefused(f"{failure.summary} {failure.advice}")

    if args.get("admin_consent", "").lower() != "true":
        _record_consent(audit.FAILURE, "no admin_consent in the answer")
        raise ConsentRefused(
            "Microsoft did not confirm the consent. Press Grant consent again."
        )

    tenant = args.get("tenant", "")
    settings = current_settings()
    configured = settings.get("tenant_id", "")
    if _GUID.match(configured) and tenant and tenant.lower() != configured.lower():
        _record_consent(audit.FAILURE, f"consent came from tenant {tenant}")
        raise ConsentRefused(
            f"Consent was granted in the tenant {tenant}, not in the configured "
            f"tenant {configured}. Sign in as an administrator of {configured} and "
            "press Grant consent again."
        )

    settings["consent"] = {
        "granted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tenant": tenant,
    }
    get_integration().settings = settings
    _record_consent(audit.SUCCESS, f"tenant {tenant}")
    # Roles granted a moment ago appear only in tokens issued from now on.
    forget_app_tokens()
    return tenant


def _record_consent(outcome: str, detail: str) -> None:
    audit.record(
        "integration.consent",
        object_type="integration",
        object_id=KIND,
        label="Microsoft 365",
        outcome=outcome,
        detail=detail,
    )


# -- reminders ----------------------------------------------------------------


@dataclass(frozen=True)
class ExpiryNotice:
    level: str  # "info" up to 30 days before, "warning" up to 7, "error" from 1
    message: str


def expiry_notice(
    settings: dict | None = None, today: date | None = None
) -> ExpiryNotice | None:
    """The reminder about the client secret's expiry, 30, 7 and 1 days ahead."""
    settings = current_settings() if settings is None else settings
    expires = secret_expiry(settings)
    if expires is None:
        return None
    today = today or datetime.now(UTC).date()
    days = (expires - today).days
    consequence = (
        "Mailbox search, sending and reading through Microsoft 365 stop working "
        "then. Create a new secret in the app registration and enter it on "
        "Integrations › Microsoft 365."
    )
    if days < 0:
        return ExpiryNotice(
            "error",
            f"The Microsoft 365 client secret expired on {expires.isoformat()}. "
            "Mailbox search, sending and reading through Microsoft 365 fail until "
            "a new secret is entered on Integrations › Microsoft 365.",
        )
    if days > 30:
        return None
    when = {0: "today", 1: "tomorrow"}.get(days, f"in {days} days")
    if days <= 1:
        level = "error"
    elif days <= 7:
        level = "warning"
    else:
        level = "info"
    return ExpiryNotice(
        level,
        f"The Microsoft 365 client secret expires {when} ({expires.isoformat()}). "
        + consequence,
    )
