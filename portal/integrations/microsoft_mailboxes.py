"""Microsoft 365 accounts: their Graph clients, personal sign-in, tests, conversion.

A global account sends as its mailbox with the application's own permissions.
A personal account contains a refresh token from the staff member's own sign-in
(authorization code with PKCE) and sends with delegated Mail.Send; each new
refresh token Microsoft returns replaces the stored one. When the grant is
revoked or expires, the account is marked *Reconnect needed* and its sends
fail at once until the owner signs in again.
"""

import logging
import time
from dataclasses import dataclass, field

from authlib.common.security import generate_token
from flask import current_app, session
from flask_login import current_user

from .. import crypto, presets
from ..extensions import db
from ..models import EmailAccount
from ..services import audit, senders, testing
from ..services.accounts import INTERNET, friendly_name_taken, get_secret, set_secret
from ..services.messages import build_test_message
from ..transports.base import Step, TransportError
from ..transports.graph import GraphClient, GraphConnection, GraphUser, Mailbox
from . import microsoft
from .microsoft_tokens import (
    CACHE,
    SignInFailed,
    authorization_url,
    explain,
    redeem_code,
    refresh_user_token,
)

log = logging.getLogger(__name__)

ACCOUNT_TYPE = microsoft.KIND
REFRESH_TOKEN = "refresh_token"  # noqa: S105 (the name of the stored secret)
SIGN_IN_KEY = "microsoft365_sign_in"
CONNECT, RECONNECT, CONVERT = "connect", "reconnect", "convert"


def is_delegated(account: EmailAccount) -> bool:
    return account.is_personal


def mailbox_address(account: EmailAccount) -> str:
    return account.settings.get("mailbox") or account.email_address


def reconnect_needed(account: EmailAccount) -> bool:
    return account.account_type == ACCOUNT_TYPE and bool(
        account.settings.get("reconnect_needed")
    )


# -- clients ------------------------------------------------------------------


def client_for_account(
    account: EmailAccount, timeout: float | None = None
) -> tuple[GraphClient, Mailbox]:
    """Return the Graph client and mailbox of a saved account; raise TransportError.

    It reads and decrypts secrets, so it runs in the caller's app context.
    """
    if not microsoft.is_configured():
        raise microsoft.not_connected_error()
    if reconnect_needed(account):
        raise _reconnect_error(account, account.settings.get("reconnect_reason", ""))

    settings = microsoft.current_settings()
    timeout = timeout or microsoft.request_timeout()
    address = mailbox_address(account)
    if is_delegated(account):
        provider = delegated_token_provider(account)
        mailbox = Mailbox(
            "me", address, key=f"user:{account.settings.get('user_id', '')}"
        )
    else:
        if not microsoft.is_connected():
            raise microsoft.not_connected_error()
        provider = microsoft.app_token_provider(settings)
        mailbox = Mailbox.of_user(account.settings.get("user_id") or address, address)
    client = GraphClient(
        microsoft.graph_url(settings),
        provider,
        timeout=timeout,
        retry=microsoft.retry_policy(),
        label=f"account {account.id}",
    )
    return client, mailbox


def open_graph_connection(account: EmailAccount, timeout: float) -> GraphConnection:
    """Open a Graph connection for the delivery worker (the Microsoft 365 opener)."""
    try:
        client, mailbox = client_for_account(account, timeout)
    except TransportError as failure:
        return GraphConnection(failure=failure)
    return GraphConnection(client, mailbox)


senders.register(ACCOUNT_TYPE, open_graph_connection)


# -- delegated tokens ---------------------------------------------------------


def _user_token_key(account_id: int) -> tuple:
    return ("user", account_id)


def delegated_token_provider(account: EmailAccount):
    """Return the token provider of a personal account, which uses its refresh token.

    The refresh runs in whatever thread needs a token (a request, or a
    delivery worker's send thread), so it reads and stores the account in an
    app context of its own, with its own database session.
    """
    app = current_app._get_current_object()
    account_id = account.id
    oauth = microsoft.oauth_app()
    scope = microsoft.delegated_scope(microsoft.current_settings())

    def fetch() -> tuple[str, float]:
        with app.app_context():
            row = db.session.get(EmailAccount, account_id)
            refresh_token = get_secret(row, REFRESH_TOKEN) if row else ""
        if not refresh_token:
            raise _reconnect_error(
                None, "No Microsoft sign-in is stored for the account."
            )

        log.info("Refreshing the Microsoft token of account %s", account_id)
        try:
            token = refresh_user_token(oauth, refresh_token, scope)
        except SignInFailed as failure:
            if failure.grant_lost:
                mark_reconnect_needed(app, account_id, failure.summary)
                raise _reconnect_error(None, failure.summary, failure.reply) from None
            raise

        rotated = token.get("refresh_token")
        if rotated and rotated != refresh_token:
            store_refresh_token(app, account_id, rotated)
        return token["access_token"], float(token.get("expires_in") or 3600)

    def provide(stale: str | None = None) -> str:
        return CACHE.get(_user_token_key(account_id), fetch, stale=stale)

    return provide


def store_refresh_token(app, account_id: int, refresh_token: str) -> None:
    with app.app_context():
        row = db.session.get(EmailAccount, account_id)
        if row is None:
            return
        set_secret(row, REFRESH_TOKEN, refresh_token)
        db.session.commit()
    log.info("Stored the rotated refresh token of account %s", account_id)


def mark_reconnect_needed(app, account_id: int, reason: str) -> None:
    with app.app_context():
        row = db.session.get(EmailAccount, account_id)
        if row is None:
            return
        row.settings = {
            **row.settings,
            "reconnect_needed": True,
            "reconnect_reason": reason,
        }
        db.session.commit()
    log.warning("Account %s needs reconnecting: %s", account_id, reason)


def _reconnect_error(
    account: EmailAccount | None, reason: str, reply: str = ""
) -> TransportError:
    who = f" for {mailbox_address(account)}" if account is not None else ""
    return TransportError(
        Step.AUTHENTICATION,
        f"Reconnect needed: the Microsoft sign-in{who} no longer works. {reason}".strip(),
        "The owner presses Reconnect on the account (My preferences › Email) and "
        "signs in to Microsoft as the mailbox again.",
        reply=reply,
    )


# -- tests --------------------------------------------------------------------


def run_send_test(
    account: EmailAccount | None,
    *,
    settings: dict,
    to: str,
    from_name: str,
    account_label: str,
) -> testing.TestOutcome:
    """Send a test message through Graph with the values on the form.

    ``settings`` contains the form's mailbox: user_id, mailbox, send_as.
    """
    from_address = settings.get("send_as") or settings["mailbox"]
    message = build_test_message(
        from_address=from_address,
        from_name=from_name,
        to=to,
        account_label=account_label,
    )
    log.info(
        "Test send started for account %s via Graph", account.id if account else None
    )
    try:
        client, mailbox = _client_for_form(account, settings)
        try:
            result = client.send_message(mailbox, message, recipients=[to])
        finally:
            client.close()
    except TransportError as error:
        log.info(
            "Test send failed for account %s: %s",
            account.id if account else None,
            error.summary,
        )
        return testing.failed_outcome(testing.SEND, error)
    return testing.TestOutcome(
        kind=testing.SEND,
        ok=True,
        summary=f"Microsoft Graph accepted the test message for {to}.",
        reply=result.reply,
    )


def run_read_test(
    account: EmailAccount | None, *, settings: dict
) -> testing.TestOutcome:
    """Count the messages in the mailbox's inbox."""
    log.info(
        "Test read started for account %s via Graph", account.id if account else None
    )
    try:
        client, mailbox = _client_for_form(account, settings)
        try:
            count = client.inbox_count(mailbox)
        finally:
            client.close()
    except TransportError as error:
        log.info(
            "Test read failed for account %s: %s",
            account.id if account else None,
            error.summary,
        )
        return testing.failed_outcome(testing.READ, error)
    noun = "message" if count.total == 1 else "messages"
    return testing.TestOutcome(
        kind=testing.READ,
        ok=True,
        summary=(
            f"Opened the {count.folder} of {mailbox.address}: {count.total} {noun}, "
            f"{count.unread} unread."
        ),
    )


def _client_for_form(
    account: EmailAccount | None, settings: dict
) -> tuple[GraphClient, Mailbox]:
    if account is not None and account.is_personal:
        return client_for_account(account)
    if not microsoft.is_connected():
        raise microsoft.not_connected_error()
    tenant = microsoft.current_settings()
    client = GraphClient(
        microsoft.graph_url(tenant),
        microsoft.app_token_provider(tenant),
        timeout=microsoft.request_timeout(),
        retry=microsoft.retry_policy(),
        label=f"account {account.id}" if account else "a new account",
    )
    return client, Mailbox.of_user(settings["user_id"], settings["mailbox"])


# -- personal sign-in ---------------------------------------------------------


class SignInRefused(Exception):
    """A sign-in round trip ended without a usable result; nothing was changed."""

    def __init__(self, message: str, advice: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.advice = advice


@dataclass
class SignedIn:
    """The outcome of a staff member's Microsoft sign-in."""

    purpose: str
    address: str  # the mailbox the staff member asked to connect
    account_id: int | None
    identity: dict  # /me: id, mail, userPrincipalName, displayName, proxyAddresses
    refresh_token: str = field(repr=False)
    access_token: str = field(repr=False)
    expires_in: float = 3600.0

    def addresses(self) -> set[str]:
        """Return every address of the signed-in user in lower case."""
        found = {
            self.identity.get("mail") or "",
            self.identity.get("userPrincipalName") or "",
        }
        for proxy in self.identity.get("proxyAddresses") or []:
            kind, _, value = str(proxy).partition(":")
            if kind.lower() == "smtp" and value:
                found.add(value)
        return {address.lower() for address in found if address}


def start_sign_in(
    *, purpose: str, address: str, redirect_uri: str, account_id: int | None = None
) -> str:
    """Remember the round trip in the session and return Microsoft's sign-in URL."""
    if not microsoft.is_connected():
        raise microsoft.not_connected_error()
    settings = microsoft.current_settings()
    state = generate_token(32)
    verifier = generate_token(64)  # RFC 7636: 43 to 128 unreserved characters
    session[SIGN_IN_KEY] = {
        "state": state,
        "verifier": crypto.seal(verifier, current_user.id),
        "purpose": purpose,
        "address": address,
        "account_id": account_id,
        "redirect_uri": redirect_uri,
        "at": time.time(),
        "staff": current_user.id,
    }
    log.info(
        "Microsoft sign-in (%s) started by staff member %s for account %s",
        purpose,
        current_user.id,
        account_id,
    )
    return authorization_url(
        microsoft.oauth_app(settings),
        scope=microsoft.delegated_scope(settings),
        redirect_uri=redirect_uri,
        state=state,
        code_verifier=verifier,
        login_hint=address,
    )


def finish_sign_in(args) -> SignedIn:
    """Check Microsoft's redirect after a sign-in, redeem the code and read who signed in.

    The state leaves the session first, so a second use is refused. Raises
    ``SignInRefused``.
    """
    pending = session.pop(SIGN_IN_KEY, None)
    if not microsoft.state_matches(pending, args.get("state", "")):
        raise SignInRefused(
            "The response from Microsoft did not match a sign-in started in this "
            "browser session, or it was already used or is too old. Nothing was "
            "changed.",
            "Start again from My preferences › Email.",
        )
    if args.get("error"):
        failure = explain(
            args["error"], args.get("error_description", ""), for_user=True
        )
        raise SignInRefused(failure.summary, failure.advice)
    verifier = crypto.unseal(pending["verifier"], current_user.id)
    if not args.get("code") or not verifier:
        raise SignInRefused("Microsoft sent no authorization code.", "Start again.")

    settings = microsoft.current_settings()
    try:
        token = redeem_code(
            microsoft.oauth_app(settings),
            code=args["code"],
            code_verifier=verifier,
            redirect_uri=pending["redirect_uri"],
            scope=microsoft.delegated_scope(settings),
        )
        client = GraphClient(
            microsoft.graph_url(settings),
            lambda stale=None: token["access_token"],
            timeout=microsoft.request_timeout(),
            label=f"the sign-in of staff member {current_user.id}",
        )
        try:
            identity = client.get_me()
        finally:
            client.close()
    except TransportError as failure:
        raise SignInRefused(failure.summary, failure.advice) from None

    if not token.get("refresh_token"):
        raise SignInRefused(
            "Microsoft returned no refresh token, so the portal could not keep the "
            "mailbox connected.",
            "Check that the app registration allows the offline_access permission.",
        )
    return SignedIn(
        purpose=pending["purpose"],
        address=pending["address"],
        account_id=pending.get("account_id"),
        identity=identity,
        refresh_token=token["refresh_token"],
        access_token=token["access_token"],
        expires_in=float(token.get("expires_in") or 3600),
    )


def check_identity(signed_in: SignedIn, address: str, user_id: str = "") -> None:
    """Refuse a sign-in as anyone but the mailbox being connected.

    With ``user_id`` (a reconnect), the Graph user must be that exact user;
    otherwise one of the user's addresses must be ``address``.
    """
    who = (
        signed_in.identity.get("userPrincipalName")
        or signed_in.identity.get("mail")
        or "another user"
    )
    if user_id:
        matches = signed_in.identity.get("id") == user_id
    else:
        matches = address.lower() in signed_in.addresses()
    if matches:
        return
    audit.record(
        "account.sign_in",
        object_type="email_account",
        object_id=signed_in.account_id or "",
        label=address,
        outcome=audit.DENIED,
        detail=f"signed in as {who}, expected {address}",
    )
    raise SignInRefused(
        f"You signed in to Microsoft as {who}, but the mailbox being connected is "
        f"{address}. Nothing was changed.",
        f"Start again and sign in as {address}; if Microsoft signs you in "
        "automatically, choose Use another account.",
    )


def _delegated_settings(signed_in: SignedIn, address: str) -> dict:
    return {
        "user_id": signed_in.identity.get("id", ""),
        "mailbox": address,
        "user_principal_name": signed_in.identity.get("userPrincipalName", ""),
        "display_name": signed_in.identity.get("displayName", ""),
        "reconnect_needed": False,
        "read": None,
    }


def _prime_token(account: EmailAccount, signed_in: SignedIn) -> None:
    key = _user_token_key(account.id)
    CACHE.forget(lambda cached: cached == key)
    CACHE.get(key, lambda: (signed_in.access_token, signed_in.expires_in))


def connect_personal_account(signed_in: SignedIn, owner_id: int) -> EmailAccount:
    """Create a personal account for the mailbox just signed in to; the caller commits."""
    address = signed_in.address
    check_identity(signed_in, address)
    display_name = signed_in.identity.get("displayName") or ""
    account = EmailAccount(
        account_type=ACCOUNT_TYPE,
        owner_id=owner_id,
        friendly_name=_free_name(owner_id, f"Microsoft 365 ({address})"),
        email_address=address,
        from_name=display_name[:200],
        enabled=True,
        settings=_delegated_settings(signed_in, address),
    )
    set_secret(account, REFRESH_TOKEN, signed_in.refresh_token)
    db.session.add(account)
    db.session.flush()
    _prime_token(account, signed_in)
    audit.record(
        "account.connect",
        object_type="email_account",
        object_id=account.id,
        label=account.friendly_name,
        detail=f"Microsoft 365 mailbox {address}",
    )
    return account


def reconnect_account(account: EmailAccount, signed_in: SignedIn) -> None:
    """Replace the stored sign-in of a personal account; the caller commits."""
    check_identity(
        signed_in, mailbox_address(account), account.settings.get("user_id", "")
    )
    set_secret(account, REFRESH_TOKEN, signed_in.refresh_token)
    account.settings = {
        **account.settings,
        "reconnect_needed": False,
        "reconnect_reason": "",
    }
    _prime_token(account, signed_in)
    audit.record(
        "account.reconnect",
        object_type="email_account",
        object_id=account.id,
        label=account.friendly_name,
    )


def _free_name(owner_id: int | None, name: str) -> str:
    name = name[:90]
    candidate, number = name, 2
    while friendly_name_taken(owner_id, candidate, None):
        candidate = f"{name} {number}"
        number += 1
    return candidate


# -- converting Internet accounts -----------------------------------------------


def microsoft365_host(account: EmailAccount) -> str:
    """Return the SMTP or incoming host of an Internet account that belongs to Microsoft 365."""
    if account.account_type != INTERNET:
        return ""
    hosts = [(account.settings.get("smtp") or {}).get("host") or ""]
    hosts.append((account.settings.get("read") or {}).get("host") or "")
    return next(
        (host for host in hosts if host and presets.is_microsoft365_host(host)), ""
    )


def convert_account(
    account: EmailAccount,
    *,
    user: GraphUser | None = None,
    signed_in: SignedIn | None = None,
) -> None:
    """Turn an Internet account into a Microsoft 365 account in place.

    The id, names, From name, security, grants and module assignments stay, so
    everything that points at the account keeps working. The SMTP and IMAP
    passwords are deleted, and the last test results, which were about the old
    servers, are cleared. A global account needs the directory ``user``; a
    personal one the owner's ``signed_in``. The caller commits.
    """
    before = {
        "account_type": account.account_type,
        "email_address": account.email_address,
    }
    if signed_in is not None:
        check_identity(signed_in, account.email_address)
        settings = _delegated_settings(signed_in, account.email_address)
    else:
        settings = {
            "user_id": user.id,
            "mailbox": user.mail,
            "user_principal_name": user.user_principal_name,
            "display_name": user.display_name,
            "shared": user.shared_mailbox,
            # Graph reads any mailbox of the tenant, so every global account can be read.
            "read": {"protocol": "graph", "folder": "inbox"},
        }
        if user.mail and user.mail.lower() != account.email_address.lower():
            settings["send_as"] = account.email_address

    account.account_type = ACCOUNT_TYPE
    account.settings = settings
    for name in ("smtp_password", "read_password"):
        set_secret(account, name, None)
    if signed_in is not None:
        set_secret(account, REFRESH_TOKEN, signed_in.refresh_token)
        db.session.flush()
        _prime_token(account, signed_in)
    account.last_send_test_at = account.last_read_test_at = None
    account.last_send_test_ok = account.last_read_test_ok = None
    account.last_send_test_summary = account.last_read_test_summary = ""

    after = {"account_type": ACCOUNT_TYPE, "email_address": account.email_address}
    audit.record(
        "account.convert",
        object_type="email_account",
        object_id=account.id,
        label=account.friendly_name,
        changes=audit.diff(before, after) | {"mailbox": [None, settings["mailbox"]]},
    )
    log.info("Account %s converted to Microsoft 365", account.id)
