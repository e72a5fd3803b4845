"""What uses an account: modules, email templates and staff defaults.

Deleting or disabling an account that something uses first lists those uses
and lets the administrator move them to another account. Foreign keys clear
whatever is left (module assignments and defaults are deleted, template
overrides set to none), so nothing points at a missing account.
"""

import logging
from dataclasses import dataclass, field

from sqlalchemy import select

from ..extensions import db
from ..models import (
    DefaultAccount,
    EmailAccount,
    EmailTemplate,
    ModuleAccount,
    StaffMember,
)
from . import access, audit

log = logging.getLogger(__name__)


@dataclass
class Uses:
    modules: list[str] = field(default_factory=list)  # module keys
    templates: list[EmailTemplate] = field(default_factory=list)
    defaults: list[StaffMember] = field(
        default_factory=list
    )  # staff whose default it is

    def __bool__(self) -> bool:
        return bool(self.modules or self.templates or self.defaults)


def find_uses(account: EmailAccount) -> Uses:
    """Three queries, whatever the numbers of modules, templates and staff."""
    return Uses(
        modules=list(
            db.session.scalars(
                select(ModuleAccount.module).where(
                    ModuleAccount.account_id == account.id
                )
            )
        ),
        templates=list(
            db.session.scalars(
                select(EmailTemplate)
                .where(EmailTemplate.from_account_id == account.id)
                .order_by(EmailTemplate.name)
            )
        ),
        defaults=list(
            db.session.scalars(
                select(StaffMember)
                .join(DefaultAccount, DefaultAccount.staff_id == StaffMember.id)
                .where(DefaultAccount.account_id == account.id)
                .order_by(StaffMember.display_name)
            )
        ),
    )


def replacement_choices(account: EmailAccount) -> list:
    """Accounts that may take over module and template uses: those every
    module may use (Everyone or System security), except this one."""
    return [
        row
        for row in access.usable_accounts(
            access.ModulePrincipal(access.Module.EMAIL_TEMPLATES)
        )
        if row.id != account.id
    ]


class ReplacementNotUsable(ValueError):
    pass


def move_uses(account: EmailAccount, replacement_id: int | None) -> None:
    """Move module and template uses to ``replacement_id``; clear staff defaults.

    With no replacement, modules lose their account and templates their
    override. Raises ``ReplacementNotUsable``. The caller commits.
    """
    uses = find_uses(account)
    if replacement_id is not None:
        for module in uses.modules:
            if not access.may_use(
                access.ModulePrincipal(access.Module(module)), replacement_id
            ):
                raise ReplacementNotUsable(
                    "The replacement account cannot be used by modules. Choose an account "
                    "with Everyone or System security."
                )

    for row in db.session.scalars(
        select(ModuleAccount).where(ModuleAccount.account_id == account.id)
    ):
        if replacement_id is None:
            db.session.delete(row)
        else:
            row.account_id = replacement_id
    for template in uses.templates:
        template.from_account_id = replacement_id
    for row in db.session.scalars(
        select(DefaultAccount).where(DefaultAccount.account_id == account.id)
    ):
        db.session.delete(row)

    if uses:
        audit.record(
            "account.move-uses",
            object_type="account",
            object_id=account.id,
            label=account.friendly_name,
            changes={
                "modules": [uses.modules, replacement_id],
                "templates": [[t.name for t in uses.templates], replacement_id],
                "defaults": [[s.username for s in uses.defaults], None],
            },
        )
    log.info("Uses of account %s moved to %s", account.id, replacement_id)
