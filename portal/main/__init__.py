from flask import Blueprint, redirect, url_for
from flask_login import current_user, login_required

bp = Blueprint("main", __name__)


@bp.route("/")
@login_required
def index():
    if current_user.is_administrator:
        return redirect(url_for("admin.list_accounts"))
    return redirect(url_for("personal.list_accounts"))
