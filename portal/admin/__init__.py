"""Administration pages, reachable by administrators only."""

from flask import Blueprint

from ..accounts import AccountScope, register_account_views
from ..auth.session import admin_required

bp = Blueprint("admin", __name__, url_prefix="/admin")

SCOPE = AccountScope(
    blueprint="admin",
    title="Global email accounts",
    trail=("Administration", "System administration"),
    personal=False,
    guard=admin_required,
    edit_context=lambda account: access.access_panel_context(account),
)

register_account_views(bp, SCOPE, prefix="/email-accounts")

from . import (  # noqa: E402,F401  (their routes are added to bp)
    access,
    audit,
    email_templates,
    google,
    microsoft365,
    modules,
    outbound,
    people,
)
