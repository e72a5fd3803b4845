"""My preferences › Email: a staff member's own accounts."""

from flask import Blueprint
from flask_login import login_required

from ..accounts import AccountScope, register_account_views

bp = Blueprint("personal", __name__, url_prefix="/preferences")

SCOPE = AccountScope(
    blueprint="personal",
    title="Email",
    trail=("My preferences",),
    personal=True,
    guard=login_required,
)

register_account_views(bp, SCOPE, prefix="/email/accounts")

from . import routes  # noqa: E402,F401
