"""The Internet (SMTP with IMAP or POP3) account type: its form, tests and save."""

import logging

from flask import current_app, flash, render_template, request
from flask_login import current_user

from ... import crypto, ratelimits
from ...extensions import db
from ...integrations import mail_oauth
from ...models import EmailAccount
from ...services import accounts as account_service
from ...services import outbound, senders, testing
from ...templating import render_page_or_fragment, wants_fragment
from ...transports import destinations
from ...transports.base import TransportError
from ...transports.smtp import SmtpConnection
from .. import concurrency, mail_sign_in, pages, types
from ..forms import InternetAccountForm
from ..scope import AccountScope
from .microsoft365 import convert_offer

log = logging.getLogger(__name__)

SECRET_FIELDS = ("smtp_password", "read_password")
FORM_TEMPLATE = "accounts/_account_form.html"
TYPE_LABEL = "Internet (SMTP/IMAP)"


def internet_account_view(scope: AccountScope, account: EmailAccount | None):
    """Show, test or save the Internet account form.

    One route serves every button of the form, told apart by ``action``:
    ``apply-preset`` fills in a provider's settings, ``test-send`` and
    ``test-read`` run a test with the values on the form (nothing is saved
    first), and ``save`` validates everything and stores the account. Without
    JavaScript each button submits the whole form and gets the page back.
    """
    stored = account.secret_names() if account else set()
    if request.method == "GET":
        initial = account_service.form_data_from_account(account) if account else {}
        form = InternetAccountForm(data=initial, stored_secrets=stored)
        form.test_to.data = form.test_to.data or current_user.email
        return _render_form(scope, account, form, stamp_values=initial)

    form = InternetAccountForm(stored_secrets=stored)
    _collect_typed_secrets(form)
    action = request.form.get("action", "save")

    if action == "apply-preset":
        form.apply_preset(form.preset.data or "")
        return _render_form(scope, account, form)
    if action == "show-auth":
        # The authentication choice changed: show the fields it needs.
        form.collect_warnings()
        return _render_form(scope, account, form)

    if action in ("test-send", "test-read"):
        return _run_test(scope, account, form, action)

    if not form.validate_all(include_security=scope.chooses_security(account)):
        form.form_errors.append(
            "The account was not saved. Correct the fields marked below."
        )
        return _render_form(scope, account, form)

    if account is not None:
        stored_values = account_service.form_data_from_account(account)
        if concurrency.reject_if_stale(account, form, stored_values):
            return _render_form(scope, account, form, stamp_values=stored_values)

    created = account is None
    before = None if created else account_service.snapshot(account)
    try:
        account = account_service.save_internet_account(
            form,
            account=account,
            owner_id=scope.owner_id(),
            security=form.security.data if scope.chooses_security(account) else None,
        )
    except account_service.AccountError as error:
        form[error.field].errors.append(str(error))
        return _render_form(scope, account, form)
    account_service.record_saved(account, before, form.typed_secrets)
    db.session.commit()

    if mail_sign_in.needs_sign_in(account) or (
        action == "oauth-sign-in" and form.oauth_provider
    ):
        log.info(
            "Internet account %s %s; its OAuth2 sign-in starts",
            account.id,
            "created" if created else "updated",
        )
        flash(
            f"{'Created' if created else 'Saved'} {account.friendly_name}.", "success"
        )
        return mail_sign_in.start(scope, account)
    return pages.saved_response(scope, account, created)


def _run_test(
    scope: AccountScope,
    account: EmailAccount | None,
    form: InternetAccountForm,
    action: str,
):
    if action == "test-send":
        valid = form.validate_server_settings(include_read=False)
        valid = form.validate_test_destination() and valid
    else:
        valid = form.validate_read_settings()
    if valid and form.oauth_provider:
        problem = _sign_in_problem(account, form)
        if problem:
            form.smtp_auth.errors.append(problem)
            valid = False

    if not valid:
        return pages.form_with_errors(form, lambda: _render_form(scope, account, form))

    ratelimits.consume_test(
        current_user.id,
        str(account.id) if account else f"new:{form.email_address.data}",
    )
    kind = testing.SEND if action == "test-send" else testing.READ
    try:
        outcome = _test_with_form_values(kind, scope, account, form)
    except TransportError as error:
        # Getting the OAuth2 access token failed before any connection.
        outcome = testing.failed_outcome(kind, error)

    if account is not None:
        testing.record_outcome(account, outcome)
    testing.audit_outcome(outcome, account, label=form.email_address.data)
    db.session.commit()

    if wants_fragment():
        return render_template(
            "accounts/_test_result.html",
            outcome=outcome,
            form=form,
            oob_folders=True,
            action_url=scope.url("edit_account", account_id=account.id)
            if account
            else scope.url("create_account", type_key=account_service.INTERNET),
            **_sign_in_context(account, form),
        )
    return _render_form(scope, account, form, outcome=outcome)


def _test_with_form_values(
    kind: str,
    scope: AccountScope,
    account: EmailAccount | None,
    form: InternetAccountForm,
) -> testing.TestOutcome:
    """Run a test send or read with the form's settings and the stored secrets."""
    timeout = current_app.config["SMTP_TIMEOUT"]
    account_id = account.id if account else None
    if kind == testing.SEND:
        settings = account_service.smtp_settings(form, account, timeout)
    else:
        settings = account_service.read_settings(form, account, timeout)
    if form.oauth_provider:
        settings = mail_oauth.with_access_token(settings, account)
    # Connections go only where the outbound policy lets this kind of account go.
    guard = outbound.guard_for(scope.personal, outbound.load_policy())
    with destinations.guarded(guard):
        if kind == testing.SEND:
            return testing.run_send_test(
                settings,
                from_address=form.email_address.data,
                from_name=form.from_name.data or "",
                to=form.test_to.data,
                account_label=form.friendly_name.data or form.email_address.data,
                account_id=account_id,
            )
        return testing.run_read_test(settings, account_id=account_id)


def _sign_in_problem(account: EmailAccount | None, form: InternetAccountForm) -> str:
    """Return why an OAuth2 test cannot use a stored sign-in yet, or ""."""
    label = mail_oauth.provider_label(form.oauth_provider)
    if account is None:
        return (
            f"Tests use the account's sign-in with {label}. Press Save and sign "
            f"in with {label} first."
        )
    identity = account_service.oauth_identity(account)
    stored = (account.settings.get("oauth") or {}).get("provider")
    if not identity:
        return f"The account has not been signed in yet. Press Save and sign in with {label}."
    if not account_service.sign_in_fits(
        stored, identity, form.smtp_auth.data, form.smtp_username.data
    ):
        return (
            f"The stored sign-in is with {mail_oauth.provider_label(stored)} as "
            f"{identity}. Press Save and sign in with {label} to sign in as "
            f"{form.smtp_username.data}."
        )
    return ""


def _sign_in_context(account: EmailAccount | None, form: InternetAccountForm) -> dict:
    """Return what the form shows about the OAuth2 sign-in."""
    provider = form.oauth_provider
    if not provider:
        return {"sign_in": None}
    stored = (account.settings if account else {}).get("oauth") or {}
    identity = account_service.oauth_identity(account) if account else ""
    return {
        "sign_in": {
            "label": mail_oauth.provider_label(provider),
            "problem": mail_oauth.setup_problem(provider),
            "identity": identity if stored.get("provider") == provider else "",
            "reconnect_needed": bool(
                account and account.settings.get("reconnect_needed")
            ),
        }
    }


def _collect_typed_secrets(form: InternetAccountForm) -> None:
    """Take each secret from its field, or from the sealed copy of a failed step."""
    for name in SECRET_FIELDS:
        typed = form[name].data
        if typed:
            form.typed_secrets[name] = typed
            continue
        sealed = request.form.get(f"{name}_sealed", "")
        if sealed:
            value = crypto.unseal(sealed, current_user.id)
            if value:
                form.typed_secrets[name] = value


def _render_form(
    scope: AccountScope,
    account: EmailAccount | None,
    form: InternetAccountForm,
    outcome=None,
    stamp_values: dict | None = None,
):
    sealed = {
        name: crypto.seal(value, current_user.id)
        for name, value in form.typed_secrets.items()
        if value
    }
    context = pages.page_context(scope, account, account_service.INTERNET, TYPE_LABEL)
    return render_page_or_fragment(
        "accounts/edit_account.html",
        FORM_TEMPLATE,
        form_template=FORM_TEMPLATE,
        type_label=TYPE_LABEL,
        **context,
        scope=scope,
        form=form,
        sealed=sealed,
        **concurrency.form_fields(account, stamp_values),
        choose_security=scope.chooses_security(account),
        microsoft365_offer=convert_offer(scope, account),
        **_sign_in_context(account, form),
        outcome=outcome,
        breadcrumbs=scope.breadcrumbs((context["title"], None)),
    )


def _summary(account: EmailAccount) -> str:
    read = account.settings.get("read") or {}
    if read.get("protocol"):
        label = f"Internet (SMTP/{read['protocol'].upper()})"
    else:
        label = "Internet (SMTP)"
    provider = account_service.oauth_provider(
        (account.settings.get("smtp") or {}).get("auth")
    )
    if provider:
        label += f" · OAuth2 with {mail_oauth.provider_label(provider)}"
        if mail_sign_in.needs_sign_in(account):
            label += (
                " · Reconnect needed"
                if account.settings.get("reconnect_needed")
                else " · Sign-in needed"
            )
    return label


def _open_sender(account: EmailAccount, timeout: float):
    """Open the delivery connection of an Internet account.

    An OAuth2 account's access token is fetched here, in the worker's thread
    with its database session, so a revoked grant flags the account at once.
    """
    settings = account_service.stored_smtp_settings(account, timeout)
    if account_service.oauth_provider(account.settings["smtp"].get("auth")):
        try:
            settings = mail_oauth.with_access_token(settings, account)
        except TransportError as error:
            log.info(
                "Account %s cannot sign in to SMTP with OAuth2: %s",
                account.id,
                error.summary,
            )
            return senders.Unavailable(error)
    return SmtpConnection(settings)


def _register_routes(route, scope: AccountScope) -> None:
    # The sign-in callbacks find the scope of the account they finish.
    mail_sign_in.remember_scope(scope)


types.register(
    types.AccountType(
        key=account_service.INTERNET,
        label=TYPE_LABEL,
        description=(
            "Any mail server that accepts SMTP for sending, and optionally IMAP "
            "or POP3 for reading. Ready-made settings are available for Gmail, "
            "Outlook.com, Yahoo, iCloud and other providers."
        ),
        view=internet_account_view,
        summary=_summary,
        register_routes=_register_routes,
        order=40,
    )
)
senders.register(account_service.INTERNET, _open_sender)
