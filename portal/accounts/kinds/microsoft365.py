"""The Microsoft 365 account type: mailbox search and pick, sign-in, tests, save.

A global account is made by searching the tenant's directory, picking a
mailbox, testing and naming it. A personal account is made by the staff
member's own Microsoft sign-in. Both send through Microsoft Graph.
"""

import logging
from dataclasses import dataclass

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from markupsafe import Markup
from wtforms import EmailField, HiddenField

from ... import ratelimits, validation
from ...extensions import db
from ...integrations import microsoft
from ...integrations import microsoft_mailboxes as mailboxes
from ...models import EmailAccount
from ...services import accounts as account_service
from ...services import testing
from ...templating import render_page_or_fragment, wants_fragment
from ...transports.base import TransportError
from .. import concurrency, mail_sign_in, pages, types
from ..forms import AccountForm, normalised_by
from ..scope import AccountScope

log = logging.getLogger(__name__)

KEY = microsoft.KIND
LABEL = "Microsoft 365"
PAGE_TEMPLATE = "accounts/microsoft365/_account_page.html"
FORM_TEMPLATE = "accounts/microsoft365/_account_form.html"
CONNECT_TEMPLATE = "accounts/microsoft365/_connect_form.html"
RESULTS_TEMPLATE = "accounts/microsoft365/_mailbox_results.html"
# The stored values that a rejected save names when another save changed them.
COMPARED_FIELDS = (
    "mailbox",
    "send_as",
    "friendly_name",
    "description",
    "from_name",
    "enabled",
)


class Microsoft365AccountForm(AccountForm):
    """The mailbox (filled in by picking it), the Send as address and the shared steps."""

    user_id = HiddenField()
    mailbox = HiddenField("Mailbox")
    display_name = HiddenField()
    user_principal_name = HiddenField()
    shared = HiddenField()
    send_as = EmailField(
        "Send as address",
        validators=[normalised_by(validation.normalise_email)],
    )

    def fill_from_user(self, user) -> None:
        self.user_id.data = user.id
        self.mailbox.data = user.mail
        self.display_name.data = user.display_name
        self.user_principal_name.data = user.user_principal_name
        self.shared.data = "1" if user.shared_mailbox else ""

    def validate_mailbox(self) -> bool:
        ok = self.send_as.validate(self)
        if not self.user_id.data or not self.mailbox.data:
            self.form_errors.append(
                "Choose the mailbox first: search for it and pick it."
            )
            return False
        return ok

    def mailbox_settings(self) -> dict:
        return {
            "user_id": self.user_id.data,
            "mailbox": self.mailbox.data,
            "send_as": self.send_as.data or "",
        }


class ConnectForm(AccountForm):
    address = EmailField(
        "Mailbox address", validators=[normalised_by(validation.normalise_email)]
    )


# -- the type's page ------------------------------------------------------------


def microsoft365_account_view(scope: AccountScope, account: EmailAccount | None):
    """Show, test or save a Microsoft 365 account; ``action`` names the button pressed.

    Global accounts: GET with ``q`` searches, with ``pick`` fills in a mailbox;
    POST runs test-send, test-read or save. Personal accounts: POST ``connect``
    or ``reconnect`` sends the staff member to Microsoft's sign-in.
    """
    if scope.personal:
        return _personal_view(scope, account)
    return _global_view(scope, account)


def _global_view(scope: AccountScope, account: EmailAccount | None):
    if request.method == "GET":
        form = Microsoft365AccountForm(data=_initial(account))
        form.test_to.data = form.test_to.data or current_user.email
        search, pick_error = _search_from_query(form, account)
        return _render_form(
            scope,
            account,
            form,
            search=search,
            pick_error=pick_error,
            stamp_values=_stored_values(account),
        )

    form = Microsoft365AccountForm()
    action = request.form.get("action", "save")
    if action in ("test-send", "test-read"):
        return _run_test(scope, account, form, action)

    valid = form.validate_mailbox()
    valid = (
        form.validate_names(include_security=scope.chooses_security(account)) and valid
    )
    if not valid:
        form.form_errors.append(
            "The account was not saved. Correct the fields marked below."
        )
        return _render_form(scope, account, form)
    if account is not None:
        stored_values = _stored_values(account)
        if concurrency.reject_if_stale(account, form, stored_values):
            return _render_form(scope, account, form, stamp_values=stored_values)

    created = account is None
    name = form.friendly_name.data
    if account_service.friendly_name_taken(None, name, account.id if account else None):
        form.friendly_name.errors.append(
            f"Another global account is already named {name!r}. Choose another name."
        )
        return _render_form(scope, account, form)
    if account is None:
        account = EmailAccount(account_type=KEY, owner_id=None)
        db.session.add(account)
    else:
        account.version += 1
    _save_common(account, form)
    account.email_address = form.send_as.data or form.mailbox.data
    account.settings = {
        "user_id": form.user_id.data,
        "mailbox": form.mailbox.data,
        "display_name": form.display_name.data or "",
        "user_principal_name": form.user_principal_name.data or "",
        "shared": form.shared.data == "1",
        "send_as": form.send_as.data or "",
        # Graph reads any mailbox of the tenant, so every global account can be read.
        "read": {"protocol": "graph", "folder": "inbox"},
    }
    if scope.chooses_security(account if not created else None):
        account.security = form.security.data
    db.session.commit()
    return pages.saved_response(scope, account, created)


def _personal_view(scope: AccountScope, account: EmailAccount | None):
    if request.method == "GET":
        if account is None:
            form = ConnectForm(data={"address": current_user.email})
            return _render_connect(scope, form)
        form = Microsoft365AccountForm(data=_initial(account))
        form.test_to.data = form.test_to.data or current_user.email
        return _render_form(scope, account, form, stamp_values=_stored_values(account))

    action = request.form.get("action", "save")
    if account is None:
        form = ConnectForm()
        if not form.address.validate(form) or not form.address.data:
            if not form.address.errors:
                form.address.errors.append(
                    "Enter the address of the mailbox to connect."
                )
            return _render_connect(scope, form)
        return _start_sign_in(scope, mailboxes.CONNECT, form.address.data)

    if action == "reconnect":
        return _start_sign_in(
            scope, mailboxes.RECONNECT, mailboxes.mailbox_address(account), account.id
        )

    form = Microsoft365AccountForm(data=_initial(account), formdata=request.form)
    # The mailbox of a personal account is the one signed in to; the form does not change it.
    form.user_id.data = account.settings.get("user_id", "")
    form.mailbox.data = mailboxes.mailbox_address(account)
    form.send_as.data = ""
    if action == "test-send":
        return _run_test(scope, account, form, action)

    if not form.validate_names():
        form.form_errors.append(
            "The account was not saved. Correct the fields marked below."
        )
        return _render_form(scope, account, form)
    stored_values = _stored_values(account)
    if concurrency.reject_if_stale(account, form, stored_values):
        return _render_form(scope, account, form, stamp_values=stored_values)
    name = form.friendly_name.data
    if account_service.friendly_name_taken(account.owner_id, name, account.id):
        form.friendly_name.errors.append(
            f"Another account among your accounts is already named {name!r}. Choose another name."
        )
        return _render_form(scope, account, form)
    account.version += 1
    _save_common(account, form)
    db.session.commit()
    return pages.saved_response(scope, account, created=False)


def _start_sign_in(scope, purpose: str, address: str, account_id: int | None = None):
    try:
        url = mailboxes.start_sign_in(
            purpose=purpose,
            address=address,
            redirect_uri=pages.external_url(
                scope.endpoint("microsoft365_sign_in_callback")
            ),
            account_id=account_id,
        )
    except TransportError as error:
        flash(f"{error.summary} {error.advice}", "error")
        return redirect(scope.url("list_accounts"))
    return redirect(url)


def _save_common(account: EmailAccount, form) -> None:
    account.friendly_name = form.friendly_name.data
    account.description = form.description.data or ""
    account.from_name = form.from_name.data or ""
    account.enabled = bool(form.enabled.data)


def _initial(account: EmailAccount | None) -> dict:
    if account is None:
        return {}
    settings = account.settings
    return {
        "user_id": settings.get("user_id", ""),
        "mailbox": mailboxes.mailbox_address(account),
        "display_name": settings.get("display_name", ""),
        "user_principal_name": settings.get("user_principal_name", ""),
        "shared": "1" if settings.get("shared") else "",
        "send_as": settings.get("send_as", ""),
        "friendly_name": account.friendly_name,
        "description": account.description,
        "from_name": account.from_name,
        "enabled": account.enabled,
    }


def _stored_values(account: EmailAccount | None) -> dict:
    initial = _initial(account)
    return {name: initial[name] for name in COMPARED_FIELDS if name in initial}


def _search_from_query(form, account):
    """Run the search or the pick named in the query string (pages without htmx)."""
    pick = request.args.get("pick", "").strip()
    if pick:
        try:
            user = microsoft.lookup_user(pick)
        except TransportError as error:
            return None, error
        form.fill_from_user(user)
        if account is None:
            form.friendly_name.data = form.friendly_name.data or user.display_name
            form.from_name.data = form.from_name.data or user.display_name
        return None, None
    query = request.args.get("q", "").strip()
    if query or request.args.get("next"):
        return microsoft.search_mailboxes(query, request.args.get("next", "")), None
    return None, None


def _run_test(scope, account, form, action: str):
    valid = form.validate_mailbox()
    if action == "test-send":
        valid = form.validate_test_destination() and valid
    if not valid:
        return pages.form_with_errors(form, lambda: _render_form(scope, account, form))

    ratelimits.consume_test(
        current_user.id, str(account.id) if account else f"new:{form.mailbox.data}"
    )
    if action == "test-send":
        outcome = mailboxes.run_send_test(
            account,
            settings=form.mailbox_settings(),
            to=form.test_to.data,
            from_name=form.from_name.data or "",
            account_label=form.friendly_name.data or form.mailbox.data,
        )
    else:
        outcome = mailboxes.run_read_test(account, settings=form.mailbox_settings())

    if account is not None:
        testing.record_outcome(account, outcome)
        db.session.commit()
    if wants_fragment():
        return render_template("accounts/_test_result.html", outcome=outcome, form=form)
    return _render_form(scope, account, form, outcome=outcome)


def _render_form(
    scope,
    account,
    form,
    outcome=None,
    search=None,
    pick_error=None,
    stamp_values: dict | None = None,
):
    context = pages.page_context(scope, account, KEY, LABEL)
    return render_page_or_fragment(
        "accounts/edit_account.html",
        FORM_TEMPLATE,
        form_template=PAGE_TEMPLATE,
        type_label=LABEL,
        **context,
        scope=scope,
        form=form,
        **concurrency.form_fields(account, stamp_values),
        outcome=outcome,
        mailbox_search=search,
        pick_error=pick_error,
        show_search=not scope.personal
        and (
            not form.user_id.data
            or bool(request.args.get("change"))
            or search is not None
        ),
        reconnect_needed=account is not None and mailboxes.reconnect_needed(account),
        choose_security=scope.chooses_security(account),
        can_read=not scope.personal,
        page_url=context["action_url"],
        breadcrumbs=scope.breadcrumbs((context["title"], None)),
    )


def _render_connect(scope, form):
    title = f"Connect a {LABEL} mailbox"
    return render_template(
        "accounts/edit_account.html",
        form_template=CONNECT_TEMPLATE,
        type_label=LABEL,
        account=None,
        scope=scope,
        form=form,
        title=title,
        action_url=scope.url("create_account", type_key=KEY),
        breadcrumbs=scope.breadcrumbs((title, None)),
    )


# -- extra routes ---------------------------------------------------------------


def search_mailboxes(scope: AccountScope):
    """Render the search results fragment; with ``account_id`` the picks edit that account."""
    query = request.args.get("q", "").strip()
    next_link = request.args.get("next", "")
    account_id = request.args.get("account_id", "")
    result = None
    if query or next_link:
        result = microsoft.search_mailboxes(query, next_link)
    if account_id.isdigit():
        page_url = scope.url("edit_account", account_id=int(account_id))
    else:
        page_url = scope.url("create_account", type_key=KEY)
    return render_template(
        RESULTS_TEMPLATE,
        mailbox_search=result,
        page_url=page_url,
        scope=scope,
        account_id=account_id if account_id.isdigit() else "",
        more=bool(next_link),
    )


def sign_in_callback(scope: AccountScope):
    """Finish a staff member's Microsoft sign-in: connect, reconnect or convert."""
    if mail_sign_in.owns_callback():
        return mail_sign_in.finish()
    try:
        signed_in = mailboxes.finish_sign_in(request.args)
        account = None
        if signed_in.purpose == mailboxes.CONNECT:
            if not scope.may_create():
                abort(403)
            account = mailboxes.connect_personal_account(signed_in, current_user.id)
            message = f"Connected {account.email_address}. Send a test message, then check the names."
        else:
            account = scope.get_account(signed_in.account_id or 0)
            if signed_in.purpose == mailboxes.RECONNECT and account.account_type == KEY:
                mailboxes.reconnect_account(account, signed_in)
                message = f"Reconnected {mailboxes.mailbox_address(account)}."
            elif signed_in.purpose == mailboxes.CONVERT and mailboxes.microsoft365_host(
                account
            ):
                mailboxes.convert_account(account, signed_in=signed_in)
                message = f"{account.friendly_name} is now a Microsoft 365 account. Send a test message to check it."
            else:
                abort(400, description="This account cannot be connected that way.")
    except mailboxes.SignInRefused as refusal:
        # Every refusal comes before any change, so this commits only the
        # audit record of a refused identity.
        db.session.commit()
        flash(f"{refusal.message} {refusal.advice}".strip(), "error")
        return redirect(scope.url("list_accounts"))

    db.session.commit()
    log.info(
        "Microsoft sign-in (%s) finished for account %s", signed_in.purpose, account.id
    )
    flash(message, "success")
    return redirect(scope.url("edit_account", account_id=account.id))


def convert_to_microsoft365(scope: AccountScope, account_id: int):
    """Convert an Internet account on a Microsoft 365 host in one step."""
    account = scope.get_account(account_id)
    if not mailboxes.microsoft365_host(account):
        abort(
            400,
            description="Only an Internet account whose server is Microsoft 365 can be converted.",
        )
    if not microsoft.is_connected():
        flash(
            f"{microsoft.not_connected_error().summary} {microsoft.not_connected_error().advice}",
            "error",
        )
        return redirect(scope.url("edit_account", account_id=account.id))
    if scope.personal:
        return _start_sign_in(
            scope, mailboxes.CONVERT, account.email_address, account.id
        )

    try:
        user = microsoft.find_user(account.email_address)
    except TransportError as error:
        flash(f"{error.summary} {error.advice}", "error")
        return redirect(scope.url("edit_account", account_id=account.id))
    if user is None or not user.mail:
        flash(
            f"No mailbox with the address {account.email_address} was found in the "
            "Microsoft 365 tenant, so the account was not converted. Check the "
            "address, or create a Microsoft 365 account with Search instead.",
            "error",
        )
        return redirect(scope.url("edit_account", account_id=account.id))
    mailboxes.convert_account(account, user=user)
    db.session.commit()
    flash(
        f"{account.friendly_name} is now a Microsoft 365 account. Send a test message to check it.",
        "success",
    )
    return redirect(scope.url("edit_account", account_id=account.id))


def register_routes(route, scope: AccountScope) -> None:
    def convert_account_to_microsoft365(account_id: int):
        return convert_to_microsoft365(scope, account_id)

    route(
        "/<int:account_id>/convert-to-microsoft365",
        convert_account_to_microsoft365,
        methods=("POST",),
    )
    if scope.personal:

        def microsoft365_sign_in_callback():
            return sign_in_callback(scope)

        route("/microsoft365/callback", microsoft365_sign_in_callback)
    else:

        def search_microsoft365_mailboxes():
            return search_mailboxes(scope)

        route("/microsoft365/mailboxes", search_microsoft365_mailboxes)


# -- registration -----------------------------------------------------------------


def availability(scope: AccountScope) -> types.Availability:
    if microsoft.is_connected():
        return types.ALWAYS
    if scope.personal:
        return types.Availability(
            False,
            "An administrator has not connected the organisation's Microsoft 365 "
            "tenant to this portal yet.",
        )
    return types.Availability(
        False,
        "Connect the Microsoft 365 tenant first.",
        url_for("admin.edit_microsoft365_integration"),
        "Open Integrations › Microsoft 365",
    )


@dataclass(frozen=True)
class ConvertOffer:
    host: str
    enabled: bool
    reason: str = ""
    fix_url: str = ""
    fix_label: str = ""


def convert_offer(
    scope: AccountScope, account: EmailAccount | None
) -> ConvertOffer | None:
    """Return the warning and Convert offer of a saved Internet account on a
    Microsoft 365 host that signs in with a password."""
    host = mailboxes.microsoft365_host(account) if account is not None else ""
    if not host or account_service.oauth_provider(
        (account.settings.get("smtp") or {}).get("auth")
    ):
        return None
    available = availability(scope)
    return ConvertOffer(
        host,
        available.enabled,
        available.reason,
        available.fix_url,
        available.fix_label,
    )


def summary(account: EmailAccount) -> str:
    """Describe the account in the Type column; a lost sign-in adds a Reconnect button.

    Returns markup, because the grid shows the button inside the cell.
    """
    label = LABEL + (" (shared mailbox)" if account.settings.get("shared") else "")
    if not mailboxes.reconnect_needed(account):
        return label
    if not account.is_personal:
        return Markup(
            '{} <span class="status status-failed">Reconnect needed</span>'
        ).format(label)
    # The template escapes every value it inserts, so its output is safe markup.
    cell = render_template(
        "accounts/microsoft365/_reconnect_cell.html", account=account, label=label
    )
    return Markup(cell)  # noqa: S704


def notices(scope: AccountScope) -> list[str]:
    if scope.personal:
        return []
    notice = microsoft.expiry_notice()
    return [notice.message] if notice else []


types.register(
    types.AccountType(
        key=KEY,
        label=LABEL,
        description=(
            "A mailbox in your organisation's Microsoft 365 tenant, reached through "
            "Microsoft Graph. Search for the mailbox and pick it; no password is stored."
        ),
        view=microsoft365_account_view,
        availability=availability,
        summary=summary,
        register_routes=register_routes,
        notices=notices,
        order=10,
    )
)
