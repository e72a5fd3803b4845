"""The Google Workspace connection: service account, OAuth client, tokens, search.

Administrators connect a Workspace once on the integration page, in one or
both of two ways:

- a service account with domain-wide delegation, whose JSON key is stored
  encrypted. The portal signs a JWT (RFC 7523 jwt-bearer grant, with the
  scope inside the claims) for the mailbox it acts as, and Google returns an
  access token for that mailbox. Global Google accounts and the mailbox
  search use it;
- an OAuth client, whose secret is stored encrypted. Staff members connect a
  personal mailbox with the authorization code flow and PKCE, and the portal
  keeps the refresh token, encrypted, on the account.

Base URLs come from the configuration (GOOGLE_TOKEN_URL, GOOGLE_AUTH_URL,
GOOGLE_GMAIL_URL, GOOGLE_DIRECTORY_URL), so tests point them at a local fake.
"""

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import JWTBearerGrant
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from flask import current_app
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from .. import crypto
from ..extensions import db
from ..models import EmailAccount, Integration, IntegrationSecret
from ..services import accounts as account_service
from ..services import audit, testing
from ..services.accounts import get_secret as get_account_secret
from ..services.messages import build_test_message
from ..services.testing import TestOutcome
from ..transports import gmail
from ..transports.base import Step, TransportError

log = logging.getLogger(__name__)

KIND = "google"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

SCOPE_DIRECTORY = "https://www.googleapis.com/auth/admin.directory.user.readonly"
SCOPE_SEND = "https://www.googleapis.com/auth/gmail.send"
SCOPE_SETTINGS = "https://www.googleapis.com/auth/gmail.settings.basic"
SCOPE_READ = "https://www.googleapis.com/auth/gmail.readonly"


@dataclass(frozen=True)
class ScopeUse:
    scope: str
    purpose: str


# The scopes to allow for the service account's client id in the Admin
# console, in the order the integration page lists them.
DELEGATION_SCOPES = (
    ScopeUse(SCOPE_DIRECTORY, "Search the directory for mailboxes (read-only)."),
    ScopeUse(SCOPE_SEND, "Send mail as a mailbox."),
    ScopeUse(
        SCOPE_SETTINGS,
        "Read a mailbox's send-as aliases, to check a From address that is "
        "not the mailbox itself.",
    ),
    ScopeUse(SCOPE_READ, "Read mail: Test read and the Email Manager."),
)

# Addresses of consumer Gmail. Domain-wide delegation reaches only the
# users of a Workspace, so these can be connected only by signing in.
CONSUMER_DOMAINS = frozenset({"gmail.com", "googlemail.com"})

ID_TOKEN_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
SERVICE_ACCOUNT_KEY_MAX_BYTES = 20_000
REFRESH_TOKEN = "refresh_token"  # noqa: S105 (the name of an account secret)
_KEY_SECRET = "service_account_key"  # noqa: S105 (a secret's name)
_CLIENT_SECRET = "oauth_client_secret"  # noqa: S105 (a secret's name)


class GrantRevoked(TransportError):
    """Google rejected a refresh token with invalid_grant: the grant was revoked or expired."""


class DelegationNotAuthorised(TransportError):
    """Google rejected a token request with unauthorized_client: a scope is not allowed."""


# -- stored integration and its secrets --------------------------------------


def get_integration() -> Integration | None:
    return db.session.get(Integration, KIND)


def _integration_for_update() -> Integration:
    integration = get_integration()
    if integration is None:
        integration = Integration(kind=KIND, settings={})
        db.session.add(integration)
    return integration


def get_secret(integration: Integration | None, name: str) -> str:
    """Return the decrypted secret ``name`` of the integration, or ""."""
    if integration is None:
        return ""
    return crypto.read_secret(integration.secrets, name)


def set_secret(integration: Integration, name: str, value: str | None) -> None:
    """Store ``value`` encrypted; None or "" removes the secret."""
    crypto.put_secret(integration.secrets, IntegrationSecret, name, value)


def _settings() -> dict:
    integration = get_integration()
    return dict(integration.settings or {}) if integration else {}


# -- the service account ------------------------------------------------------


@dataclass(frozen=True)
class ServiceAccountKey:
    """The parts of a service account's JSON key file that the portal uses."""

    client_email: str
    client_id: str
    private_key_id: str
    private_key: str = field(repr=False)  # PEM, PKCS #8

    def signing_key(self) -> RSAKey:
        return RSAKey.import_key(self.private_key)


def parse_service_account_key(data: bytes) -> ServiceAccountKey:
    """Parse the JSON key file of a service account; raise ValueError naming the problem.

    The messages never quote the file, because it contains the private key.
    """
    if len(data) > SERVICE_ACCOUNT_KEY_MAX_BYTES:
        raise ValueError(
            "The file is larger than a service account key. Choose the JSON "
            "key file that Google Cloud downloaded when the key was created."
        )
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(
            "The file is not JSON. Choose the JSON key file (not a P12 file) "
            "of the service account."
        ) from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError(
            "The file is JSON but not a service account key: its type is not "
            "service_account. An OAuth client's file goes in the OAuth client "
            "section instead."
        )
    missing = [
        name
        for name in ("client_email", "client_id", "private_key_id", "private_key")
        if not isinstance(info.get(name), str) or not info[name].strip()
    ]
    if missing:
        raise ValueError(
            f"The key file lacks {', '.join(missing)}. Download a new JSON key "
            "for the service account in Google Cloud."
        )
    try:
        private_key = load_pem_private_key(info["private_key"].encode(), None)
    except (ValueError, TypeError):
        raise ValueError(
            "The private key in the file cannot be read. Download a new JSON "
            "key for the service account in Google Cloud."
        ) from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ValueError("The private key in the file is not an RSA key.")
    return ServiceAccountKey(
        client_email=info["client_email"].strip(),
        client_id=info["client_id"].strip(),
        private_key_id=info["private_key_id"].strip(),
        private_key=info["private_key"],
    )


@dataclass(frozen=True)
class ServiceAccount:
    key: ServiceAccountKey
    admin_address: str  # the administrator that directory searches act as


def load_service_account() -> ServiceAccount | None:
    integration = get_integration()
    settings = dict(integration.settings or {}) if integration else {}
    stored = settings.get("service_account")
    key_json = get_secret(integration, _KEY_SECRET)
    if not stored or not key_json:
        return None
    key = parse_service_account_key(key_json.encode())
    return ServiceAccount(key=key, admin_address=stored.get("admin_address", ""))


def service_account_summary() -> dict | None:
    """Return the non-secret facts of the stored key: email, ids, upload date."""
    return _settings().get("service_account")


def save_service_account(key: ServiceAccountKey | None, admin_address: str) -> None:
    """Store a new key (when given) and the administrator address; audited.

    A key of another service account replaces the old one. The caller commits.
    """
    integration = _integration_for_update()
    settings = dict(integration.settings or {})
    before = dict(settings.get("service_account") or {})
    after = dict(before)
    after["admin_address"] = admin_address
    if key is not None:
        set_secret(integration, _KEY_SECRET, json.dumps(_key_document(key)))
        after.update(
            client_email=key.client_email,
            client_id=key.client_id,
            private_key_id=key.private_key_id,
            uploaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    settings["service_account"] = after
    settings.pop("last_check", None)
    integration.settings = settings

    changes = audit.diff(before, after)
    changes.pop("uploaded_at", None)
    if key is not None:
        changes["private_key"] = audit.SECRET_MARK
    audit.record(
        "integration.google.service-account",
        object_type="integration",
        object_id=KIND,
        label="Google Workspace",
        changes=changes,
    )
    log.info(
        "Google service account %s saved with administrator %s",
        after.get("client_email"),
        admin_address,
    )


def remove_service_account() -> None:
    integration = get_integration()
    if integration is None:
        return
    settings = dict(integration.settings or {})
    before = settings.pop("service_account", None) or {}
    settings.pop("last_check", None)
    integration.settings = settings
    set_secret(integration, _KEY_SECRET, None)
    audit.record(
        "integration.google.service-account-removed",
        object_type="integration",
        object_id=KIND,
        label="Google Workspace",
        changes={
            name: [value, None]
            for name, value in before.items()
            if name != "uploaded_at"
        },
    )
    log.info("Google service account %s removed", before.get("client_email"))


def _key_document(key: ServiceAccountKey) -> dict:
    return {
        "type": "service_account",
        "client_email": key.client_email,
        "client_id": key.client_id,
        "private_key_id": key.private_key_id,
        "private_key": key.private_key,
    }


def is_consumer_address(address: str) -> bool:
    return address.rpartition("@")[2].lower() in CONSUMER_DOMAINS


def consumer_address_refused(address: str) -> TransportError:
    return TransportError(
        Step.AUTHENTICATION,
        f"{address} is a consumer Gmail address, which domain-wide delegation "
        "cannot reach.",
        "Delegation reaches only the users of your Google Workspace domains. "
        "Use an address of your Workspace, or let the owner of this address "
        "connect it as a personal account by signing in with Google.",
    )


# -- the OAuth client -----------------------------------------------------------


@dataclass(frozen=True)
class OAuthClient:
    client_id: str
    client_secret: str = field(repr=False)


def load_oauth_client() -> OAuthClient | None:
    integration = get_integration()
    stored = (integration.settings or {}).get("oauth_client") if integration else None
    secret = get_secret(integration, _CLIENT_SECRET)
    if not stored or not secret:
        return None
    return OAuthClient(client_id=stored["client_id"], client_secret=secret)


def oauth_client_summary() -> dict | None:
    return _settings().get("oauth_client")


def save_oauth_client(client_id: str, client_secret: str) -> None:
    """Store the client id, and the secret when one is given; audited."""
    integration = _integration_for_update()
    settings = dict(integration.settings or {})
    before = dict(settings.get("oauth_client") or {})
    after = {"client_id": client_id}
    settings["oauth_client"] = after
    integration.settings = settings
    changes = audit.diff(before, after)
    if client_secret:
        set_secret(integration, _CLIENT_SECRET, client_secret)
        changes["client_secret"] = audit.SECRET_MARK
    audit.record(
        "integration.google.oauth-client",
        object_type="integration",
        object_id=KIND,
        label="Google Workspace",
        changes=changes,
    )
    log.info("Google OAuth client %s saved", client_id)


def remove_oauth_client() -> None:
    integration = get_integration()
    if integration is None:
        return
    settings = dict(integration.settings or {})
    before = settings.pop("oauth_client", None) or {}
    integration.settings = settings
    set_secret(integration, _CLIENT_SECRET, None)
    audit.record(
        "integration.google.oauth-client-removed",
        object_type="integration",
        object_id=KIND,
        label="Google Workspace",
        changes={name: [value, None] for name, value in before.items()},
    )
    log.info("Google OAuth client %s removed", before.get("client_id"))


# -- access tokens ------------------------------------------------------------


class _TokenCache:
    """Access tokens by who they act as, shared by the threads of one process.

    A token is dropped a minute before it expires, so a request that starts
    with it still finishes in time.
    """

    MARGIN_SECONDS = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple, tuple[str, float]] = {}

    def get(self, key: tuple) -> str | None:
        with self._lock:
            entry = self._tokens.get(key)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def put(self, key: tuple, token: str, expires_in: float) -> None:
        expires = time.monotonic() + max(0.0, expires_in - self.MARGIN_SECONDS)
        with self._lock:
            self._tokens[key] = (token, expires)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


_cache = _TokenCache()


def clear_token_cache() -> None:
    """Forget every cached access token (after a key changes, and in tests)."""
    _cache.clear()


def _post_token_request(token_url: str, data: dict, timeout: float, activity: str):
    """POST to the token endpoint; return (status, JSON object). Raises TransportError."""
    try:
        response = requests.post(token_url, data=data, timeout=timeout)
    except requests.Timeout:
        raise TransportError(
            Step.TIMEOUT,
            f"Google's token endpoint did not respond within {timeout:g} s while "
            f"{activity}.",
            "Try again later. If it keeps happening, check that this portal can "
            "reach Google through its network and proxy.",
            temporary=True,
        ) from None
    except requests.ConnectionError:
        raise TransportError(
            Step.CONNECT,
            f"The connection to Google's token endpoint failed while {activity}.",
            "Check that this portal can reach Google through its network and "
            "proxy, then try again.",
            temporary=True,
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TransportError(
            Step.AUTHENTICATION,
            f"Google's token endpoint answered HTTP {response.status_code} without "
            f"a token while {activity}.",
            "Try again later.",
            temporary=response.status_code >= 500 or response.status_code == 429,
        )
    return response.status_code, body


class DelegatedTokens:
    """Access tokens for ``subject`` from a service account with domain-wide delegation.

    Each token request signs a fresh JWT with the service account's key
    through Authlib: issuer the service account, subject the mailbox, the
    scopes in the ``scope`` claim, audience the token endpoint.
    """

    def __init__(
        self,
        key: ServiceAccountKey,
        subject: str,
        scopes: tuple[str, ...],
        *,
        token_url: str,
        timeout: float,
    ) -> None:
        self.key = key
        self.subject = subject
        self.scopes = scopes
        self.token_url = token_url
        self.timeout = timeout

    def _cache_key(self) -> tuple:
        return (
            "delegated",
            self.key.client_email,
            self.key.private_key_id,
            self.subject.lower(),
            self.scopes,
        )

    def access_token(self, *, force_refresh: bool = False) -> str:
        if is_consumer_address(self.subject):
            raise consumer_address_refused(self.subject)
        if not force_refresh:
            cached = _cache.get(self._cache_key())
            if cached:
                return cached

        assertion = JWTBearerGrant.sign(
            self.key.signing_key(),
            issuer=self.key.client_email,
            audience=self.token_url,
            subject=self.subject,
            claims={"scope": " ".join(self.scopes)},
            header={"alg": "RS256", "kid": self.key.private_key_id},
        )
        log.info(
            "Requesting a token for %s from service account %s with scopes %s",
            self.subject,
            self.key.client_email,
            " ".join(self.scopes),
        )
        status, body = _post_token_request(
            self.token_url,
            {"grant_type": JWT_BEARER, "assertion": assertion},
            self.timeout,
            f"requesting a token for {self.subject}",
        )
        if "access_token" not in body:
            raise self._failure(status, body)
        _cache.put(
            self._cache_key(), body["access_token"], float(body.get("expires_in", 3600))
        )
        return body["access_token"]

    def missing_scope_advice(self, scope: str) -> str:
        return (
            f"In the Google Admin console, allow the scope {scope} for the client "
            f"id {self.key.client_id} under Security › Access and data control › "
            "API controls › Domain-wide delegation. New grants can take a while "
            "to apply."
        )

    def _failure(self, status: int, body: dict) -> TransportError:
        """Explain the token endpoint's error in terms of what to change."""
        code = str(body.get("error", ""))
        description = str(body.get("error_description", ""))
        reply = f"{code}: {description}" if description else code
        client_id = self.key.client_id
        lowered = description.lower()
        log.info(
            "Google rejected a token for %s from service account %s: %s",
            self.subject,
            self.key.client_email,
            reply,
        )

        if code == "unauthorized_client":
            return DelegationNotAuthorised(
                Step.AUTHENTICATION,
                f"Domain-wide delegation is not authorised: the client id "
                f"{client_id} is not allowed the scopes "
                f"{' '.join(self.scopes)} in the Google Admin console.",
                "In the Admin console open Security › Access and data control › "
                f"API controls › Domain-wide delegation, add the client id "
                f"{client_id} (or edit it) with the scopes listed on the Google "
                "Workspace integration page. New grants can take a while to "
                "apply, from minutes up to a day.",
                reply=reply,
            )
        if code == "invalid_grant" and (
            "email or user id" in lowered or "account has been deleted" in lowered
        ):
            return TransportError(
                Step.SENDER,
                f"Google Workspace has no user {self.subject}.",
                "Check the address, or pick the mailbox from the search. A "
                "deleted user has no mailbox, and an alias cannot be "
                "impersonated: use the user's primary address.",
                reply=reply,
            )
        if code == "invalid_grant" and "signature" in lowered:
            return TransportError(
                Step.AUTHENTICATION,
                f"Google rejected the signature of the service account key "
                f"{self.key.private_key_id}.",
                "The key was probably deleted in Google Cloud. Create a new JSON "
                "key for the service account and upload it on the Google "
                "Workspace integration page.",
                reply=reply,
            )
        if code == "invalid_grant" and ("iat" in lowered or "timeframe" in lowered):
            return TransportError(
                Step.AUTHENTICATION,
                "Google rejected the token request because of its time stamps.",
                "Check that this server's clock is correct (synchronise it with "
                "NTP), then try again.",
                reply=reply,
            )
        if code == "invalid_grant" and "account not found" in lowered:
            return TransportError(
                Step.AUTHENTICATION,
                f"Google has no service account {self.key.client_email}.",
                "The service account was deleted. Upload the key of an existing "
                "service account on the Google Workspace integration page.",
                reply=reply,
            )
        if code in ("invalid_client", "disabled_client"):
            return TransportError(
                Step.AUTHENTICATION,
                f"Google rejected the service account {self.key.client_email}.",
                "Check in Google Cloud that the service account and its key are "
                "enabled, or upload a new key.",
                reply=reply,
            )
        return TransportError(
            Step.AUTHENTICATION,
            f"Google refused an access token for {self.subject} (HTTP {status}).",
            "Read Google's reply below, then check the service account on the "
            "Google Workspace integration page.",
            reply=reply,
            temporary=status >= 500 or status == 429,
        )


class RefreshTokens:
    """Access tokens for a personal mailbox from its stored refresh token."""

    def __init__(
        self,
        client: OAuthClient,
        refresh_token: str,
        mailbox: str,
        *,
        token_url: str,
        timeout: float,
    ) -> None:
        self.client = client
        self.refresh_token = refresh_token
        self.mailbox = mailbox
        self.token_url = token_url
        self.timeout = timeout

    def _cache_key(self) -> tuple:
        digest = hashlib.sha256(self.refresh_token.encode()).hexdigest()
        return ("refresh", self.client.client_id, digest)

    def access_token(self, *, force_refresh: bool = False) -> str:
        if not force_refresh:
            cached = _cache.get(self._cache_key())
            if cached:
                return cached

        log.info("Refreshing the access token of Google mailbox %s", self.mailbox)
        session = _oauth_session(self.client, timeout=self.timeout)
        try:
            token = session.refresh_token(
                self.token_url, refresh_token=self.refresh_token
            )
        except AuthlibBaseError as error:
            raise self._failure(error.error, error.description or "") from None
        except ValueError:
            raise self._failure("invalid_response", "") from None
        except requests.RequestException as error:
            raise _unreachable(
                error, f"refreshing the token of {self.mailbox}"
            ) from None
        finally:
            session.close()
        _cache.put(
            self._cache_key(),
            token["access_token"],
            float(token.get("expires_in", 3600)),
        )
        return token["access_token"]

    def missing_scope_advice(self, scope: str) -> str:
        return (
            f"Reconnect the mailbox and allow everything Google asks for; the "
            f"grant lacks {scope}."
        )

    def _failure(self, code: str, description: str) -> TransportError:
        reply = f"{code}: {description}" if description else code
        log.info("Google rejected the refresh token of %s: %s", self.mailbox, reply)
        if code == "invalid_grant":
            return GrantRevoked(
                Step.AUTHENTICATION,
                f"Google no longer accepts the sign-in stored for {self.mailbox}: "
                "it was revoked or has expired.",
                "Press Reconnect on the account and sign in with Google again. "
                "Grants end when the owner removes the portal's access, changes "
                "the password, or leaves them unused for six months.",
                reply=reply,
            )
        if code in ("invalid_client", "unauthorized_client"):
            return TransportError(
                Step.AUTHENTICATION,
                "Google rejected the portal's OAuth client.",
                "An administrator should check the client id and secret on the "
                "Google Workspace integration page.",
                reply=reply,
            )
        return TransportError(
            Step.AUTHENTICATION,
            f"Google refused a new access token for {self.mailbox}.",
            "Try again later, or reconnect the mailbox.",
            reply=reply,
        )


def _unreachable(error: requests.RequestException, activity: str) -> TransportError:
    if isinstance(error, requests.Timeout):
        return TransportError(
            Step.TIMEOUT,
            f"Google did not respond in time while {activity}.",
            "Try again later.",
            temporary=True,
        )
    return TransportError(
        Step.CONNECT,
        f"The connection to Google failed while {activity}.",
        "Check that this portal can reach Google through its network and proxy.",
        temporary=True,
    )


def _config(name: str, default):
    return current_app.config.get(name, default)


def _timeout() -> float:
    # PORTAL_SMTP_TIMEOUT bounds every network wait of a mail operation,
    # Google's HTTP requests included.
    return float(_config("SMTP_TIMEOUT", 30.0))


def delegated_tokens(mailbox: str, scopes: tuple[str, ...]) -> DelegatedTokens:
    """Token source for ``mailbox`` through the stored service account.

    Raises TransportError when no service account is connected or the address
    is consumer Gmail, before any request.
    """
    if is_consumer_address(mailbox):
        raise consumer_address_refused(mailbox)
    service_account = load_service_account()
    if service_account is None:
        raise TransportError(
            Step.AUTHENTICATION,
            "The Google Workspace is not connected.",
            "An administrator uploads a service account key on the Google "
            "Workspace integration page.",
        )
    return DelegatedTokens(
        service_account.key,
        mailbox,
        scopes,
        token_url=current_app.config["GOOGLE_TOKEN_URL"],
        timeout=_timeout(),
    )


def personal_tokens(mailbox: str, refresh_token: str) -> RefreshTokens:
    client = load_oauth_client()
    if client is None:
        raise TransportError(
            Step.AUTHENTICATION,
            "Signing in with Google is not set up.",
            "An administrator enters the OAuth client on the Google Workspace "
            "integration page.",
        )
    return RefreshTokens(
        client,
        refresh_token,
        mailbox,
        token_url=current_app.config["GOOGLE_TOKEN_URL"],
        timeout=_timeout(),
    )


def gmail_client(
    mailbox: str, tokens, timeout: float | None = None
) -> gmail.GmailClient:
    config = current_app.config
    return gmail.GmailClient(
        gmail.GmailSettings(
            base_url=config["GOOGLE_GMAIL_URL"],
            mailbox=mailbox,
            timeout=timeout or _timeout(),
            max_retries=int(config.get("GOOGLE_MAX_RETRIES", 3)),
            max_retry_wait=float(config.get("GOOGLE_MAX_RETRY_WAIT", 30.0)),
        ),
        tokens,
    )


# -- directory search -----------------------------------------------------------

DIRECTORY_USERS_PATH = "admin/directory/v1/users"  # as in admin.directory_v1


@dataclass(frozen=True)
class DirectoryUser:
    address: str
    name: str = ""
    suspended: bool = False


@dataclass(frozen=True)
class DirectoryPage:
    users: list[DirectoryUser]
    next_page_token: str = ""


def prefix_query(text: str) -> str:
    """Return the Directory query for addresses that start with ``text``, or "".

    The prefix operator takes one bare word, so spaces, quotes, backslashes
    and asterisks are dropped.
    """
    cleaned = "".join(
        ch for ch in text.strip() if not ch.isspace() and ch not in "'\"\\*"
    )
    return f"email:{cleaned}*" if cleaned else ""


def search_mailboxes(
    text: str, page_token: str = "", page_size: int = 20
) -> DirectoryPage:
    """List the Workspace users whose address starts with ``text``, a page at a time.

    Acts as the integration's administrator address. Raises TransportError.
    """
    service_account = load_service_account()
    if service_account is None or not service_account.admin_address:
        raise TransportError(
            Step.AUTHENTICATION,
            "Mailbox search needs the Google Workspace connection.",
            "Upload a service account key and name an administrator address on "
            "the Google Workspace integration page.",
        )
    query = prefix_query(text)
    if not query:
        return DirectoryPage(users=[])
    tokens = delegated_tokens(service_account.admin_address, (SCOPE_DIRECTORY,))
    return _list_users(tokens, query, page_token, page_size)


def _list_users(
    tokens: DelegatedTokens, query: str, page_token: str, page_size: int
) -> DirectoryPage:
    params = {
        "customer": "my_customer",
        "maxResults": str(page_size),
        "orderBy": "email",
        "viewType": "admin_view",
    }
    if query:
        params["query"] = query
    if page_token:
        params["pageToken"] = page_token
    url = f"{current_app.config['GOOGLE_DIRECTORY_URL'].rstrip('/')}/{DIRECTORY_USERS_PATH}"
    log.info("Searching the Google directory as %s for %s", tokens.subject, query)

    for attempt in (1, 2):
        token = tokens.access_token(force_refresh=attempt == 2)
        try:
            response = requests.get(
                url,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                timeout=tokens.timeout,
            )
        except requests.RequestException as error:
            raise _unreachable(error, "searching the directory") from None
        if response.status_code != 401:
            break

    if not response.ok:
        raise _directory_failure(gmail.parse_api_error(response), tokens)
    body = response.json()
    users = [
        DirectoryUser(
            address=str(item.get("primaryEmail", "")),
            name=str((item.get("name") or {}).get("fullName", "")),
            suspended=bool(item.get("suspended")),
        )
        for item in body.get("users") or []
        if isinstance(item, dict) and item.get("primaryEmail")
    ]
    return DirectoryPage(
        users=users, next_page_token=str(body.get("nextPageToken", ""))
    )


def _directory_failure(
    error: gmail.ApiError, tokens: DelegatedTokens
) -> TransportError:
    admin_address = tokens.subject
    if error.status == 403 and (
        error.reason == "insufficientPermissions"
        or error.details_reason == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
    ):
        advice = tokens.missing_scope_advice(SCOPE_DIRECTORY)
        summary = "The directory token lacks the directory read-only scope."
    elif error.status == 403:
        summary = f"{admin_address} may not read the Google Workspace directory."
        advice = (
            "Name an administrator whose role includes reading users (Admin "
            "API privilege Users › Read) on the Google Workspace integration page."
        )
    elif error.status == 429 or error.reason in gmail.RATE_LIMIT_REASONS:
        summary = "Google's rate limit for directory searches was exceeded."
        advice = "Wait a moment and search again."
    elif error.status == 400:
        summary = "Google rejected the directory search."
        advice = "Search for the start of an address, without spaces or quotes."
    else:
        summary = f"The directory search failed with HTTP {error.status}."
        advice = "Try again later."
    log.info("Google directory search as %s failed: %s", admin_address, error.reply)
    return TransportError(
        Step.PROTOCOL,
        summary,
        advice,
        reply=error.reply,
        temporary=error.status >= 500 or error.status == 429,
    )


# -- Check connection ---------------------------------------------------------------


@dataclass
class ScopeCheck:
    scope: str
    purpose: str
    ok: bool
    summary: str = ""


@dataclass
class ConnectionCheck:
    ok: bool
    summary: str
    advice: str = ""
    reply: str = ""
    scopes: list[ScopeCheck] = field(default_factory=list)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def check_connection() -> ConnectionCheck:
    """Ask for a token with each delegation scope, then search the directory.

    One token request per scope shows which scopes the Admin console allows,
    because Google refuses a token when any requested scope is not allowed.
    The result is stored on the integration and audited; the caller commits.
    """
    check = _run_connection_check()
    integration = _integration_for_update()
    settings = dict(integration.settings or {})
    settings["last_check"] = {
        "at": check.at.isoformat(timespec="seconds"),
        "ok": check.ok,
        "summary": check.summary,
    }
    integration.settings = settings
    audit.record(
        "integration.google.check",
        object_type="integration",
        object_id=KIND,
        label="Google Workspace",
        outcome=audit.SUCCESS if check.ok else audit.FAILURE,
        detail=check.summary,
    )
    return check


def _run_connection_check() -> ConnectionCheck:
    service_account = load_service_account()
    if service_account is None:
        return ConnectionCheck(
            False,
            "No service account key is stored.",
            "Upload the service account's JSON key first.",
        )
    admin_address = service_account.admin_address
    if not admin_address:
        return ConnectionCheck(
            False,
            "No administrator address is set.",
            "Enter the address of a Workspace administrator.",
        )
    if is_consumer_address(admin_address):
        refused = consumer_address_refused(admin_address)
        return ConnectionCheck(False, refused.summary, refused.advice)

    log.info("Checking the Google connection as %s", admin_address)
    results: list[ScopeCheck] = []
    for use in DELEGATION_SCOPES:
        tokens = delegated_tokens(admin_address, (use.scope,))
        try:
            tokens.access_token(force_refresh=True)
        except DelegationNotAuthorised:
            results.append(ScopeCheck(use.scope, use.purpose, False, "Not allowed"))
            continue
        except TransportError as error:
            # Not about this scope (a bad key, an unknown user, no network):
            # every other scope would fail the same way.
            return ConnectionCheck(
                False, error.summary, error.advice, reply=error.reply, scopes=results
            )
        results.append(ScopeCheck(use.scope, use.purpose, True, "Allowed"))

    client_id = service_account.key.client_id
    missing = [item.scope for item in results if not item.ok]
    directory = results[0]
    if directory.ok:
        try:
            _list_users(delegated_tokens(admin_address, (SCOPE_DIRECTORY,)), "", "", 1)
        except TransportError as error:
            directory.ok = False
            directory.summary = error.summary
            return ConnectionCheck(
                False, error.summary, error.advice, reply=error.reply, scopes=results
            )
        directory.summary = "The directory answered."

    if missing:
        return ConnectionCheck(
            False,
            f"Domain-wide delegation is not authorised for {len(missing)} of "
            f"{len(results)} scopes for the client id {client_id}.",
            "In the Google Admin console open Security › Access and data control "
            "› API controls › Domain-wide delegation and allow the client id "
            f"{client_id} these scopes: {', '.join(missing)}. New grants can take "
            "a while to apply, from minutes up to a day; check again later.",
            scopes=results,
        )
    return ConnectionCheck(
        True,
        f"Connected: every scope works for the client id {client_id} as "
        f"{admin_address}.",
        scopes=results,
    )


# -- personal sign-in (authorization code with PKCE) ------------------------------


def personal_scopes(read: bool) -> tuple[str, ...]:
    """Return the narrowest scopes a personal account needs: send, and read if wanted.

    openid and email bring the ID token that names the signed-in address.
    """
    scopes = ("openid", "email", SCOPE_SEND)
    return scopes + (SCOPE_READ,) if read else scopes


def _oauth_session(client: OAuthClient, *, timeout: float, **kwargs) -> OAuth2Session:
    return OAuth2Session(
        client.client_id,
        client.client_secret,
        token_endpoint_auth_method="client_secret_post",  # noqa: S106 (a method name)
        default_timeout=timeout,
        **kwargs,
    )


@dataclass(frozen=True)
class AuthorizationRequest:
    url: str
    state: str
    code_verifier: str = field(repr=False)


def authorization_request(
    client: OAuthClient, redirect_uri: str, login_hint: str, scopes: tuple[str, ...]
) -> AuthorizationRequest:
    """Build the URL that sends the browser to Google's consent screen.

    access_type=offline and prompt=consent make Google issue a refresh token
    on every consent, including a reconnect.
    """
    code_verifier = generate_token(64)
    session = _oauth_session(
        client,
        timeout=_timeout(),
        scope=" ".join(scopes),
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
    )
    url, state = session.create_authorization_url(
        current_app.config["GOOGLE_AUTH_URL"],
        code_verifier=code_verifier,
        access_type="offline",
        prompt="consent",
        login_hint=login_hint,
    )
    session.close()
    return AuthorizationRequest(url=url, state=state, code_verifier=code_verifier)


@dataclass(frozen=True)
class PersonalGrant:
    email: str
    scopes: tuple[str, ...]
    refresh_token: str = field(repr=False)


def exchange_code(
    client: OAuthClient,
    *,
    code: str,
    code_verifier: str,
    redirect_uri: str,
    expected_address: str,
    required_scopes: tuple[str, ...],
    button: str = "Connect",
    address_field: str = "the address",
) -> PersonalGrant:
    """Trade the authorization code for tokens and check who signed in.

    Raises TransportError when Google refuses, when no refresh token comes
    back, when the signed-in address is not ``expected_address``, or when
    the person left a required scope unticked on the consent screen. The
    advice names the page's sign-in ``button`` and its ``address_field``.
    """
    session = _oauth_session(client, timeout=_timeout(), redirect_uri=redirect_uri)
    try:
        token = session.fetch_token(
            current_app.config["GOOGLE_TOKEN_URL"],
            grant_type="authorization_code",
            code=code,
            code_verifier=code_verifier,
        )
    except AuthlibBaseError as error:
        reply = (
            f"{error.error}: {error.description}" if error.description else error.error
        )
        raise TransportError(
            Step.AUTHENTICATION,
            "Google did not accept the sign-in.",
            f"Press {button} again. If it keeps failing, an administrator should "
            "check the OAuth client on the Google Workspace integration page.",
            reply=reply,
        ) from None
    except ValueError:
        raise TransportError(
            Step.AUTHENTICATION,
            "Google's answer to the sign-in could not be read.",
            f"Press {button} again.",
        ) from None
    except requests.RequestException as error:
        raise _unreachable(error, "completing the sign-in") from None
    finally:
        session.close()

    email = _id_token_email(token.get("id_token", ""), client.client_id, button)
    if email.lower() != expected_address.lower():
        raise TransportError(
            Step.AUTHENTICATION,
            f"You signed in to Google as {email}, but this account is for "
            f"{expected_address}.",
            f"Press {button} again and choose {expected_address} on Google's "
            f"screen, or change {address_field} on the form.",
        )
    granted = tuple(str(token.get("scope", "")).split())
    missing = [scope for scope in required_scopes if scope not in granted]
    if missing:
        raise TransportError(
            Step.AUTHENTICATION,
            f"Google's consent left out {', '.join(missing)}.",
            f"Press {button} again and tick every permission Google shows.",
        )
    refresh_token = token.get("refresh_token", "")
    if not refresh_token:
        raise TransportError(
            Step.AUTHENTICATION,
            "Google did not issue a refresh token, so the portal could not send later.",
            f"Press {button} again. If it keeps happening, remove the portal's "
            "access in your Google account's security settings and connect again.",
        )
    return PersonalGrant(email=email, scopes=granted, refresh_token=refresh_token)


def _id_token_email(id_token: str, client_id: str, button: str) -> str:
    """Return the verified address in the ID token from the token endpoint.

    The token came straight from Google's token endpoint over TLS, so, as
    OpenID Connect Core 1.0 section 3.1.3.7 allows, TLS server validation
    replaces the signature check; the issuer, audience, expiry and email_verified are
    still checked.
    """
    failure = TransportError(
        Step.AUTHENTICATION,
        "Google's answer did not say which address signed in.",
        f"Press {button} again. An administrator should check that the OAuth "
        "client is of the Web application type.",
    )
    if not id_token:
        raise failure
    try:
        payload = jws.extract_compact(id_token.encode("ascii")).payload
        claims = json.loads(payload)
    except (JoseError, ValueError, UnicodeError):
        raise failure from None
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if (
        claims.get("iss") not in ID_TOKEN_ISSUERS
        or client_id not in audiences
        or float(claims.get("exp", 0)) < time.time()
        or not claims.get("email")
        or claims.get("email_verified") not in (True, "true")
    ):
        raise failure
    return str(claims["email"])


# -- accounts ----------------------------------------------------------------------


def mark_reconnect_needed(account: EmailAccount, error: TransportError) -> None:
    """Flag a personal account whose grant Google revoked; the caller commits."""
    if account.settings.get("reconnect_needed"):
        return
    account.settings = {**account.settings, "reconnect_needed": True}
    audit.record(
        "account.google.grant-revoked",
        object_type="account",
        object_id=account.id,
        label=account.friendly_name,
        outcome=audit.FAILURE,
        detail=error.reply or error.summary,
    )
    log.warning(
        "Account %s needs reconnecting: Google refused its refresh token", account.id
    )


def account_tokens(account: EmailAccount, scopes: tuple[str, ...]):
    """The token source of a saved Google account."""
    mailbox = account.settings.get("mailbox") or account.email_address
    if account.settings.get("auth") == "oauth":
        return personal_tokens(mailbox, get_account_secret(account, REFRESH_TOKEN))
    return delegated_tokens(mailbox, scopes)


def open_sender(account: EmailAccount, timeout: float) -> gmail.GmailConnection:
    """The delivery opener of Google accounts.

    It fetches the access token here, in the worker's thread with its
    database session, so a revoked grant can flag the account at once.
    """
    mailbox = account.settings.get("mailbox") or account.email_address
    try:
        if account.settings.get("reconnect_needed"):
            raise GrantRevoked(
                Step.AUTHENTICATION,
                f"The sign-in stored for {mailbox} was revoked or has expired.",
                "The owner presses Reconnect on the account and signs in with "
                "Google again.",
            )
        tokens = account_tokens(account, (SCOPE_SEND,))
        tokens.access_token()
    except GrantRevoked as error:
        mark_reconnect_needed(account, error)
        return gmail.GmailConnection(None, error)
    except TransportError as error:
        log.info("Account %s cannot send through Gmail: %s", account.id, error.summary)
        return gmail.GmailConnection(None, error)
    return gmail.GmailConnection(gmail_client(mailbox, tokens, timeout))


# -- tests and saving of Google accounts -------------------------------------------


@dataclass(frozen=True)
class MailboxAccess:
    """How the portal reaches one mailbox: delegation, or a personal refresh token."""

    mailbox: str
    personal: bool = False
    refresh_token: str = field(default="", repr=False)

    def tokens(self, scopes: tuple[str, ...]):
        if self.personal:
            return personal_tokens(self.mailbox, self.refresh_token)
        return delegated_tokens(self.mailbox, scopes)

    def client(self, scopes: tuple[str, ...]) -> gmail.GmailClient:
        return gmail_client(self.mailbox, self.tokens(scopes))


def check_from_address(access: MailboxAccess, from_address: str) -> None:
    """Raise TransportError unless ``from_address`` may be the From of the mailbox.

    The mailbox itself always may; any other address must be one of its
    verified send-as aliases, which settings.sendAs.list returns.
    """
    if from_address.lower() == access.mailbox.lower():
        return
    client = access.client((SCOPE_SETTINGS,))
    try:
        aliases = client.list_send_as()
    finally:
        client.close()
    if any(a.usable and a.address.lower() == from_address.lower() for a in aliases):
        return
    usable = [alias.address for alias in aliases if alias.usable]
    pending = [alias.address for alias in aliases if not alias.usable]
    listed = f"Its send-as addresses are {', '.join(usable)}."
    if pending:
        listed += f" Not yet verified: {', '.join(pending)}."
    raise TransportError(
        Step.SENDER,
        f"{from_address} is not a send-as address of {access.mailbox}. {listed}",
        "Choose one of those addresses as From, or add this address in the "
        "mailbox's Gmail settings (Accounts › Send mail as) and verify it.",
    )


def run_send_test(
    access: MailboxAccess,
    *,
    from_address: str,
    from_name: str,
    to: str,
    account_label: str,
    account: EmailAccount | None = None,
) -> TestOutcome:
    """Check the From address, then send a test message through the Gmail API.

    A revoked personal grant flags ``account`` as needing a reconnect.
    """
    account_id = account.id if account else None
    log.info(
        "Test send started for account %s through Gmail as %s",
        account_id,
        access.mailbox,
    )
    message = build_test_message(
        from_address=from_address,
        from_name=from_name,
        to=to,
        account_label=account_label,
    )
    try:
        check_from_address(access, from_address)
        client = access.client((SCOPE_SEND,))
        try:
            result = client.send_message(message, [to])
        finally:
            client.close()
    except TransportError as error:
        if isinstance(error, GrantRevoked) and account is not None:
            mark_reconnect_needed(account, error)
        log.info(
            "Test send failed for account %s at step %s: %s",
            account_id,
            error.step,
            error.summary,
        )
        return testing.failed_outcome(testing.SEND, error)
    return TestOutcome(
        kind=testing.SEND,
        ok=True,
        summary=f"Gmail accepted the test message for {to}.",
        reply=result.reply,
    )


def run_read_test(
    access: MailboxAccess, *, account: EmailAccount | None = None
) -> TestOutcome:
    """Count the inbox's messages through the Gmail API."""
    account_id = account.id if account else None
    log.info(
        "Test read started for account %s through Gmail as %s",
        account_id,
        access.mailbox,
    )
    client = None
    try:
        client = access.client((SCOPE_READ,))
        result = client.count_inbox()
    except TransportError as error:
        if isinstance(error, GrantRevoked) and account is not None:
            mark_reconnect_needed(account, error)
        log.info(
            "Test read failed for account %s at step %s: %s",
            account_id,
            error.step,
            error.summary,
        )
        return testing.failed_outcome(testing.READ, error)
    finally:
        if client is not None:
            client.close()
    noun = "message" if result.message_count == 1 else "messages"
    return TestOutcome(
        kind=testing.READ,
        ok=True,
        summary=f"Opened the inbox of {access.mailbox}: {result.message_count} {noun}.",
    )


@dataclass(frozen=True)
class AccountValues:
    """What the Google account form saves, validated."""

    friendly_name: str
    description: str
    from_name: str
    enabled: bool
    mailbox: str
    from_address: str  # the mailbox itself or one of its send-as aliases
    read: bool


def save_account(
    values: AccountValues,
    *,
    account: EmailAccount | None,
    owner_id: int | None,
    security: str | None = None,
    grant: PersonalGrant | None = None,
) -> EmailAccount:
    """Create or update a Google account; audited. The caller commits.

    A personal account stores ``grant``'s refresh token when one is given,
    and keeps the stored one otherwise. Raises AccountError when the
    friendly name is taken.
    """
    name = values.friendly_name
    if account_service.friendly_name_taken(
        owner_id, name, account.id if account else None
    ):
        where = "your accounts" if owner_id else "the global accounts"
        raise account_service.AccountError(
            f"Another account among {where} is already named {name!r}. Choose another name.",
            field="friendly_name",
        )

    before = None
    if account is None:
        account = EmailAccount(account_type=KIND, owner_id=owner_id)
        db.session.add(account)
    else:
        before = account_service.snapshot(account)
        account.version += 1

    settings = {
        "mailbox": values.mailbox,
        "auth": "oauth" if owner_id is not None else "delegation",
        "read": values.read,
    }
    if owner_id is not None:
        scopes = list(grant.scopes) if grant else account.settings.get("scopes", [])
        settings["scopes"] = scopes
        if grant is None:
            settings["reconnect_needed"] = bool(
                account.settings.get("reconnect_needed")
            )
    account.friendly_name = name
    account.description = values.description
    account.email_address = values.from_address
    account.from_name = values.from_name
    account.enabled = values.enabled
    account.settings = settings
    if security is not None:
        account.security = security
    changed_secrets = []
    if grant is not None:
        account_service.set_secret(account, REFRESH_TOKEN, grant.refresh_token)
        changed_secrets.append(REFRESH_TOKEN)
    account_service.record_saved(account, before, changed_secrets)
    return account


def store_grant(account: EmailAccount, grant: PersonalGrant, read: bool) -> None:
    """Keep a new personal grant on a saved account (Reconnect); audited."""
    account_service.set_secret(account, REFRESH_TOKEN, grant.refresh_token)
    account.settings = {
        **account.settings,
        "scopes": list(grant.scopes),
        "read": read,
        "reconnect_needed": False,
    }
    audit.record(
        "account.google.connect",
        object_type="account",
        object_id=account.id,
        label=account.friendly_name,
        changes={
            REFRESH_TOKEN: audit.SECRET_MARK,
            "settings.scopes": list(grant.scopes),
        },
    )
    log.info("Account %s reconnected to Google mailbox %s", account.id, grant.email)
