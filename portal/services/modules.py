"""Which email account each helpdesk module sends from.

An administrator assigns one account to each sending module. ``access``
decides whether the module may use it each time the account is read or used.
So an account that is disabled, or whose security changes, after the
assignment stops being used at once. ``module_account`` then returns None, and
the Modules page reports the stale assignment instead of hiding it.
"""

import logging
from dataclasses import dataclass

from sqlalchemy import Row, select

from ..extensions import db
from ..models import EmailAccount, ModuleAccount, OutboxMessage
from . import access, audit, sending
from .access import MODULE_LABELS, SECURITY_LABELS, Module, ModulePrincipal

log = logging.getLogger(__name__)

# The modules that send mail from an account of their own. Email Templates has
# none, because a template may override the From account instead.
SENDING_MODULES = (
    Module.EMAIL_MANAGER,
    Module.PRIORITY_MANAGER,
    Module.AUTOMATION_SERVICE,
    Module.WEB_PORTAL,
)


class AccountNotUsable(PermissionError):
    """The module may not use the account chosen for it."""

    def __init__(self, module: Module, account_id: int) -> None:
        super().__init__(
            f"The {MODULE_LABELS[module]} may not use account {account_id}, "
            "because modules may use only enabled global accounts whose security "
            "is Everyone or System."
        )
        self.module = module
        self.account_id = account_id


class NoModuleAccount(LookupError):
    """The module has no account, or its account may no longer be used."""

    def __init__(self, module: Module, reason: str) -> None:
        super().__init__(reason)
        self.module = module


@dataclass
class ModuleSetting:
    """One module's assignment as the Modules page shows it."""

    module: Module
    label: str
    assigned: EmailAccount | None  # the stored assignment, usable or not
    usable: bool  # False when there is no assignment or the rule rejects it
    choices: list[Row]  # the accounts the module may use, as ``usable_accounts``

    @property
    def problem(self) -> str:
        """Why the assigned account is not used, or "" when nothing is wrong."""
        if self.assigned is None or self.usable:
            return ""
        return (
            f"{unusable_cause(self.assigned)}, so the {self.label} sends no mail. "
            "Choose another account."
        )


def unusable_cause(account: EmailAccount) -> str:
    """Explain in a clause why modules may not use ``account``.

    Call it only after ``access`` rejected the account. It explains the
    rejection and does not decide it.
    """
    name = f"{account.friendly_name} ({account.email_address})"
    if not account.enabled:
        return f"The account {name} is disabled"
    if account.owner_id is not None:
        return f"The account {name} is a personal account"
    if account.security not in access.MODULE_SECURITIES:
        security = SECURITY_LABELS.get(account.security, account.security)
        return (
            f"The security of the account {name} is now {security}, which "
            "modules may not use"
        )
    return f"Modules may no longer use the account {name}"


def assigned_accounts() -> dict[Module, EmailAccount]:
    """Return every stored assignment, usable or not (one query)."""
    rows = db.session.execute(
        select(ModuleAccount.module, EmailAccount).join(
            EmailAccount, EmailAccount.id == ModuleAccount.account_id
        )
    ).all()
    assignments = {}
    for module_name, account in rows:
        try:
            assignments[Module(module_name)] = account
        except ValueError:
            log.warning("Ignoring the assignment of unknown module %r", module_name)
    return assignments


def list_settings() -> list[ModuleSetting]:
    """Return the setting of each sending module, for the Modules page.

    Runs one query for the assignments and one ``usable_accounts`` query per
    module, whatever the number of accounts.
    """
    assignments = assigned_accounts()
    return [_setting(module, assignments.get(module)) for module in SENDING_MODULES]


def setting_for(module: Module) -> ModuleSetting:
    """Return the setting of one module (two queries)."""
    return _setting(module, assigned_accounts().get(module))


def _setting(module: Module, assigned: EmailAccount | None) -> ModuleSetting:
    choices = access.usable_accounts(ModulePrincipal(module))
    usable = assigned is not None and any(row.id == assigned.id for row in choices)
    return ModuleSetting(
        module=module,
        label=MODULE_LABELS[module],
        assigned=assigned,
        usable=usable,
        choices=choices,
    )


def module_account(module: Module) -> EmailAccount | None:
    """Return the module's account, or None when none is assigned or the
    usage rule no longer allows the assigned one."""
    account = db.session.scalar(
        select(EmailAccount)
        .join(ModuleAccount, ModuleAccount.account_id == EmailAccount.id)
        .where(ModuleAccount.module == str(module))
    )
    if account is None or not access.may_use(ModulePrincipal(module), account.id):
        return None
    return account


def assign(module: Module, account_id: int | None) -> int | None:
    """Make ``module`` send from ``account_id``, or from nothing when None.

    Returns the id of the account assigned before. Raises ``AccountNotUsable``
    when the usage rule does not allow the module to use the account. The
    caller commits and logs the change.
    """
    if module not in SENDING_MODULES:
        raise ValueError(f"The {MODULE_LABELS[module]} has no account of its own.")
    if account_id is not None and not access.may_use(
        ModulePrincipal(module), account_id
    ):
        raise AccountNotUsable(module, account_id)

    row = db.session.get(ModuleAccount, str(module))
    previous = row.account_id if row else None
    if account_id is None:
        if row is not None:
            db.session.delete(row)
    elif row is None:
        db.session.add(ModuleAccount(module=str(module), account_id=account_id))
    else:
        row.account_id = account_id
    db.session.flush()
    if previous != account_id:
        audit.record(
            "module.assign",
            object_type="module",
            object_id=str(module),
            label=MODULE_LABELS[module],
            changes={"account_id": [previous, account_id]},
        )
    return previous


def send_as_module(module: Module, draft: sending.Draft) -> OutboxMessage:
    """Queue ``draft`` from the module's account through the one send path.

    Raises ``NoModuleAccount`` when the module has no usable account, and
    whatever ``sending.queue_message`` raises. The caller commits.
    """
    account = module_account(module)
    if account is None:
        raise NoModuleAccount(module, _missing_account_reason(module))
    return sending.queue_message(ModulePrincipal(module), account.id, draft)


def _missing_account_reason(module: Module) -> str:
    assigned = assigned_accounts().get(module)
    if assigned is None:
        return (
            f"The {MODULE_LABELS[module]} has no email account. An administrator "
            "can choose one under Administration › Modules."
        )
    return (
        f"{unusable_cause(assigned)}, so the {MODULE_LABELS[module]} sends no "
        "mail. An administrator can choose another account under "
        "Administration › Modules."
    )
