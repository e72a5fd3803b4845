"""Who is signed in, and the decorators that check who may reach a view."""

from functools import wraps

from flask import abort
from flask_login import current_user, login_required

from ..extensions import db
from ..models import StaffMember


def load_staff_member(user_id: str) -> StaffMember | None:
    if not user_id.isdigit():
        return None
    return db.session.get(StaffMember, int(user_id))


def admin_required(view):
    """Let only signed-in administrators reach ``view``; others get 403."""

    @wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not current_user.is_administrator:
            abort(403)
        return view(*args, **kwargs)

    return wrapped
