import logging
from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import func, select

from .. import ratelimits
from ..extensions import db
from ..models import StaffMember
from ..services import audit
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
        keys = (
            ("SIGN_IN_LIMIT", "sign-in-user", username.lower()[:64]),
            ("SIGN_IN_ADDRESS_LIMIT", "sign-in-address", request.remote_addr or ""),
        )
        wait = max(ratelimits.seconds_until_allowed(key, *ids) for key, *ids in keys)
        if wait:
            log.warning(
                "Sign-in for %r from %s refused by the rate limit",
                username[:64],
                request.remote_addr,
            )
            audit.record(
                "sign-in",
                object_type="staff",
                label=username[:64],
                outcome=audit.DENIED,
                detail="rate limited",
            )
            db.session.commit()
            form.form_errors.append(
                f"Too many failed sign-ins. Try again in {ratelimits.describe_wait(wait)}."
            )
            return render_template("auth/sign_in.html", form=form), 429
        staff = db.session.scalar(
            select(StaffMember).where(
                func.lower(StaffMember.username) == username.lower()
            )
        )
        if staff and staff.active and staff.check_password(form.password.data):
            session.clear()  # a fresh session, so a planted one cannot be reused
            login_user(staff)
            log.info("Staff member %s signed in from %s", staff.id, request.remote_addr)
            audit.record(
                "sign-in",
                object_type="staff",
                object_id=staff.id,
                label=staff.username,
                staff=staff,
            )
            db.session.commit()
            return redirect(_safe_next(request.args.get("next")))

        for key, *ids in keys:
            ratelimits.hit(key, *ids)
        audit.record(
            "sign-in", object_type="staff", label=username[:64], outcome=audit.FAILURE
        )
        db.session.commit()

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
        audit.record(
            "sign-out",
            object_type="staff",
            object_id=current_user.id,
            label=current_user.username,
        )
        db.session.commit()
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
