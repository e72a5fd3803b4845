"""The Modules page: which email account each helpdesk module sends from.

Each module is a component that saves as soon as its drop-down changes and
swaps itself in again. Without JavaScript, its Save button submits the same
form and the page reloads.
"""

import logging

from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from wtforms import SelectChoice, SelectField

from ..auth.session import admin_required
from ..extensions import db
from ..services import modules
from ..services.access import Module
from ..services.modules import ModuleSetting
from ..templating import wants_fragment
from . import bp

log = logging.getLogger(__name__)

MODULE_HELP = {
    Module.EMAIL_MANAGER: "Reads incoming mail and turns it into jobs.",
    Module.PRIORITY_MANAGER: "Sends notifications about job priorities.",
    Module.AUTOMATION_SERVICE: (
        "Sends notifications, and by default sends the messages made from "
        "email templates."
    ),
    Module.WEB_PORTAL: "Sends the outgoing mail of the customer-facing site.",
}


class ModuleAccountForm(FlaskForm):
    """The account of one module. The form's prefix is the module's name."""

    # The view checks the submitted id against the usage rule, so that an id
    # that was never offered is rejected with 403, not a form error.
    account_id = SelectField("Sends from", choices=[], validate_choice=False)


def _form(setting: ModuleSetting) -> ModuleAccountForm:
    """Return the module's form showing the saved account, not the request's."""
    selected = str(setting.assigned.id) if setting.usable else ""
    form = ModuleAccountForm(
        formdata=None, prefix=str(setting.module), account_id=selected
    )
    form.account_id.choices = [SelectChoice("", "No account")] + [
        SelectChoice(str(row.id), f"{row.friendly_name} <{row.email_address}>")
        for row in setting.choices
    ]
    return form


def _sending_module(module_name: str) -> Module:
    if module_name not in {str(module) for module in modules.SENDING_MODULES}:
        abort(404)
    return Module(module_name)


@bp.get("/modules")
@admin_required
def list_modules():
    settings = modules.list_settings()
    return render_template(
        "admin/list_modules.html",
        rows=[(setting, _form(setting)) for setting in settings],
        module_help=MODULE_HELP,
        breadcrumbs=[
            ("Administration", None),
            ("System administration", None),
            ("Modules", None),
        ],
    )


@bp.post("/modules/<module_name>")
@admin_required
def assign_module_account(module_name: str):
    module = _sending_module(module_name)
    submitted = ModuleAccountForm(prefix=str(module)).account_id.data
    if submitted is None or not (submitted == "" or submitted.isdigit()):
        abort(400, "Choose an account from the list.")
    account_id = int(submitted) if submitted else None

    try:
        previous = modules.assign(module, account_id)
        db.session.commit()
    except modules.AccountNotUsable as error:
        db.session.rollback()
        log.warning(
            "Rejected staff member %s assigning account %s to module %s, because "
            "the usage rule does not allow it",
            current_user.id,
            account_id,
            module,
        )
        abort(403, str(error))
    except IntegrityError as error:
        # Another request assigned this module first, or deleted the account.
        db.session.rollback()
        log.warning(
            "Assigning account %s to module %s failed: %s", account_id, module, error
        )
        return _respond(module, error="The account could not be saved. Try again.")

    if previous != account_id:
        log.info(
            "Staff member %s set the account of module %s to %s (was %s)",
            current_user.id,
            module,
            account_id,
            previous,
        )
    return _respond(module, saved=True)


def _respond(module: Module, saved: bool = False, error: str = ""):
    """Return the module's component to htmx, or reload the page without it."""
    setting = modules.setting_for(module)
    if wants_fragment():
        return render_template(
            "admin/_module_row.html",
            setting=setting,
            form=_form(setting),
            module_help=MODULE_HELP,
            saved=saved,
            error=error,
        )

    if error:
        flash(error, "error")
    elif setting.usable:
        account = setting.assigned
        flash(
            f"The {setting.label} now sends from {account.friendly_name} "
            f"({account.email_address}).",
            "success",
        )
    else:
        flash(f"The {setting.label} now has no account and sends no mail.", "success")
    return redirect(url_for("admin.list_modules") + f"#module-{module}")
