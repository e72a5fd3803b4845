"""OAuth2 sign-in for Internet accounts that use SMTP and IMAP with XOAUTH2.

An Internet account whose authentication is OAuth2 keeps the refresh token of
one sign-in with Google or Microsoft, made by the person who set the account
up, as the account's SMTP user name. Before each connection the portal trades
that refresh token for an access token, which SMTP and IMAP receive through
SASL XOAUTH2. No mailbox password is stored.

Google issues the token for https://mail.google.com/, the only Gmail scope
that SMTP and IMAP accept. Microsoft issues it for Exchange Online's
SMTP.Send and IMAP.AccessAsUser.All, with the app registration of the
Microsoft 365 integration. Microsoft's refresh tokens rotate, so each new
one replaces the stored one.

The sign-in reuses the redirect URIs already registered for personal Google
and Microsoft 365 mailboxes. Their callbacks hand a round trip started here
to ``take_pending`` and ``redeem``.
"""

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from authlib.common.security import generate_token
from flask import current_app, session
from flask_login import current_user

from .. import crypto, presets
from ..extensions import db
from ..models import EmailAccount
from ..services import audit
from ..services.accounts import (
    OAUTH_PREFIX,
    OAUTH_REFRESH_TOKEN,
    get_secret,
    oauth_provider,
    set_secret,
)
from ..transports.base import ServerEndpoint, Step, TransportError
from . import google, microsoft, microsoft_mailboxes
from .microsoft_tokens import (
    CACHE,
    SignInFailed,
    authorization_url,
    redeem_code,
    refresh_user_token,
    token_claims,
)

log = logging.getLogger(__name__)

GOOGLE = "google"
MICROSOFT = "microsoft"
PROVIDER_LABELS = {GOOGLE: "Google", MICROSOFT: "Microsoft"}
GOOGLE_SCOPE = "https://mail.google.com/"
SIGN_IN_KEY = "mail_oauth_sign_in"  # the Flask session key of a round trip
_GOOGLE_MAIL_HOSTS = frozenset(
    {"smtp.gmail.com", "imap.gmail.com", "smtp-relay.gmail.com"}
)


def auth_choice(provider: str) -> str:
    """Return the form's authentication value for ``provider``."""
    return OAUTH_PREFIX + provider


def provider_label(provider: str | None) -> str:
    return PROVIDER_LABELS.get(provider or "", "")


def setup_problem(provider: str) -> str:
    """Return why signing in with ``provider`` cannot start here, or ""."""
    if provider == GOOGLE and google.load_oauth_client() is None:
        return (
            "Signing in with Google is not set up. An administrator enters the "
            "OAuth client on Integrations › Google Workspace."
        )
    if provider == MICROSOFT and not microsoft.is_configured():
        return (
            "Signing in with Microsoft is not set up. An administrator enters the "
            "app registration on Integrations › Microsoft 365."
        )
    return ""


def host_warning(provider: str, host: str) -> str:
    """Warn when ``host`` is not a server known to take the provider's tokens."""
    name = host.strip().lower().removesuffix(".")
    if provider == GOOGLE and name not in _GOOGLE_MAIL_HOSTS:
        return (
            "Google's OAuth2 tokens are accepted by Gmail's servers "
            "(smtp.gmail.com and imap.gmail.com) and by servers set up to check "
            "them; other servers refuse them."
        )
    if provider == MICROSOFT and not presets.is_microsoft365_host(name):
        return (
            "Microsoft's OAuth2 tokens are accepted by Microsoft 365's servers "
            "(smtp.office365.com and outlook.office365.com) and by servers set "
            "up to check them; other servers refuse them."
        )
    return ""


def microsoft_scope(settings: dict) -> str:
    """Return the scopes of a Microsoft sign-in for SMTP and IMAP.

    openid, profile and email bring the ID token that names who signed in;
    offline_access brings the refresh token.
    """
    resource = microsoft.cloud_of(settings).outlook_resource
    return " ".join(
        [
            "openid",
            "profile",
            "email",
            "offline_access",
            f"{resource}/SMTP.Send",
            f"{resource}/IMAP.AccessAsUser.All",
        ]
    )


def reconnect_needed(account: EmailAccount) -> bool:
    return bool(oauth_provider(_auth(account))) and bool(
        account.settings.get("reconnect_needed")
    )


def _auth(account: EmailAccount) -> str:
    return str((account.settings.get("smtp") or {}).get("auth", ""))


# -- the sign-in round trip ----------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A finished sign-in: who signed in, with which grant."""

    provider: str
    identity: str
    scopes: tuple[str, ...]
    refresh_token: str = field(repr=False)


@dataclass(frozen=True)
class Pending:
    """A round trip under way: what it was started for."""

    provider: str
    username: str
    account_id: int
    blueprint: str
    redirect_uri: str
    verifier: str = field(repr=False)


def start_sign_in(
    *,
    provider: str,
    username: str,
    account_id: int,
    blueprint: str,
    redirect_uri: str,
) -> str:
    """Remember the round trip in the session; return the provider's sign-in URL.

    Raises TransportError when the provider is not set up.
    """
    problem = setup_problem(provider)
    if problem:
        raise TransportError(Step.AUTHENTICATION, problem)
    if provider == GOOGLE:
        request = google.authorization_request(
            google.load_oauth_client(),
            redirect_uri,
            username,
            ("openid", "email", GOOGLE_SCOPE),
        )
        url, state, verifier = request.url, request.state, request.code_verifier
    else:
        settings = microsoft.current_settings()
        state = generate_token(32)
        verifier = generate_token(64)  # RFC 7636: 43 to 128 characters
        url = authorization_url(
            microsoft.oauth_app(settings),
            scope=microsoft_scope(settings),
            redirect_uri=redirect_uri,
            state=state,
            code_verifier=verifier,
            login_hint=username,
        )
    session[SIGN_IN_KEY] = {
        "state": state,
        "verifier": crypto.seal(verifier, current_user.id),
        "provider": provider,
        "username": username,
        "account_id": account_id,
        "blueprint": blueprint,
        "redirect_uri": redirect_uri,
        "at": time.time(),
        "staff": current_user.id,
    }
    log.info(
        "Staff member %s signing in with %s for account %s",
        current_user.id,
        provider,
        account_id,
    )
    return url


def owns(args) -> bool:
    """Return whether a callback's ``state`` belongs to a round trip started here."""
    pending = session.get(SIGN_IN_KEY) or {}
    state = args.get("state")
    return bool(state) and state == pending.get("state")


def take_pending(args) -> Pending:
    """Take the round trip that the provider's redirect ``args`` belong to.

    It leaves the session first, so a second use is refused. Raises
    TransportError when the state does not match or is too old.
    """
    stored = session.pop(SIGN_IN_KEY, None)
    if not microsoft.state_matches(stored, args.get("state", "")):
        raise TransportError(
            Step.AUTHENTICATION,
            "This sign-in was not started in this browser session, or it was "
            "already used or is too old. Nothing was changed.",
            "Open the account and press the sign-in button again.",
        )
    return Pending(
        provider=stored["provider"],
        username=stored["username"],
        account_id=int(stored["account_id"]),
        blueprint=stored["blueprint"],
        redirect_uri=stored["redirect_uri"],
        verifier=crypto.unseal(stored.get("verifier", ""), current_user.id),
    )


def redeem(pending: Pending, args) -> Link:
    """Redeem the code of the provider's redirect and check who signed in.

    Raises TransportError with what to do; nothing is stored here.
    """
    label = provider_label(pending.provider)
    if args.get("error"):
        declined = args["error"] == "access_denied"
        raise TransportError(
            Step.AUTHENTICATION,
            f"{label} did not complete the sign-in"
            + (
                ": the permission was declined." if declined else f" ({args['error']})."
            ),
            "Press Save and sign in again and allow what the sign-in page asks for.",
        )
    if not args.get("code") or not pending.verifier:
        raise TransportError(
            Step.AUTHENTICATION,
            f"{label} sent no authorization code.",
            "Press Save and sign in again.",
        )
    if pending.provider == GOOGLE:
        return _finish_google(pending, args["code"])
    return _finish_microsoft(pending, args["code"])


def _finish_google(pending: Pending, code: str) -> Link:
    client = google.load_oauth_client()
    if client is None:
        raise TransportError(Step.AUTHENTICATION, setup_problem(GOOGLE))
    grant = google.exchange_code(
        client,
        code=code,
        code_verifier=pending.verifier,
        redirect_uri=pending.redirect_uri,
        expected_address=pending.username,
        required_scopes=(GOOGLE_SCOPE,),
        button="Save and sign in with Google",
        address_field="the SMTP user name",
    )
    return Link(GOOGLE, grant.email, grant.scopes, grant.refresh_token)


def _finish_microsoft(pending: Pending, code: str) -> Link:
    settings = microsoft.current_settings()
    app = microsoft.oauth_app(settings)
    token = redeem_code(
        app,
        code=code,
        code_verifier=pending.verifier,
        redirect_uri=pending.redirect_uri,
        scope=microsoft_scope(settings),
    )

    # The ID token came straight from the token endpoint over TLS, so OpenID
    # Connect Core 1.0 section 3.1.3.7 lets TLS replace the signature check.
    # The audience and expiry are still checked.
    claims = token_claims(token.get("id_token", ""))
    audience = claims.get("aud")
    if audience != app.client_id or float(claims.get("exp", 0)) < time.time():
        raise TransportError(
            Step.AUTHENTICATION,
            "Microsoft's response did not name who signed in.",
            "Press Save and sign in with Microsoft again. If it keeps failing, an "
            "administrator checks that the app registration allows the openid, "
            "profile and email permissions.",
        )

    names = {
        str(claims.get(name) or "").lower()
        for name in ("preferred_username", "email", "upn")
    } - {""}
    signed_in_as = (
        claims.get("preferred_username") or claims.get("email") or "another user"
    )
    if pending.username.lower() not in names:
        raise TransportError(
            Step.AUTHENTICATION,
            f"You signed in to Microsoft as {signed_in_as}, but the account signs "
            f"in as {pending.username}. Nothing was changed.",
            f"Press Save and sign in with Microsoft again and sign in as "
            f"{pending.username}. If Microsoft signs you in automatically, choose "
            "Use another account.",
        )

    if not token.get("refresh_token"):
        raise TransportError(
            Step.AUTHENTICATION,
            "Microsoft returned no refresh token, so the portal could not sign in "
            "later.",
            "An administrator checks that the app registration allows the "
            "offline_access permission.",
        )
    return Link(
        MICROSOFT,
        pending.username,
        tuple(str(token.get("scope", "")).split()),
        token["refresh_token"],
    )


def store_link(account: EmailAccount, link: Link) -> None:
    """Keep a finished sign-in on the account; the caller commits."""
    set_secret(account, OAUTH_REFRESH_TOKEN, link.refresh_token)
    account.settings = {
        **account.settings,
        "oauth": {
            "provider": link.provider,
            "identity": link.identity,
            "scopes": list(link.scopes),
        },
        "reconnect_needed": False,
        "reconnect_reason": "",
    }
    CACHE.forget(lambda key: key == _cache_key(account.id))
    audit.record(
        "account.oauth.connect",
        object_type="account",
        object_id=account.id,
        label=account.friendly_name,
        changes={
            OAUTH_REFRESH_TOKEN: audit.SECRET_MARK,
            "settings.oauth.identity": link.identity,
        },
        detail=f"Signed in with {provider_label(link.provider)} as {link.identity}",
    )
    log.info(
        "Account %s signed in with %s as %s", account.id, link.provider, link.identity
    )


# -- access tokens -------------------------------------------------------------


def _cache_key(account_id: int) -> tuple:
    return ("xoauth2", account_id)


def _sign_in_missing(account: EmailAccount, reason: str) -> TransportError:
    provider = provider_label(oauth_provider(_auth(account))) or "the provider"
    return TransportError(
        Step.AUTHENTICATION,
        reason,
        f"Open the account and press Save and sign in with {provider}, then sign "
        f"in as {account.settings.get('smtp', {}).get('username', 'its user name')}.",
        sign_in_again=True,
    )


def access_token(account: EmailAccount, *, force_refresh: bool = False) -> str:
    """Return a current access token for a saved OAuth2 Internet account.

    ``force_refresh`` skips the cached token, which the server rejected. A
    revoked or expired grant marks the account *Reconnect needed*. Raises
    TransportError, and runs in an app context with a database session.
    """
    provider = oauth_provider(_auth(account))
    if account.settings.get("reconnect_needed"):
        raise _sign_in_missing(
            account,
            "Reconnect needed: the stored sign-in was revoked or has expired. "
            + str(account.settings.get("reconnect_reason", "")),
        )
    refresh_token = get_secret(account, OAUTH_REFRESH_TOKEN)
    identity = str((account.settings.get("oauth") or {}).get("identity", ""))
    if not refresh_token or not identity:
        raise _sign_in_missing(account, "The account has not been signed in yet.")
    if provider == GOOGLE:
        return _google_token(account, identity, refresh_token, force_refresh)
    if provider == MICROSOFT:
        if force_refresh:
            CACHE.forget(lambda key: key == _cache_key(account.id))
        return _microsoft_token(account, refresh_token)
    raise TransportError(Step.AUTHENTICATION, "The account does not use OAuth2.")


def _google_token(
    account: EmailAccount, identity: str, refresh_token: str, force_refresh: bool
) -> str:
    try:
        return google.personal_tokens(identity, refresh_token).access_token(
            force_refresh=force_refresh
        )
    except google.GrantRevoked as error:
        google.mark_reconnect_needed(account, error)
        raise _sign_in_missing(account, error.summary) from None


def _microsoft_token(account: EmailAccount, refresh_token: str) -> str:
    if not microsoft.is_configured():
        raise TransportError(Step.AUTHENTICATION, setup_problem(MICROSOFT))
    app_object = current_app._get_current_object()
    settings = microsoft.current_settings()
    oauth = microsoft.oauth_app(settings)
    account_id = account.id

    def fetch() -> tuple[str, float]:
        log.info("Refreshing the Microsoft token of account %s", account_id)
        token = refresh_user_token(oauth, refresh_token, microsoft_scope(settings))
        rotated = token.get("refresh_token")
        if rotated and rotated != refresh_token:
            microsoft_mailboxes.store_refresh_token(app_object, account_id, rotated)
        return token["access_token"], float(token.get("expires_in") or 3600)

    try:
        return CACHE.get(_cache_key(account_id), fetch)
    except SignInFailed as failure:
        if failure.grant_lost:
            microsoft_mailboxes.mark_reconnect_needed(
                app_object, account_id, failure.summary
            )
            raise _sign_in_missing(account, failure.summary) from None
        raise


def with_access_token(settings: ServerEndpoint, account: EmailAccount | None):
    """Return ``settings`` with the account's access token when it uses OAuth2.

    ``settings`` comes from the form or the stored account; only a saved
    account can hold a sign-in. Raises TransportError.
    """
    if account is None:
        raise TransportError(
            Step.AUTHENTICATION,
            "The account has not been signed in yet.",
            "Press Save and sign in, then test again.",
            sign_in_again=True,
        )
    return dataclasses.replace(
        settings,
        oauth_token=access_token(account),
        oauth_refresh=_refresher(account),
    )


def _refresher(account: EmailAccount) -> Callable[[], str]:
    """Return a function that fetches a new access token for ``account``.

    The transports call it from any thread after a server rejects a cached
    token, so it opens an app context of its own and commits what the
    refresh changed (a rotated refresh token, or *Reconnect needed*).
    """
    app = current_app._get_current_object()
    account_id = account.id

    def refresh() -> str:
        with app.app_context():
            row = db.session.get(EmailAccount, account_id)
            if row is None:
                raise TransportError(
                    Step.AUTHENTICATION, "The account was deleted during the send."
                )
            try:
                return access_token(row, force_refresh=True)
            finally:
                db.session.commit()

    return refresh
