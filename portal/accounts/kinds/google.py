"""The Google Workspace / Gmail account type: its form, search, sign-in, tests and save.

Global accounts act as a Workspace mailbox through the service account's
domain-wide delegation; the administrator finds the mailbox by searching the
directory and picks it. Personal accounts are connected by their owner, who
signs in with Google (authorization code with PKCE); the portal keeps the
refresh token encrypted and never receives a password.
"""

import logging

from flask import (
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_htmx import make_response
from flask_login import current_user
from wtforms import BooleanField, EmailField, SearchField

from ... import crypto, ratelimits, validation
from ...extensions import db
from ...integrations import google
from ...models import EmailAccount
from ...services import accounts as account_service
from ...services import audit, senders, testing
from ...templating import render_page_or_fragment, wants_fragment
from ...transports.base import Step, TransportError
from .. import concurrency, mail_sign_in, pages, types
from ..forms import AccountForm, normalised_by
from ..scope import AccountScope

log = logging.getLogger(__name__)

FORM_TEMPLATE = "accounts/_google_account_form.html"
RESULTS_TEMPLATE = "accounts/_google_mailbox_results.html"
# Flask session keys: the sign-in under way, a finished sign-in waiting for
# the new account to be saved, and the form values typed before leaving.
PENDING_SIGN_IN = "google_sign_in"
CONNECTED_GRANT = "google_grant"
TYPED_VALUES = "google_form"
KEPT_FIELDS = ("mailbox", "read_mail", "friendly_name", "description", "from_name")


class GoogleAccountForm(AccountForm):
    mailbox = EmailField(
        "Mailbox", validators=[normalised_by(validation.normalise_email)]
    )
    from_address = EmailField(
        "From address", validators=[normalised_by(validation.normalise_email)]
    )
    read_mail = BooleanField("Read mail with the Email Manager")
    q = SearchField("Find a mailbox")

    def validate_mailbox_fields(self, personal: bool) -> bool:
        ok = True
        for name in ("mailbox", "from_address"):
            field = self[name]
            if isinstance(field.data, str):
                field.data = field.data.strip()
            if not field.validate(self):
                ok = False
        if not self.mailbox.data and not self.mailbox.errors:
            self.mailbox.errors.append(
                "Enter your Google address."
                if personal
                else "Search for the mailbox and pick it, or type its address."
            )
            ok = False
        if ok and not personal and google.is_consumer_address(self.mailbox.data):
            refused = google.consumer_address_refused(self.mailbox.data)
            self.mailbox.errors.append(f"{refused.summary} {refused.advice}")
            ok = False
        return ok

    def from_or_mailbox(self) -> str:
        return self.from_address.data or self.mailbox.data


def google_account_view(scope: AccountScope, account: EmailAccount | None):
    """Show, search, connect, test or save a Google account.

    Buttons are distinguished by ``action``: ``search`` lists matching
    mailboxes (the fallback of the search as you type), a button named
    ``pick`` chooses one, ``connect`` sends a staff member to Google's
    consent screen, ``test-send`` and ``test-read`` run a test with the
    values on the form, and ``save`` stores the account.
    """
    if request.method == "GET":
        stored_values = _stored_values(account)
        typed = _typed_before_sign_in(account)
        form = GoogleAccountForm(data={**stored_values, **typed.get("values", {})})
        form.test_to.data = form.test_to.data or current_user.email
        # Values typed before a sign-in keep the version they were typed against.
        version_fields = typed.get("version_fields") or concurrency.form_fields(
            account, stored_values
        )
        return _render_form(scope, account, form, version_fields=version_fields)

    form = GoogleAccountForm()
    action = "pick" if request.form.get("pick") else request.form.get("action", "save")

    if action == "search" and not scope.personal:
        return _render_form(scope, account, form, search=_search(form.q.data or ""))
    if action == "pick" and not scope.personal:
        form.mailbox.data = request.form["pick"].strip()
        form.from_address.data = ""
        return _render_form(scope, account, form)
    if action == "connect" and scope.personal:
        return _start_sign_in(scope, account, form)
    if action in ("test-send", "test-read"):
        return _run_test(scope, account, form, action)
    return _save(scope, account, form)


# -- saving -------------------------------------------------------------------------


def _save(scope: AccountScope, account: EmailAccount | None, form: GoogleAccountForm):
    include_security = scope.chooses_security(account)
    valid = form.validate_mailbox_fields(scope.personal)
    valid = form.validate_names(include_security) and valid
    grant = None
    if valid and scope.personal:
        grant, error = _personal_grant_for_save(account, form)
        if error:
            form.mailbox.errors.append(error)
            valid = False
    if valid and not scope.personal:
        try:
            google.check_from_address(
                google.MailboxAccess(form.mailbox.data), form.from_or_mailbox()
            )
        except TransportError as error:
            form.from_address.errors.append(f"{error.summary} {error.advice}")
            valid = False
    if not valid:
        form.form_errors.append(
            "The account was not saved. Correct the fields marked below."
        )
        return _render_form(scope, account, form)
    if account is not None:
        stored_values = _stored_values(account)
        if concurrency.reject_if_stale(account, form, stored_values):
            version_fields = concurrency.form_fields(account, stored_values)
            return _render_form(scope, account, form, version_fields=version_fields)

    created = account is None
    values = google.AccountValues(
        friendly_name=form.friendly_name.data,
        description=form.description.data or "",
        from_name=form.from_name.data or "",
        enabled=bool(form.enabled.data),
        mailbox=form.mailbox.data,
        from_address=form.mailbox.data if scope.personal else form.from_or_mailbox(),
        read=bool(form.read_mail.data),
    )
    try:
        account = google.save_account(
            values,
            account=account,
            owner_id=scope.owner_id(),
            security=form.security.data if include_security else None,
            grant=grant,
        )
    except account_service.AccountError as error:
        form[error.field].errors.append(str(error))
        return _render_form(scope, account, form)
    db.session.commit()
    session.pop(CONNECTED_GRANT, None)

    return pages.saved_response(scope, account, created)


def _personal_grant_for_save(account: EmailAccount | None, form: GoogleAccountForm):
    """Return (new grant or None, error) for saving a personal account.

    A new grant comes from a finished sign-in for this address; without one,
    a saved account keeps its stored grant if the address is unchanged.
    """
    grant = _connected_grant(form.mailbox.data)
    if grant is not None:
        scopes = grant.scopes
    elif (
        account is not None
        and account.settings.get("mailbox", "").lower() == form.mailbox.data.lower()
        and google.REFRESH_TOKEN in account.secret_names()
    ):
        scopes = tuple(account.settings.get("scopes", ()))
    else:
        return None, (
            "Press Connect Google mailbox and sign in with this address before saving."
        )
    if form.read_mail.data and google.SCOPE_READ not in scopes:
        return None, (
            "Reading mail needs Google's permission to read. Press Connect "
            "Google mailbox again to grant it, or untick reading."
        )
    return grant, ""


# -- tests --------------------------------------------------------------------------


def _run_test(
    scope: AccountScope,
    account: EmailAccount | None,
    form: GoogleAccountForm,
    action: str,
):
    valid = form.validate_mailbox_fields(scope.personal)
    if action == "test-send":
        valid = form.validate_test_destination() and valid
    access, error = (None, "")
    if valid:
        access, error = _mailbox_access(scope, account, form)
        if error:
            form.mailbox.errors.append(error)
            valid = False
    if not valid:
        return pages.form_with_errors(form, lambda: _render_form(scope, account, form))

    account_id = account.id if account else None
    ratelimits.consume_test(
        current_user.id,
        str(account_id) if account else f"new:{form.mailbox.data}",
    )
    if action == "test-send":
        from_address = form.mailbox.data if scope.personal else form.from_or_mailbox()
        outcome = google.run_send_test(
            access,
            from_address=from_address,
            from_name=form.from_name.data or "",
            to=form.test_to.data,
            account_label=form.friendly_name.data or form.mailbox.data,
            account=account,
        )
    else:
        outcome = google.run_read_test(access, account=account)

    if account is not None:
        testing.record_outcome(account, outcome)
    testing.audit_outcome(outcome, account, label=form.mailbox.data)
    db.session.commit()

    if wants_fragment():
        return render_template("accounts/_test_result.html", outcome=outcome, form=form)
    return _render_form(scope, account, form, outcome=outcome)


def _mailbox_access(
    scope: AccountScope, account: EmailAccount | None, form: GoogleAccountForm
) -> tuple[google.MailboxAccess | None, str]:
    """Return how a test reaches the mailbox on the form, or why it cannot."""
    mailbox = form.mailbox.data
    if not scope.personal:
        return google.MailboxAccess(mailbox), ""
    grant = _connected_grant(mailbox)
    if grant is not None:
        return google.MailboxAccess(mailbox, True, grant.refresh_token), ""
    if (
        account is not None
        and account.settings.get("mailbox", "").lower() == mailbox.lower()
    ):
        token = account_service.get_secret(account, google.REFRESH_TOKEN)
        if token:
            return google.MailboxAccess(mailbox, True, token), ""
    return None, "Press Connect Google mailbox and sign in with this address first."


# -- mailbox search (global accounts) ---------------------------------------------------


def _search(text: str, page_token: str = "") -> dict:
    """Search the directory; the template context of the results region."""
    context = {"query": text, "users": [], "next_page_token": "", "error": None}
    if not text.strip():
        return context
    try:
        page = google.search_mailboxes(text, page_token)
    except TransportError as error:
        context["error"] = error
        return context
    context["users"] = page.users
    context["next_page_token"] = page.next_page_token
    return context


def _search_view(scope: AccountScope):
    context = _search(request.args.get("q", ""), request.args.get("page_token", ""))
    return render_template(
        RESULTS_TEMPLATE,
        scope=scope,
        appending=bool(request.args.get("page_token")),
        **context,
    )


# -- personal sign-in ------------------------------------------------------------------


def redirect_uri() -> str:
    """Return the redirect URI to register for the OAuth client in Google Cloud."""
    return pages.external_url("personal.complete_google_connection")


def _form_page(scope: AccountScope, account_id: int | None) -> str:
    if account_id:
        return scope.url("edit_account", account_id=account_id)
    return scope.url("create_account", type_key=google.KIND)


def _start_sign_in(
    scope: AccountScope, account: EmailAccount | None, form: GoogleAccountForm
):
    """Keep what was typed, then send the browser to Google's consent screen."""
    client = google.load_oauth_client()
    valid = form.validate_mailbox_fields(personal=True)
    if client is None:
        form.form_errors.append(
            "Signing in with Google is not set up. Ask an administrator to "
            "enter the OAuth client on the Google Workspace integration page."
        )
        valid = False
    if not valid:
        return _render_form(scope, account, form)

    scopes = google.personal_scopes(bool(form.read_mail.data))
    authorization = google.authorization_request(
        client, redirect_uri(), form.mailbox.data, scopes
    )
    session[PENDING_SIGN_IN] = {
        "state": authorization.state,
        "verifier": crypto.seal(authorization.code_verifier, current_user.id),
        "account_id": account.id if account else None,
        "mailbox": form.mailbox.data,
        "scopes": list(scopes),
    }
    session[TYPED_VALUES] = {
        "account_id": account.id if account else None,
        "values": {name: form[name].data for name in KEPT_FIELDS},
        "version_fields": concurrency.form_fields(account),
    }
    log.info(
        "Staff member %s signing in to Google for %s",
        current_user.id,
        form.mailbox.data,
    )
    # The page's Content-Security-Policy allows forms to post only to the
    # portal, and browsers apply that to redirects after a post too. So
    # htmx navigates with HX-Redirect, and without JavaScript a page links
    # to Google.
    if wants_fragment():
        return make_response(redirect=authorization.url)
    return render_template(
        "accounts/google_sign_in.html",
        authorization_url=authorization.url,
        mailbox=form.mailbox.data,
        back_url=_form_page(scope, account.id if account else None),
        breadcrumbs=scope.breadcrumbs(("Sign in with Google", None)),
    )


def _complete_sign_in(scope: AccountScope):
    """Google's redirect back: check the state, trade the code, keep the grant."""
    if mail_sign_in.owns_callback():
        return mail_sign_in.finish()
    pending = session.pop(PENDING_SIGN_IN, None)
    if not pending or request.args.get("state") != pending.get("state"):
        flash(
            "This Google sign-in was not started here or has already been used, "
            "so nothing was changed. Open the account and start the sign-in again.",
            "error",
        )
        return redirect(scope.url("list_accounts"))
    account = None
    if pending.get("account_id"):
        account = scope.get_account(pending["account_id"])
    back = _form_page(scope, account.id if account else None)

    if request.args.get("error"):
        reason = request.args["error"]
        flash(
            "Google did not connect the mailbox"
            + (
                ": you declined the consent."
                if reason == "access_denied"
                else f" ({reason})."
            )
            + " Press Connect Google mailbox to try again.",
            "error",
        )
        return redirect(back)

    client = google.load_oauth_client()
    verifier = crypto.unseal(pending.get("verifier", ""), current_user.id)
    try:
        if client is None or not verifier:
            raise TransportError(
                Step.AUTHENTICATION,
                "The sign-in could not be completed.",
                "Press Connect Google mailbox again.",
            )
        grant = google.exchange_code(
            client,
            code=request.args.get("code", ""),
            code_verifier=verifier,
            redirect_uri=redirect_uri(),
            expected_address=pending["mailbox"],
            required_scopes=tuple(pending["scopes"]),
        )
    except TransportError as error:
        log.info(
            "Google sign-in for %s by staff member %s failed: %s",
            pending["mailbox"],
            current_user.id,
            error.summary,
        )
        audit.record(
            "account.google.consent",
            object_type="account",
            object_id=account.id if account else "",
            label=pending["mailbox"],
            outcome=audit.FAILURE,
            detail=error.summary,
        )
        db.session.commit()
        flash(f"{error.summary} {error.advice}", "error")
        return redirect(back)

    read = google.SCOPE_READ in grant.scopes
    if account is not None:
        google.store_grant(account, grant, read)
        db.session.commit()
        flash(f"Connected {grant.email} again.", "success")
        return redirect(back)

    session[CONNECTED_GRANT] = {
        "mailbox": grant.email,
        "scopes": list(grant.scopes),
        "token": crypto.seal(grant.refresh_token, current_user.id),
    }
    audit.record(
        "account.google.consent",
        object_type="account",
        label=grant.email,
        detail="Signed in; the account is saved next.",
    )
    db.session.commit()
    flash(f"Connected {grant.email}. Test the account, then save it.", "success")
    return redirect(back)


def _connected_grant(mailbox: str) -> google.PersonalGrant | None:
    """Return the finished sign-in waiting in the session, if it is for ``mailbox``."""
    stored = session.get(CONNECTED_GRANT)
    if not stored or stored.get("mailbox", "").lower() != (mailbox or "").lower():
        return None
    token = crypto.unseal(stored.get("token", ""), current_user.id)
    if not token:
        return None
    return google.PersonalGrant(
        email=stored["mailbox"], scopes=tuple(stored["scopes"]), refresh_token=token
    )


# -- rendering ---------------------------------------------------------------------


def _stored_values(account: EmailAccount | None) -> dict:
    """Return the form's values for the stored ``account``."""
    if account is None:
        return {}
    mailbox = account.settings.get("mailbox", account.email_address)
    return {
        "mailbox": mailbox,
        "from_address": ""
        if account.email_address.lower() == mailbox.lower()
        else account.email_address,
        "read_mail": bool(account.settings.get("read")),
        "friendly_name": account.friendly_name,
        "description": account.description,
        "from_name": account.from_name,
        "enabled": account.enabled,
    }


def _typed_before_sign_in(account: EmailAccount | None) -> dict:
    """Remove and return what was kept of this form before the sign-in with Google."""
    typed = session.get(TYPED_VALUES)
    if typed and typed.get("account_id") == (account.id if account else None):
        session.pop(TYPED_VALUES)
        return typed
    return {}


def _connection_state(
    scope: AccountScope, account: EmailAccount | None, form: GoogleAccountForm
) -> dict:
    """Return what the personal form shows about the sign-in."""
    if not scope.personal:
        return {}
    grant = _connected_grant(form.mailbox.data or "")
    if grant is not None:
        return {"connected_as": grant.email, "connected_scopes": grant.scopes}
    if account is not None and google.REFRESH_TOKEN in account.secret_names():
        return {
            "connected_as": account.settings.get("mailbox", ""),
            "connected_scopes": tuple(account.settings.get("scopes", ())),
            "reconnect_needed": bool(account.settings.get("reconnect_needed")),
        }
    return {"connected_as": ""}


def _render_form(
    scope: AccountScope,
    account: EmailAccount | None,
    form: GoogleAccountForm,
    outcome=None,
    search: dict | None = None,
    version_fields: dict | None = None,
):
    """Render the form. ``version_fields`` replace the hidden version fields of the request."""
    context = pages.page_context(scope, account, google.KIND, "Google")
    return render_page_or_fragment(
        "accounts/edit_account.html",
        FORM_TEMPLATE,
        form_template=FORM_TEMPLATE,
        type_label="Google Workspace / Gmail",
        **context,
        **_connection_state(scope, account, form),
        scope=scope,
        form=form,
        **(version_fields or concurrency.form_fields(account)),
        mailbox_search=search,
        read_scope=google.SCOPE_READ,
        choose_security=scope.chooses_security(account),
        outcome=outcome,
        breadcrumbs=scope.breadcrumbs((context["title"], None)),
    )


# -- registration ------------------------------------------------------------------------


def _availability(scope: AccountScope) -> types.Availability:
    if scope.personal:
        if google.load_oauth_client() is not None:
            return types.ALWAYS
        return types.Availability(
            False,
            "An administrator has not set up signing in with Google yet.",
            fix_url=url_for("admin.edit_google_integration")
            if current_user.is_administrator
            else "",
            fix_label="Set up Google sign-in",
        )
    if google.service_account_summary():
        return types.ALWAYS
    return types.Availability(
        False,
        "Connect the Google Workspace first: upload a service account key.",
        fix_url=url_for("admin.edit_google_integration"),
        fix_label="Connect Google Workspace",
    )


def _summary(account: EmailAccount) -> str:
    label = "Gmail (signed in)" if account.is_personal else "Google Workspace"
    if account.settings.get("reconnect_needed"):
        return f"{label} · Reconnect needed"
    return label


def _register_routes(route, scope: AccountScope) -> None:
    if scope.personal:

        def complete_google_connection():
            return _complete_sign_in(scope)

        route("/google/callback", complete_google_connection)
    else:

        def search_google_mailboxes():
            return _search_view(scope)

        route("/google/mailboxes", search_google_mailboxes)


types.register(
    types.AccountType(
        key=google.KIND,
        label="Google Workspace / Gmail",
        description=(
            "A Google Workspace mailbox reached through the Gmail API. Global "
            "accounts act as a mailbox of the connected Workspace; a staff "
            "member connects a personal Gmail or Workspace mailbox by signing "
            "in with Google. No mailbox password is stored."
        ),
        view=google_account_view,
        availability=_availability,
        summary=_summary,
        register_routes=_register_routes,
        order=20,
    )
)
senders.register(google.KIND, google.open_sender)
