"""The Internet (SMTP with IMAP or POP3) account type: its form, tests and save."""

import logging

from flask import current_app, render_template, request
from flask_htmx import make_response
from flask_login import current_user

from ... import crypto, ratelimits
from ...extensions import db
from ...models import EmailAccount
from ...services import accounts as account_service
from ...services import outbound, testing
from ...templating import render_page_or_fragment, wants_fragment
from ...transports import destinations
from .. import concurrency, pages, types
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

    return pages.saved_response(scope, account, created)


def _run_test(
    scope: AccountScope,
    account: EmailAccount | None,
    form: InternetAccountForm,
    action: str,
):
    timeout = current_app.config["SMTP_TIMEOUT"]
    if action == "test-send":
        valid = form.validate_server_settings(include_read=False)
        valid = form.validate_test_destination() and valid
    else:
        valid = form.validate_read_settings()

    if not valid:
        # Field errors belong beside the fields, so the whole form is swapped.
        form.form_errors.append(
            "The test did not run. Correct the fields marked below."
        )
        if wants_fragment():
            response = make_response(
                _render_form(scope, account, form),
                retarget="#account-form",
                reswap="outerHTML",
            )
            return response
        return _render_form(scope, account, form)

    account_id = account.id if account else None
    ratelimits.consume_test(
        current_user.id,
        str(account_id) if account else f"new:{form.email_address.data}",
    )
    # Connections go only where the outbound policy lets this kind of account go.
    guard = outbound.guard_for(scope.personal, outbound.load_policy())
    with destinations.guarded(guard):
        if action == "test-send":
            outcome = testing.run_send_test(
                account_service.smtp_settings(form, account, timeout),
                from_address=form.email_address.data,
                from_name=form.from_name.data or "",
                to=form.test_to.data,
                account_label=form.friendly_name.data or form.email_address.data,
                account_id=account_id,
            )
        else:
            outcome = testing.run_read_test(
                account_service.read_settings(form, account, timeout),
                account_id=account_id,
            )

    if account is not None:
        testing.record_outcome(account, outcome)
    testing.audit_outcome(outcome, account, label=form.email_address.data)
    db.session.commit()

    if wants_fragment():
        return render_template(
            "accounts/_test_result.html", outcome=outcome, form=form, oob_folders=True
        )
    return _render_form(scope, account, form, outcome=outcome)


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
        outcome=outcome,
        breadcrumbs=scope.breadcrumbs((context["title"], None)),
    )


def _summary(account: EmailAccount) -> str:
    read = account.settings.get("read") or {}
    if read.get("protocol"):
        return f"Internet (SMTP/{read['protocol'].upper()})"
    return "Internet (SMTP)"


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
        order=40,
    )
)
