"""Views for listing, creating, editing, testing and deleting accounts."""

import logging

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
)
from flask_htmx import make_response
from flask_login import current_user

from .. import crypto
from ..extensions import db
from ..models import EmailAccount
from ..services import accounts as account_service
from ..services import preferences, testing
from ..services.access import Security
from ..templating import render_page_or_fragment, wants_fragment
from .forms import InternetAccountForm
from .scope import CREATION_DISABLED, AccountScope

log = logging.getLogger(__name__)

SECRET_FIELDS = ("smtp_password", "read_password")


def register_account_views(
    bp: Blueprint, scope: AccountScope, prefix: str = "/accounts"
) -> None:
    """Add the account pages to ``bp``, each guarded by ``scope.guard``."""

    def route(rule: str, view, methods=("GET",)):
        bp.add_url_rule(
            prefix + rule,
            endpoint=view.__name__,
            view_func=scope.guard(view),
            methods=list(methods),
        )

    def list_accounts():
        accounts = account_service.list_accounts(scope.owner_id())
        return render_template(
            "accounts/list_accounts.html",
            scope=scope,
            accounts=accounts,
            may_create=scope.may_create(),
            creation_disabled=CREATION_DISABLED,
            breadcrumbs=scope.breadcrumbs(),
            **_sending_choices(scope),
        )

    def choose_account_type():
        if not scope.may_create():
            abort(403, description=CREATION_DISABLED)
        return render_template(
            "accounts/choose_account_type.html",
            scope=scope,
            breadcrumbs=scope.breadcrumbs(("New account", None)),
        )

    def create_account():
        if not scope.may_create():
            abort(403, description=CREATION_DISABLED)
        return _account_form_view(scope, None)

    def edit_account(account_id: int):
        return _account_form_view(scope, scope.get_account(account_id))

    def set_account_enabled(account_id: int):
        account = scope.get_account(account_id)
        account_service.set_enabled(account, request.form.get("enabled") == "1")
        db.session.commit()

        if wants_fragment():
            return render_template(
                "accounts/_account_row.html", scope=scope, account=account
            )
        state = "enabled" if account.enabled else "disabled"
        flash(f"{account.friendly_name} is {state}.", "success")
        return redirect(scope.url("list_accounts"))

    def delete_account(account_id: int):
        account = scope.get_account(account_id)
        if request.method == "GET":
            return render_template(
                "accounts/delete_account.html",
                scope=scope,
                account=account,
                breadcrumbs=scope.breadcrumbs((account.friendly_name, None)),
            )

        name = account.friendly_name
        account_service.delete_account(account)
        db.session.commit()

        if wants_fragment():
            return ""  # htmx removes the row
        flash(f"Deleted {name}.", "success")
        return redirect(scope.url("list_accounts"))

    route("", list_accounts)
    route("/new", choose_account_type)
    route("/new/internet", create_account, methods=("GET", "POST"))
    route("/<int:account_id>", edit_account, methods=("GET", "POST"))
    route("/<int:account_id>/enabled", set_account_enabled, methods=("POST",))
    route("/<int:account_id>/delete", delete_account, methods=("GET", "POST"))


def _account_form_view(scope: AccountScope, account: EmailAccount | None):
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
        return _render_form(scope, account, form)

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

    created = account is None
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
    db.session.commit()

    log.info(
        "Account %s %s by staff member %s",
        account.id,
        "created" if created else "updated",
        current_user.id,
    )
    flash(f"{'Created' if created else 'Saved'} {account.friendly_name}.", "success")
    if created and account.security == Security.PERMISSIONS and not account.is_personal:
        flash(
            "Now choose the skillgroups, roles and staff members who may use it.",
            "info",
        )
        return redirect(scope.url("edit_account", account_id=account.id) + "#access")
    return redirect(scope.url("list_accounts"))


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
            account_service.read_settings(form, account, timeout), account_id=account_id
        )

    if account is not None:
        testing.record_outcome(account, outcome)
        db.session.commit()

    if wants_fragment():
        return render_template(
            "accounts/_test_result.html", outcome=outcome, form=form, oob_folders=True
        )
    return _render_form(scope, account, form, outcome=outcome)


def _sending_choices(scope: AccountScope) -> dict:
    """The personal page also lists every account the staff member may send from."""
    if not scope.personal:
        return {}
    usable, default_id = preferences.sending_accounts(current_user.id)
    return {"usable_accounts": usable, "default_account_id": default_id}


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
):
    sealed = {
        name: crypto.seal(value, current_user.id)
        for name, value in form.typed_secrets.items()
        if value
    }
    if account is None:
        title = "New Internet (SMTP/IMAP) account"
        action_url = scope.url("create_account")
    else:
        title = account.friendly_name
        action_url = scope.url("edit_account", account_id=account.id)
    context = {}
    if account is not None and scope.edit_context and not wants_fragment():
        context = scope.edit_context(account)
    context["account"] = account
    return render_page_or_fragment(
        "accounts/edit_account.html",
        "accounts/_account_form.html",
        **context,
        scope=scope,
        form=form,
        sealed=sealed,
        choose_security=scope.chooses_security(account),
        outcome=outcome,
        title=title,
        action_url=action_url,
        breadcrumbs=scope.breadcrumbs((title, None)),
    )
