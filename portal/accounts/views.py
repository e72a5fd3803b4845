"""Views for listing, creating, editing, testing and deleting accounts."""

import logging

from flask import Blueprint, abort, flash, redirect, render_template, request
from flask_login import current_user

from ..extensions import db
from ..services import account_uses, preferences
from ..services import accounts as account_service
from ..services.access import MODULE_LABELS
from ..templating import wants_fragment
from . import kinds, types
from .scope import CREATION_DISABLED, AccountScope

log = logging.getLogger(__name__)


def register_account_views(
    bp: Blueprint, scope: AccountScope, prefix: str = "/accounts"
) -> None:
    """Add the account pages to ``bp``, each guarded by ``scope.guard``."""
    kinds.load_all()

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
            notices=[
                notice
                for account_type in types.all_types()
                if account_type.notices
                for notice in account_type.notices(scope)
            ],
            breadcrumbs=scope.breadcrumbs(),
            **_sending_choices(scope),
        )

    def choose_account_type():
        if not scope.may_create():
            abort(403, description=CREATION_DISABLED)
        return render_template(
            "accounts/choose_account_type.html",
            scope=scope,
            choices=[(item, item.availability(scope)) for item in types.all_types()],
            breadcrumbs=scope.breadcrumbs(("New account", None)),
        )

    def create_account(type_key: str):
        if not scope.may_create():
            abort(403, description=CREATION_DISABLED)
        account_type = types.get(type_key)
        if account_type is None:
            abort(404)
        availability = account_type.availability(scope)
        if not availability.enabled:
            abort(403, description=availability.reason)
        return account_type.view(scope, None)

    def edit_account(account_id: int):
        account = scope.get_account(account_id)
        account_type = types.get(account.account_type)
        if account_type is None:
            abort(
                404,
                description=f"Accounts of type {account.account_type!r} cannot be edited here.",
            )
        return account_type.view(scope, account)

    def set_account_enabled(account_id: int):
        account = scope.get_account(account_id)
        enable = request.method == "POST" and request.form.get("enabled") == "1"
        if not enable:
            response = _confirm_uses(scope, account, "disable")
            if response is not None:
                return response

        account_service.set_enabled(account, enable)
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
        response = _confirm_uses(scope, account, "delete")
        if response is not None:
            return response

        name = account.friendly_name
        account_service.delete_account(account)
        db.session.commit()

        if wants_fragment():
            return ""  # htmx removes the row
        flash(f"Deleted {name}.", "success")
        return redirect(scope.url("list_accounts"))

    route("", list_accounts)
    route("/new", choose_account_type)
    route("/new/<type_key>", create_account, methods=("GET", "POST"))
    route("/<int:account_id>", edit_account, methods=("GET", "POST"))
    route("/<int:account_id>/enabled", set_account_enabled, methods=("GET", "POST"))
    route("/<int:account_id>/delete", delete_account, methods=("GET", "POST"))
    for account_type in types.all_types():
        if account_type.register_routes:
            account_type.register_routes(route, scope)


def _sending_choices(scope: AccountScope) -> dict:
    """The personal page also lists every account the staff member may send from."""
    if not scope.personal:
        return {}
    usable, default_id = preferences.sending_accounts(current_user.id)
    return {"usable_accounts": usable, "default_account_id": default_id}


def _confirm_uses(scope: AccountScope, account, action: str):
    """Ask before deleting or disabling an account, listing what uses it.

    Returns a response while confirmation is needed, or None once the request
    is confirmed (after moving the uses to the chosen replacement). A delete
    of an unused account posted from the grid needs no page: htmx asked.
    """
    uses = account_uses.find_uses(account)
    confirmed = request.method == "POST" and request.form.get("confirmed") == "1"
    quiet = (
        request.method == "POST"
        and not uses
        and (action == "disable" or wants_fragment())
    )
    if confirmed or quiet:
        raw = request.form.get("replacement_id", "")
        try:
            account_uses.move_uses(account, int(raw) if raw.isdigit() else None)
        except account_uses.ReplacementNotUsable as error:
            flash(str(error), "error")
            return redirect(_confirm_url(scope, account, action))
        return None

    if wants_fragment():
        # The grid asked for a quick change; send the browser to the page
        # that lists the uses instead.
        return "", 200, {"HX-Redirect": _confirm_url(scope, account, action)}
    return render_template(
        "accounts/confirm_account_change.html",
        scope=scope,
        account=account,
        action=action,
        uses=uses,
        module_labels=MODULE_LABELS,
        replacements=account_uses.replacement_choices(account)
        if uses.modules or uses.templates
        else [],
        form_url=_confirm_url(scope, account, action),
        breadcrumbs=scope.breadcrumbs((account.friendly_name, None)),
    )


def _confirm_url(scope: AccountScope, account, action: str) -> str:
    if action == "delete":
        return scope.url("delete_account", account_id=account.id)
    return scope.url("set_account_enabled", account_id=account.id, enabled="0")
