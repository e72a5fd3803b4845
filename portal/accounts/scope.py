"""The ownership and access rules of the accounts a blueprint shows."""

from collections.abc import Callable
from dataclasses import dataclass

from flask import abort, url_for
from flask_login import current_user

from ..extensions import db
from ..models import EmailAccount
from ..services.settings import personal_accounts_allowed

CREATION_DISABLED = (
    "An administrator has turned off creating personal email accounts. Your "
    "existing accounts keep working; ask an administrator to send from a "
    "global account instead."
)


@dataclass(frozen=True)
class AccountScope:
    blueprint: str
    title: str
    trail: tuple[str, ...]  # breadcrumb labels above the account list
    personal: bool
    guard: Callable  # decorator that authorises the request
    # Extra template context for an existing account's page, such as the
    # access panel of a global account.
    edit_context: Callable[[EmailAccount], dict] | None = None

    def owner_id(self) -> int | None:
        """Return the owner of accounts created here: the staff member, or None for global."""
        return current_user.id if self.personal else None

    def get_account(self, account_id: int) -> EmailAccount:
        """Return the account if it belongs to this scope, else 404.

        A staff member asking for someone else's personal account gets the
        same 404 as for a missing one, so ids reveal nothing.
        """
        account = db.session.get(EmailAccount, account_id)
        if account is None or account.owner_id != self.owner_id():
            abort(404)
        return account

    def may_create(self) -> bool:
        """Return whether new accounts may be created here right now."""
        if self.personal:
            return personal_accounts_allowed()
        return True

    def chooses_security(self, account: EmailAccount | None) -> bool:
        """Return whether the account form shows Security: only when creating a global account.

        An existing global account's security changes in its access panel,
        which saves at once and updates the preview beside it.
        """
        return not self.personal and account is None

    def endpoint(self, name: str) -> str:
        return f"{self.blueprint}.{name}"

    def url(self, name: str, **values) -> str:
        return url_for(self.endpoint(name), **values)

    def breadcrumbs(
        self, *extra: tuple[str, str | None]
    ) -> list[tuple[str, str | None]]:
        crumbs: list[tuple[str, str | None]] = [(label, None) for label in self.trail]
        crumbs.append((self.title, self.url("list_accounts") if extra else None))
        crumbs.extend(extra)
        return crumbs
