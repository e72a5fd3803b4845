"""The pages of an Internet account's OAuth2 sign-in (SMTP and IMAP with XOAUTH2).

A save of an account set to OAuth2 that has no usable sign-in sends the
browser to Google or Microsoft. The provider returns to the redirect URI
registered for personal mailboxes of that provider. Its callback hands the
round trip back here when the session shows that it started here.
"""

import logging

from flask import abort, flash, redirect, request, url_for
from flask_htmx import make_response
from flask_login import current_user

from ..extensions import db
from ..integrations import mail_oauth
from ..models import EmailAccount
from ..services import audit
from ..services.accounts import oauth_identity, oauth_provider, sign_in_fits
from ..templating import wants_fragment
from ..transports.base import TransportError
from . import pages
from .scope import AccountScope

log = logging.getLogger(__name__)

# The redirect URI each provider returns to: the ones registered for
# personal mailboxes, so administrators register nothing more.
CALLBACKS = {
    mail_oauth.GOOGLE: "personal.complete_google_connection",
    mail_oauth.MICROSOFT: "personal.microsoft365_sign_in_callback",
}

# The account scopes by blueprint name, filled in as they register routes.
_SCOPES: dict[str, AccountScope] = {}


def remember_scope(scope: AccountScope) -> None:
    _SCOPES[scope.blueprint] = scope


def needs_sign_in(account: EmailAccount) -> bool:
    """Return whether an OAuth2 account lacks a sign-in usable for its settings."""
    smtp = account.settings.get("smtp") or {}
    if not oauth_provider(smtp.get("auth")):
        return False
    link = account.settings.get("oauth") or {}
    fits = sign_in_fits(
        link.get("provider"),
        oauth_identity(account),
        smtp.get("auth"),
        smtp.get("username"),
    )
    return not fits or bool(account.settings.get("reconnect_needed"))


def start(scope: AccountScope, account: EmailAccount):
    """Send the browser to the provider's sign-in for the saved ``account``."""
    smtp = account.settings.get("smtp") or {}
    provider = oauth_provider(smtp.get("auth")) or ""
    edit_url = scope.url("edit_account", account_id=account.id)
    try:
        url = mail_oauth.start_sign_in(
            provider=provider,
            username=smtp.get("username", ""),
            account_id=account.id,
            blueprint=scope.blueprint,
            redirect_uri=pages.external_url(CALLBACKS[provider]),
        )
    except TransportError as error:
        flash(f"{error.summary} {error.advice}".strip(), "error")
        return redirect(edit_url)
    # The Content-Security-Policy lets forms lead to the providers' sign-in
    # origins, so a plain redirect works; htmx needs HX-Redirect to leave.
    if wants_fragment():
        return make_response(redirect=url)
    return redirect(url)


def owns_callback() -> bool:
    """Return whether the provider's redirect belongs to a sign-in started here."""
    return mail_oauth.owns(request.args)


def finish():
    """Finish the round trip on the provider's redirect and store the sign-in."""
    try:
        pending = mail_oauth.take_pending(request.args)
    except TransportError as error:
        flash(f"{error.summary} {error.advice}".strip(), "error")
        return redirect(url_for("main.index"))

    scope = _SCOPES.get(pending.blueprint)
    if scope is None or (not scope.personal and not current_user.is_administrator):
        abort(403)
    account = scope.get_account(pending.account_id)
    edit_url = scope.url("edit_account", account_id=account.id)
    try:
        link = mail_oauth.redeem(pending, request.args)
    except TransportError as error:
        log.info(
            "OAuth2 sign-in for account %s by staff member %s failed: %s",
            account.id,
            current_user.id,
            error.summary,
        )
        _audit_failed_sign_in(account, error.summary)
        flash(f"{error.summary} {error.advice}".strip(), "error")
        return redirect(edit_url)

    smtp = account.settings.get("smtp") or {}
    if not sign_in_fits(
        link.provider, link.identity, smtp.get("auth"), smtp.get("username")
    ):
        # The account changed while the sign-in was under way.
        _audit_failed_sign_in(
            account, f"signed in as {link.identity}; the account changed"
        )
        flash(
            "The account's authentication or user name changed during the sign-in, "
            "so the sign-in was not kept. Press Save and sign in again.",
            "error",
        )
        return redirect(edit_url)

    mail_oauth.store_link(account, link)
    db.session.commit()
    label = mail_oauth.provider_label(link.provider)
    flash(
        f"Signed in with {label} as {link.identity}. Send a test message to check "
        "the account.",
        "success",
    )
    return redirect(edit_url)


def _audit_failed_sign_in(account: EmailAccount, detail: str) -> None:
    audit.record(
        "account.oauth.connect",
        object_type="account",
        object_id=account.id,
        label=account.friendly_name,
        outcome=audit.FAILURE,
        detail=detail,
    )
    db.session.commit()
