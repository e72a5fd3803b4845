"""Staff email settings beyond the account grid: the default sending account."""

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..extensions import db
from ..services import preferences
from ..templating import wants_fragment
from . import bp


@bp.post("/default-account")
@login_required
def set_default_account():
    raw = request.form.get("account_id", "")
    account_id = int(raw) if raw.isdigit() else None
    if raw and account_id is None:
        abort(400, description="Choose an account from the list.")

    try:
        preferences.set_default_account(current_user.id, account_id)
    except preferences.NotUsable:
        abort(403, description="You may not send from that account.")
    db.session.commit()

    if wants_fragment():
        usable, default_id = preferences.sending_accounts(current_user.id)
        return render_template(
            "accounts/_sending_accounts.html",
            usable_accounts=usable,
            default_account_id=default_id,
            saved=True,
        )
    flash("Saved your default sending account.", "success")
    return redirect(url_for("personal.list_accounts"))
