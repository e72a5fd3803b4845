"""Page steps every account type shares: the context of an account's page and
the response after a save."""

import logging
from collections.abc import Callable

from flask import current_app, flash, redirect, url_for
from flask_htmx import make_response
from flask_login import current_user

from ..models import EmailAccount
from ..services.access import Security
from ..templating import wants_fragment
from .scope import AccountScope

log = logging.getLogger(__name__)


def page_context(
    scope: AccountScope, account: EmailAccount | None, type_key: str, type_label: str
) -> dict:
    """Return the title, form URL and, for a saved account's full page, the
    extra panels of its scope (such as the access panel of a global account)."""
    context = {}
    if account is not None and scope.edit_context and not wants_fragment():
        context = scope.edit_context(account)
    if account is None:
        context["title"] = f"New {type_label} account"
        context["action_url"] = scope.url("create_account", type_key=type_key)
    else:
        context["title"] = account.friendly_name
        context["action_url"] = scope.url("edit_account", account_id=account.id)
    context["account"] = account
    return context


TEST_NOT_RUN = "The test did not run. Correct the fields marked below."


def form_with_errors(form, render: Callable[[], str], message: str = TEST_NOT_RUN):
    """Return the whole form with ``message`` above its field errors.

    A test's result normally replaces only its result panel, so an htmx
    request is retargeted at the form: field errors belong beside the fields.
    """
    form.form_errors.append(message)
    page = render()
    if wants_fragment():
        return make_response(page, retarget="#account-form", reswap="outerHTML")
    return page


def saved_response(scope: AccountScope, account: EmailAccount, created: bool):
    """Log and confirm a save, then go to the list, or to the access panel of a
    new global account that only chosen staff may use."""
    log.info(
        "%s account %s %s by staff member %s",
        account.account_type,
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


def external_url(endpoint: str, **values) -> str:
    """Return the absolute URL of ``endpoint``, such as a sign-in redirect URI.

    PUBLIC_URL wins when set, because behind a proxy the request's own host
    may not be the address registered with Microsoft or Google.
    """
    public = current_app.config.get("PUBLIC_URL", "")
    if public:
        return public + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)
