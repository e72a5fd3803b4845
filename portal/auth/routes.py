import logging
from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import func, select

from ..extensions import db
from ..models import StaffMember
from . import bp
from .forms import SignInForm

log = logging.getLogger(__name__)

# One message for every failure, so a failed sign-in reveals neither whether
# the user name exists nor which field was wrong.
SIGN_IN_FAILED = "The user name or password is incorrect, or the account is disabled."


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))

    form = SignInForm()
    if form.validate_on_submit():
        username = form.username.data.strip()
        staff = db.session.scalar(
            select(StaffMember).where(
                func.lower(StaffMember.username) == username.lower()
            )
        )
        if staff and staff.active and staff.check_password(form.password.data):
            session.clear()  # a fresh session, so a planted one cannot be reused
            login_user(staff)
            log.info("Staff member %s signed in from %s", staff.id, request.remote_addr)
            return redirect(_safe_next(request.args.get("next")))

        log.info(
            "Failed sign-in for user name %r from %s",
            username[:64],
            request.remote_addr,
        )
        form.form_errors.append(SIGN_IN_FAILED)
        form.password.data = ""

    return render_template("auth/sign_in.html", form=form)


@bp.post("/sign-out")
def sign_out():
    if current_user.is_authenticated:
        log.info("Staff member %s signed out", current_user.id)
    logout_user()
    session.clear()
    flash("You have signed out.", "info")
    return redirect(url_for("auth.sign_in"))


def _safe_next(target: str | None) -> str:
    """Return ``target`` if it is a path on this site, else the home page."""
    if target:
        parts = urlsplit(target)
        if (
            not parts.scheme
            and not parts.netloc
            and target.startswith("/")
            and not target.startswith("//")
        ):
            return target
    return url_for("main.index")
