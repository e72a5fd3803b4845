"""Pages for the use of global accounts: security, permissions and access previews."""

from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy import func, or_, select

from ..auth.session import admin_required
from ..extensions import db
from ..models import EmailAccount, StaffMember
from ..services import access, grants
from ..services.settings import (
    ALLOW_PERSONAL_ACCOUNTS,
    personal_accounts_allowed,
    set_setting,
)
from ..templating import render_page_or_fragment, wants_fragment
from . import bp

PREVIEW_LIMIT = 50


def _global_account(account_id: int) -> EmailAccount:
    account = db.session.get(EmailAccount, account_id)
    if account is None or account.owner_id is not None:
        abort(404)
    return account


def access_panel_context(account: EmailAccount, search: str = "") -> dict:
    return {
        "account": account,
        "grants": grants.list_grants(account),
        "kinds": grants.KIND_LABELS,
        "preview": access.preview_access(account, search, PREVIEW_LIMIT),
        "search": search,
        "security_help": access.SECURITY_HELP,
        "security_choices": access.SECURITY_LABELS,
    }


def _panel_response(account: EmailAccount, error: str = ""):
    """Return the access panel for htmx, or redirect to the account page without JavaScript."""
    if wants_fragment():
        return render_template(
            "admin/_account_access.html", error=error, **access_panel_context(account)
        )
    if error:
        flash(error, "error")
    return redirect(url_for("admin.edit_account", account_id=account.id) + "#access")


@bp.post("/email-accounts/<int:account_id>/security")
@admin_required
def set_account_security(account_id: int):
    account = _global_account(account_id)
    try:
        grants.set_security(account, request.form.get("security", ""))
    except grants.GrantError as error:
        return _panel_response(account, str(error))
    db.session.commit()
    return _panel_response(account)


@bp.post("/email-accounts/<int:account_id>/grants")
@admin_required
def add_account_grant(account_id: int):
    account = _global_account(account_id)
    kind_value = request.form.get("kind", "")
    target = request.form.get("target_id", "")
    if kind_value not in set(grants.GrantKind) or not target.isdigit():
        return _panel_response(
            account,
            "Choose a skillgroup, role or staff member from the search results.",
        )

    try:
        grants.add_grant(account, grants.GrantKind(kind_value), int(target))
    except grants.GrantError as error:
        return _panel_response(account, str(error))
    db.session.commit()
    return _panel_response(account)


@bp.post("/email-accounts/<int:account_id>/grants/<int:grant_id>/delete")
@admin_required
def delete_account_grant(account_id: int, grant_id: int):
    account = _global_account(account_id)
    if not grants.remove_grant(account, grant_id):
        abort(404)
    db.session.commit()
    return _panel_response(account)


@bp.get("/email-accounts/<int:account_id>/grant-candidates")
@admin_required
def search_grant_candidates(account_id: int):
    account = _global_account(account_id)
    kind_value = request.args.get("kind", grants.GrantKind.SKILLGROUP)
    if kind_value not in set(grants.GrantKind):
        kind_value = grants.GrantKind.SKILLGROUP
    kind = grants.GrantKind(kind_value)
    text = request.args.get("q", "")[:100]

    candidates = grants.search_candidates(account, kind, text)
    return render_page_or_fragment(
        "admin/search_grant_candidates.html",
        "admin/_grant_candidates.html",
        account=account,
        kind=kind,
        kinds=grants.KIND_LABELS,
        text=text,
        candidates=candidates,
        breadcrumbs=_account_crumbs(account, "Add a permission"),
    )


@bp.get("/email-accounts/<int:account_id>/access-preview")
@admin_required
def preview_account_access(account_id: int):
    account = _global_account(account_id)
    search = request.args.get("q", "")[:100]
    return render_page_or_fragment(
        "admin/preview_account_access.html",
        "admin/_access_preview.html",
        breadcrumbs=_account_crumbs(account, "Who may use it"),
        **access_panel_context(account, search),
    )


def _account_crumbs(account: EmailAccount, label: str):
    return [
        ("Administration", None),
        ("System administration", None),
        ("Global email accounts", url_for("admin.list_accounts")),
        (account.friendly_name, url_for("admin.edit_account", account_id=account.id)),
        (label, None),
    ]


@bp.get("/staff-access")
@admin_required
def staff_access():
    """Show which accounts one staff member may send from, and why."""
    text = request.args.get("q", "")[:100].strip()
    staff_id = request.args.get("staff_id", "")
    matches = []
    if text:
        pattern = f"%{text.lower()}%"
        matches = list(
            db.session.scalars(
                select(StaffMember)
                .where(
                    or_(
                        func.lower(StaffMember.username).like(pattern),
                        func.lower(StaffMember.display_name).like(pattern),
                        func.lower(StaffMember.email).like(pattern),
                    )
                )
                .order_by(func.lower(StaffMember.display_name))
                .limit(20)
            )
        )
    chosen = db.session.get(StaffMember, int(staff_id)) if staff_id.isdigit() else None
    entries = access.explain_access(chosen.id) if chosen else []
    return render_page_or_fragment(
        "admin/staff_access.html",
        "admin/_staff_access_results.html",
        text=text,
        matches=matches,
        chosen=chosen,
        entries=entries,
        breadcrumbs=[
            ("Administration", None),
            ("System administration", None),
            ("Staff access", None),
        ],
    )


@bp.route("/settings/personal-accounts", methods=["GET", "POST"])
@admin_required
def personal_accounts_setting():
    if request.method == "POST":
        allowed = request.form.get("allowed") == "1"
        set_setting(ALLOW_PERSONAL_ACCOUNTS, "1" if allowed else "0")
        db.session.commit()
        if not wants_fragment():
            state = "may" if allowed else "may no longer"
            flash(f"Staff {state} create personal email accounts.", "success")
            return redirect(url_for("admin.personal_accounts_setting"))

    count = db.session.scalar(
        select(func.count(EmailAccount.id)).where(EmailAccount.owner_id.is_not(None))
    )
    return render_page_or_fragment(
        "admin/personal_accounts_setting.html",
        "admin/_personal_accounts_switch.html",
        allowed=personal_accounts_allowed(),
        count=count,
        saved=request.method == "POST",
        breadcrumbs=[
            ("Administration", None),
            ("System administration", None),
            ("Personal email accounts", None),
        ],
    )


@bp.get("/personal-accounts")
@admin_required
def list_personal_accounts():
    """List every staff member's personal accounts, as an overview. Only their owners use them."""
    rows = db.session.execute(
        select(EmailAccount, StaffMember)
        .join(StaffMember, StaffMember.id == EmailAccount.owner_id)
        .order_by(
            func.lower(StaffMember.display_name), func.lower(EmailAccount.friendly_name)
        )
    ).all()
    return render_template(
        "admin/list_personal_accounts.html",
        rows=rows,
        breadcrumbs=[
            ("Administration", None),
            ("System administration", None),
            ("Personal email accounts", url_for("admin.personal_accounts_setting")),
            ("All personal accounts", None),
        ],
    )
