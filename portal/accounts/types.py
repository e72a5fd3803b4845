"""The registry of account types.

Each type (Internet, Microsoft 365, Google, Exchange) registers one
``AccountType``: its label, whether it can be created right now, the view that
shows, tests and saves its form, and any extra routes it needs (a mailbox
search, a sign-in callback). The shared account pages look types up here, so
a new type is a new module that calls ``register``, not edits across views.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from ..models import EmailAccount


@dataclass(frozen=True)
class Availability:
    """Whether a type can be chosen now, and if not, why and where to fix it."""

    enabled: bool
    reason: str = ""
    fix_url: str = ""
    fix_label: str = ""


ALWAYS = Availability(True)


@dataclass(frozen=True)
class AccountType:
    key: str  # stored in EmailAccount.account_type and used in URLs
    label: str
    description: str
    # view(scope, account) shows, tests and saves the type's form; account is
    # None when creating. It handles GET and POST.
    view: Callable
    # availability(scope) tells the type chooser whether to offer the type.
    availability: Callable = field(default=lambda scope: ALWAYS)
    # summary(account) is the Type column of the account grids.
    summary: Callable[[EmailAccount], str] | None = None
    # register_routes(route, scope) adds extra routes with the shared
    # ``route(rule, view, methods)`` helper; rules are relative to the
    # accounts prefix.
    register_routes: Callable | None = None
    # notices(scope) returns warnings shown above the account grid, such as a
    # client secret that expires soon.
    notices: Callable[..., list[str]] | None = None
    order: int = 100  # position in the type chooser

    def describe(self, account: EmailAccount) -> str:
        return self.summary(account) if self.summary else self.label


_TYPES: dict[str, AccountType] = {}


def register(account_type: AccountType) -> None:
    _TYPES[account_type.key] = account_type


def get(key: str) -> AccountType | None:
    return _TYPES.get(key)


def all_types() -> list[AccountType]:
    return sorted(_TYPES.values(), key=lambda item: (item.order, item.label))


def describe(account: EmailAccount) -> str:
    account_type = _TYPES.get(account.account_type)
    return account_type.describe(account) if account_type else account.account_type
