"""Email account pages shared by the personal and the global blueprints.

The two differ only in who owns the accounts and who may reach the pages;
``AccountScope`` states both, and ``register_account_views`` adds the same
views to each blueprint.
"""

from .views import AccountScope, register_account_views

__all__ = ["AccountScope", "register_account_views"]
