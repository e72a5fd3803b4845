"""Tokens from the Microsoft identity platform, requested through Authlib.

This module does not use Flask. It builds the OAuth 2.0 requests
(authorization code with PKCE, refresh token, client credentials), keeps
access tokens in a process-wide cache, and explains sign-in errors (the
AADSTS codes) in words an administrator can act on. No token or secret is
ever logged or put in an error message.
"""

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError

from ..transports.base import Step, TransportError

log = logging.getLogger(__name__)

# A cached token is replaced this many seconds before it expires, so that a
# request never leaves with a token that expires on the way.
REFRESH_MARGIN = 300.0


@dataclass(frozen=True)
class OAuthApp:
    """An app registration, with the endpoints of its tenant."""

    login_url: str  # such as https://login.microsoftonline.com
    tenant: str
    client_id: str
    client_secret: str = field(repr=False)
    timeout: float = 30.0

    @property
    def authority(self) -> str:
        return f"{self.login_url.rstrip('/')}/{self.tenant}"

    @property
    def token_url(self) -> str:
        return f"{self.authority}/oauth2/v2.0/token"

    @property
    def authorize_url(self) -> str:
        return f"{self.authority}/oauth2/v2.0/authorize"

    @property
    def admin_consent_url(self) -> str:
        return f"{self.authority}/v2.0/adminconsent"

    def session(self, **kwargs) -> OAuth2Session:
        # Microsoft documents client_secret in the form body (client_secret_post).
        return OAuth2Session(
            self.client_id,
            self.client_secret,
            token_endpoint_auth_method="client_secret_post",  # noqa: S106
            **kwargs,
        )


# -- the cache ----------------------------------------------------------------


@dataclass
class _Entry:
    value: str = field(repr=False)
    refresh_at: float


class TokenCache:
    """Access tokens by key, each refreshed by one caller at a time.

    ``get`` returns the cached token until shortly before it expires. When it
    must fetch, it holds the key's lock, so callers that need the same token
    at the same moment wait for one request instead of sending their own.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        margin: float = REFRESH_MARGIN,
    ) -> None:
        self.clock = clock
        self.margin = margin
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._entries: dict[tuple, _Entry] = {}

    def get(
        self,
        key: tuple,
        fetch: Callable[[], tuple[str, float]],
        stale: str | None = None,
    ) -> str:
        """Return the token for ``key``, calling ``fetch`` when none is usable.

        ``fetch`` returns the token and its lifetime in seconds. ``stale`` is a
        token that the resource server rejected: a cached token equal to it is
        replaced, while a different one (another caller already refreshed) is
        returned as it is.
        """
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            entry = self._entries.get(key)
            if entry and entry.value != stale and self.clock() < entry.refresh_at:
                return entry.value
            value, lifetime = fetch()
            # A short-lived token is kept for half its life rather than not at all.
            keep = max(lifetime - self.margin, lifetime / 2)
            self._entries[key] = _Entry(value, self.clock() + keep)
            return value

    def forget(self, match: Callable[[tuple], bool]) -> None:
        """Drop the tokens whose keys ``match`` accepts."""
        with self._lock:
            for key in [key for key in self._entries if match(key)]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


CACHE = TokenCache()


# -- requests -----------------------------------------------------------------


def request_app_token(app: OAuthApp, scope: str) -> tuple[str, float]:
    """Obtain an app-only token with the client credentials grant."""
    log.info("Requesting an app-only token for client %s", app.client_id)
    with app.session() as session:
        token = _call(
            lambda: session.fetch_token(
                app.token_url,
                grant_type="client_credentials",
                scope=scope,
                timeout=app.timeout,
            ),
            for_user=False,
        )
    return token["access_token"], float(token.get("expires_in") or 3600)


def authorization_url(
    app: OAuthApp,
    *,
    scope: str,
    redirect_uri: str,
    state: str,
    code_verifier: str,
    login_hint: str = "",
) -> str:
    """Build the sign-in URL of the authorization code flow with an S256 PKCE challenge."""
    with app.session(
        scope=scope, redirect_uri=redirect_uri, code_challenge_method="S256"
    ) as session:
        extra = {"login_hint": login_hint} if login_hint else {}
        # select_account lets a person who is signed in to Microsoft as
        # someone else pick the right account instead of being signed in silently.
        url, _ = session.create_authorization_url(
            app.authorize_url,
            state=state,
            code_verifier=code_verifier,
            prompt="select_account",
            **extra,
        )
    return url


def redeem_code(
    app: OAuthApp, *, code: str, code_verifier: str, redirect_uri: str, scope: str
) -> dict:
    """Exchange an authorization code for tokens (access, refresh)."""
    log.info("Redeeming an authorization code for client %s", app.client_id)
    with app.session(scope=scope, redirect_uri=redirect_uri) as session:
        token = _call(
            lambda: session.fetch_token(
                app.token_url,
                grant_type="authorization_code",
                code=code,
                code_verifier=code_verifier,
                timeout=app.timeout,
            ),
            for_user=True,
        )
    return dict(token)


def refresh_user_token(app: OAuthApp, refresh_token: str, scope: str) -> dict:
    """Redeem a refresh token. The response may contain a new refresh token to keep."""
    with app.session(scope=scope) as session:
        token = _call(
            lambda: session.refresh_token(
                app.token_url, refresh_token=refresh_token, timeout=app.timeout
            ),
            for_user=True,
        )
    return dict(token)


def token_claims(access_token: str) -> dict:
    """Decode the claims of a JWT access token without checking its signature.

    Only for showing what was granted (``roles``, ``scp``): the token came
    straight from the token endpoint, and Graph checks it on every request.
    """
    try:
        payload = access_token.split(".")[1]
        padded = payload + "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


# -- errors -------------------------------------------------------------------


class SignInFailed(TransportError):
    """The token endpoint refused a request; ``code`` is the AADSTS number."""

    def __init__(self, *args, code: int | None = None, error: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.code = code
        self.error = error

    @property
    def grant_lost(self) -> bool:
        """The user's grant is gone for good: only a new sign-in brings it back."""
        return self.error == "invalid_grant" or self.code in _GRANT_LOST


# Refresh tokens that expired, were revoked, or whose consent was withdrawn.
_GRANT_LOST = {50173, 65001, 70008, 700082, 70043, 700084, 50133, 50089}

_APP_FIX = (
    "Correct it on the Microsoft 365 integration page and press Check connection."
)

# AADSTS code: (what happened, what to do). Sources: the codes and texts the
# Microsoft identity platform returns, as listed in Microsoft Entra's
# "authentication and authorization error codes" reference.
_EXPLANATIONS: dict[int, tuple[str, str]] = {
    7000222: (
        "The application's client secret has expired.",
        "In the Microsoft Entra admin center open the app registration › "
        "Certificates & secrets, add a new client secret, and enter its value and "
        "expiry date on the Microsoft 365 integration page.",
    ),
    7000215: (
        "The client secret is not valid for this application.",
        "Enter the secret's Value, not its Secret ID, as shown once when the "
        "secret was created under Certificates & secrets. " + _APP_FIX,
    ),
    7000218: (
        "The token request carried no client secret.",
        "Enter the client secret on the Microsoft 365 integration page.",
    ),
    700016: (
        "No application with this application (client) ID exists in the tenant.",
        "Check the application (client) ID and the tenant ID against the app "
        "registration's Overview page. An app registered in another tenant needs "
        "Grant consent by an administrator of this tenant first.",
    ),
    90002: (
        "The tenant was not found.",
        "Enter the Directory (tenant) ID from the app registration's Overview page, "
        "or the tenant's domain such as contoso.onmicrosoft.com, and check that the "
        "chosen cloud is the tenant's cloud.",
    ),
    900023: (
        "The tenant ID is neither a tenant GUID nor a domain name.",
        "Enter the Directory (tenant) ID from the app registration's Overview page.",
    ),
    65001: (
        "Consent for the application's permissions has not been granted, or it "
        "was revoked.",
        "An administrator presses Grant consent on the Microsoft 365 integration "
        "page; for a personal mailbox, press Reconnect and accept the permissions.",
    ),
    65004: (
        "The person signing in declined to grant the requested permissions.",
        "Start again and accept the permissions, or ask an administrator to grant "
        "consent for the organisation.",
    ),
    90094: (
        "The tenant requires an administrator to approve this application.",
        "Ask an administrator to press Grant consent on the Microsoft 365 "
        "integration page, then try again.",
    ),
    50011: (
        "The redirect URI is not registered for the application.",
        "Add the redirect URIs shown on the Microsoft 365 integration page to the "
        "app registration under Authentication › Web.",
    ),
    50173: (
        "The sign-in was revoked (for example by a password change or an "
        "administrator), so the stored grant no longer works.",
        "Press Reconnect on the account and sign in to Microsoft again.",
    ),
    700082: (
        "The stored sign-in expired after a long time without use.",
        "Press Reconnect on the account and sign in to Microsoft again.",
    ),
    70008: (
        "The authorization code or stored sign-in has expired.",
        "Press Reconnect on the account and sign in to Microsoft again.",
    ),
    70043: (
        "A Conditional Access sign-in frequency policy ended the stored sign-in.",
        "Press Reconnect on the account and sign in to Microsoft again.",
    ),
    54005: (
        "The authorization code was already used.",
        "Start the sign-in again; each code works once.",
    ),
    501481: (
        "The PKCE code verifier did not match the sign-in request.",
        "Start the sign-in again in one browser tab.",
    ),
    50076: (
        "Multi-factor authentication is required for this sign-in.",
        "Press Reconnect and complete the multi-factor prompt.",
    ),
    53003: (
        "A Conditional Access policy blocked the sign-in.",
        "Ask your Microsoft Entra administrator which policy applies to this "
        "application and this portal's network.",
    ),
    1002012: (
        "The requested scope is not valid.",
        "Check that the cloud chosen on the Microsoft 365 integration page is the "
        "tenant's cloud.",
    ),
}


def explain(error: str, description: str, *, for_user: bool) -> SignInFailed:
    """Return the failure for a token endpoint error, explained rather than echoed.

    The reply keeps only the OAuth error, the AADSTS code and the trace ID,
    which Microsoft support needs. The description is not shown.
    """
    match = re.search(r"AADSTS(\d+)", description or "")
    code = int(match.group(1)) if match else None
    trace = re.search(r"Trace ID: ([0-9a-fA-F-]{8,})", description or "")
    reply = error + (f" AADSTS{code}" if code else "")
    if trace:
        reply += f" (trace ID {trace.group(1)})"

    if code in _EXPLANATIONS:
        summary, advice = _EXPLANATIONS[code]
    elif error == "invalid_grant" and for_user:
        summary = "The stored Microsoft sign-in is no longer valid."
        advice = "Press Reconnect on the account and sign in to Microsoft again."
    elif error == "invalid_client":
        summary = (
            "The Microsoft identity platform rejected the application's credentials."
        )
        advice = "Check the application (client) ID and the client secret. " + _APP_FIX
    elif error in ("temporarily_unavailable", "server_error"):
        return SignInFailed(
            Step.AUTHENTICATION,
            "The Microsoft identity platform is temporarily unavailable.",
            "Try again in a few minutes.",
            reply=reply,
            temporary=True,
            code=code,
            error=error,
        )
    else:
        summary = f"Microsoft sign-in failed ({error or 'unknown error'})."
        advice = (
            "Look up the AADSTS code in Microsoft Entra's error code reference, "
            "or give Microsoft support the trace ID."
        )
    if code in _GRANT_LOST and for_user:
        advice = "Press Reconnect on the account and sign in to Microsoft again."
    return SignInFailed(
        Step.AUTHENTICATION, summary, advice, reply=reply, code=code, error=error
    )


def _call(request: Callable[[], dict], *, for_user: bool) -> dict:
    """Run a token request and turn every way it can fail into a SignInFailed."""
    try:
        token = request()
    except OAuthError as error:
        log.info(
            "Token request rejected: %s %s", error.error, _code_only(error.description)
        )
        raise explain(
            error.error or "", error.description or "", for_user=for_user
        ) from None
    except requests.Timeout:
        raise SignInFailed(
            Step.TIMEOUT,
            "The Microsoft identity platform did not answer in time.",
            "Try again later; check that this portal can reach the sign-in host.",
            temporary=True,
        ) from None
    except requests.ConnectionError as error:
        log.info("Connecting to the token endpoint failed: %s", error)
        raise SignInFailed(
            Step.CONNECT,
            "The connection to the Microsoft identity platform failed.",
            "Check that this portal's network, DNS and proxy let it reach the "
            "sign-in host of the chosen cloud.",
            temporary=True,
        ) from None
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else 0
        raise SignInFailed(
            Step.AUTHENTICATION,
            f"The Microsoft identity platform answered {status}.",
            "Try again in a few minutes.",
            reply=str(status),
            temporary=status == 429 or status >= 500,
        ) from None
    except ValueError:
        raise SignInFailed(
            Step.PROTOCOL,
            "The token endpoint answered without a token.",
            "Check the sign-in URL setting (PORTAL_MICROSOFT_LOGIN_URL) and any proxy.",
            temporary=True,
        ) from None
    if not token.get("access_token"):
        raise SignInFailed(
            Step.PROTOCOL,
            "The token endpoint answered without an access token.",
            "Try again; if it persists, check the sign-in URL setting.",
        )
    return token


def _code_only(description: str | None) -> str:
    match = re.search(r"AADSTS\d+", description or "")
    return match.group(0) if match else ""
