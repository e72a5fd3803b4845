"""A staff member's own settings beside the account grid: default account, password."""

import logging

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import PasswordField
from wtforms.validators import DataRequired, EqualTo, Length

from ..extensions import db
from ..services import audit, preferences
from ..templating import wants_fragment
from . import bp

log = logging.getLogger(__name__)


@bp.post("/email/default-account")
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


class ChangePasswordForm(FlaskForm):
    current_password = PasswordField(
        "Current password",
        validators=[DataRequired(message="Enter your current password.")],
    )
    new_password = PasswordField(
        "New password",
        validators=[
            DataRequired(message="Enter a new password."),
            Length(min=8, max=1024, message="Use 8 to 1,024 characters."),
        ],
    )
    confirm_password = PasswordField(
        "Repeat the new password",
        validators=[EqualTo("new_password", message="The two new passwords differ.")],
    )


@bp.route("/password", methods=["GET", "POST"], endpoint="change_password")
@login_required
def change_password():
    form = ChangePasswordForm()
    if form.validate_on_submit():
        if not current_user.check_password(form.current_password.data):
            form.current_password.errors.append("The current password is incorrect.")
        else:
            current_user.set_password(form.new_password.data)
            audit.record(
                "staff.password",
                object_type="staff",
                object_id=current_user.id,
                label=current_user.username,
                changes={"password": audit.SECRET_MARK},
            )
            db.session.commit()
            log.info("Staff member %s changed their password", current_user.id)
            flash("Your password is changed.", "success")
            return redirect(url_for("personal.list_accounts"))
    return render_template(
        "personal/change_password.html",
        form=form,
        breadcrumbs=[("My preferences", None), ("Password", None)],
    )
