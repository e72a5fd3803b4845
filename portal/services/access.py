"""Who and what may use an email account: the one place that decides it.

Every page, drop-down, send path and module calls this module. The rule:

============================  ==========================  ==============
security                      staff                       modules
============================  ==========================  ==============
Everyone                      all staff                   yes
System                        no                          yes
All staff members             all staff                   no
Staff members via permissions staff granted through a     no
                              skillgroup, a role, or
                              by name
(personal account)            its owner only              no
============================  ==========================  ==============

A disabled account is usable by no one, and a disabled staff member uses
nothing. Each function runs a fixed number of SQL statements, whatever the
numbers of accounts, staff, groups and grants.
"""

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    false,
    func,
    literal,
    or_,
    select,
    true,
    union,
)
from sqlalchemy.sql import Select

from ..extensions import db
from ..models import (
    AccountGrant,
    EmailAccount,
    Role,
    Skillgroup,
    StaffMember,
    staff_role,
    staff_skillgroup,
)


class Security(StrEnum):
    EVERYONE = "everyone"
    SYSTEM = "system"
    ALL_STAFF = "all_staff"
    PERMISSIONS = "permissions"


SECURITY_LABELS = {
    Security.EVERYONE: "Everyone",
    Security.SYSTEM: "System",
    Security.ALL_STAFF: "All staff members",
    Security.PERMISSIONS: "Staff members via permissions",
}
SECURITY_HELP = {
    Security.EVERYONE: "All staff and every module may send from it.",
    Security.SYSTEM: "Only modules may send from it; it is never listed for staff.",
    Security.ALL_STAFF: "All staff may send from it; modules may not.",
    Security.PERMISSIONS: "Only the skillgroups, roles and staff members you choose may send from it.",
}


class Module(StrEnum):
    """The helpdesk's automated senders and readers."""

    EMAIL_MANAGER = "email_manager"
    PRIORITY_MANAGER = "priority_manager"
    AUTOMATION_SERVICE = "automation_service"
    EMAIL_TEMPLATES = "email_templates"
    WEB_PORTAL = "web_portal"


MODULE_LABELS = {
    Module.EMAIL_MANAGER: "Email Manager",
    Module.PRIORITY_MANAGER: "Priority Manager",
    Module.AUTOMATION_SERVICE: "Automation Service",
    Module.EMAIL_TEMPLATES: "Email Templates",
    Module.WEB_PORTAL: "Web Portal",
}

STAFF_SECURITIES = (Security.EVERYONE, Security.ALL_STAFF)
MODULE_SECURITIES = (Security.EVERYONE, Security.SYSTEM)


@dataclass(frozen=True)
class StaffPrincipal:
    staff_id: int


@dataclass(frozen=True)
class ModulePrincipal:
    module: Module


Principal = StaffPrincipal | ModulePrincipal


def granted_account_ids(staff_id: int) -> Select:
    """Ids of accounts granted to the staff member by name, skillgroup or role."""
    by_name = select(AccountGrant.account_id).where(AccountGrant.staff_id == staff_id)
    by_skillgroup = (
        select(AccountGrant.account_id)
        .join(
            staff_skillgroup,
            staff_skillgroup.c.skillgroup_id == AccountGrant.skillgroup_id,
        )
        .where(staff_skillgroup.c.staff_id == staff_id)
    )
    by_role = (
        select(AccountGrant.account_id)
        .join(staff_role, staff_role.c.role_id == AccountGrant.role_id)
        .where(staff_role.c.staff_id == staff_id)
    )
    return union(by_name, by_skillgroup, by_role)


def usable_condition(principal: Principal) -> ColumnElement[bool]:
    """Return the SQL condition on ``EmailAccount`` that the rule above states."""
    if isinstance(principal, ModulePrincipal):
        return and_(
            EmailAccount.enabled == true(),
            EmailAccount.owner_id.is_(None),
            EmailAccount.security.in_([str(s) for s in MODULE_SECURITIES]),
        )

    staff_id = principal.staff_id
    active = (
        select(StaffMember.id)
        .where(StaffMember.id == staff_id, StaffMember.active == true())
        .exists()
    )
    global_access = and_(
        EmailAccount.owner_id.is_(None),
        or_(
            EmailAccount.security.in_([str(s) for s in STAFF_SECURITIES]),
            and_(
                EmailAccount.security == str(Security.PERMISSIONS),
                EmailAccount.id.in_(granted_account_ids(staff_id)),
            ),
        ),
    )
    return and_(
        EmailAccount.enabled == true(),
        active,
        or_(EmailAccount.owner_id == staff_id, global_access),
    )


# The columns a list or drop-down of usable accounts shows. Rows are returned
# instead of ORM objects: a staff member may use thousands of accounts, and
# building an entity for each costs several times the query itself.
CHOICE_COLUMNS = (
    EmailAccount.id,
    EmailAccount.friendly_name,
    EmailAccount.email_address,
    EmailAccount.from_name,
    EmailAccount.account_type,
    EmailAccount.owner_id,
    EmailAccount.security,
)


def usable_accounts_query(principal: Principal) -> Select:
    return (
        select(*CHOICE_COLUMNS)
        .where(usable_condition(principal))
        .order_by(func.lower(EmailAccount.friendly_name), EmailAccount.id)
    )


def usable_accounts(principal: Principal) -> list[Row]:
    """Return every account the principal may use, ordered by friendly name (one query).

    Each row has the attributes named in ``CHOICE_COLUMNS``. The statement
    runs on the session's connection as plain Core SQL, which skips the ORM's
    per-row result processing that column rows do not need.
    """
    return list(db.session.connection().execute(usable_accounts_query(principal)))


def may_use(principal: Principal, account_id: int) -> bool:
    """True when the principal may use the account (one query)."""
    query = select(EmailAccount.id).where(
        EmailAccount.id == account_id, usable_condition(principal)
    )
    return db.session.scalar(query) is not None


# -- the effective access preview ------------------------------------------------


def staff_access_condition(account: EmailAccount) -> ColumnElement[bool]:
    """Return the condition on ``StaffMember`` for staff who may use ``account``."""
    if not account.enabled:
        return false()
    if account.owner_id is not None:
        return and_(StaffMember.id == account.owner_id, StaffMember.active.is_(True))
    security = account.security
    if security in STAFF_SECURITIES:
        return StaffMember.active.is_(True)
    if security != Security.PERMISSIONS:
        return false()

    grants = (
        select(AccountGrant).where(AccountGrant.account_id == account.id).subquery()
    )
    by_name = select(grants.c.staff_id).where(grants.c.staff_id.is_not(None))
    by_skillgroup = select(staff_skillgroup.c.staff_id).join(
        grants, grants.c.skillgroup_id == staff_skillgroup.c.skillgroup_id
    )
    by_role = select(staff_role.c.staff_id).join(
        grants, grants.c.role_id == staff_role.c.role_id
    )
    return and_(
        StaffMember.active.is_(True),
        StaffMember.id.in_(union(by_name, by_skillgroup, by_role)),
    )


def _staff_search(search: str) -> ColumnElement[bool]:
    if not search:
        return literal(True)
    pattern = f"%{search.lower()}%"
    return or_(
        func.lower(StaffMember.username).like(pattern),
        func.lower(StaffMember.display_name).like(pattern),
        func.lower(StaffMember.email).like(pattern),
    )


@dataclass
class AccessPreview:
    total: int  # staff who may use the account
    staff: list[StaffMember]  # the page matching the search
    matching: int  # staff matching the search


def preview_access(
    account: EmailAccount, search: str = "", limit: int = 50
) -> AccessPreview:
    """Count the staff who may use ``account`` and list those matching ``search``.

    Three queries, whatever the numbers of staff and grants.
    """
    condition = staff_access_condition(account)
    total = db.session.scalar(select(func.count(StaffMember.id)).where(condition))
    searched = and_(condition, _staff_search(search.strip()))
    matching = db.session.scalar(select(func.count(StaffMember.id)).where(searched))
    staff = list(
        db.session.scalars(
            select(StaffMember)
            .where(searched)
            .order_by(func.lower(StaffMember.display_name), StaffMember.id)
            .limit(limit)
        )
    )
    return AccessPreview(total=total or 0, staff=staff, matching=matching or 0)


# -- the reverse view: which accounts a staff member may use, and why ------------


@dataclass
class AccountAccess:
    account: Row  # as returned by ``usable_accounts``
    reasons: list[str]


def explain_access(staff_id: int) -> list[AccountAccess]:
    """Return the accounts a staff member may use, each with the grants that allow it.

    Two queries: the usable accounts, and the grants that apply to the staff member.
    """
    accounts = usable_accounts(StaffPrincipal(staff_id))

    grant_rows = db.session.execute(
        select(
            AccountGrant.account_id,
            AccountGrant.staff_id,
            Skillgroup.name.label("skillgroup"),
            Role.name.label("role"),
        )
        .outerjoin(Skillgroup, Skillgroup.id == AccountGrant.skillgroup_id)
        .outerjoin(Role, Role.id == AccountGrant.role_id)
        .where(AccountGrant.account_id.in_(granted_account_ids(staff_id)))
        .where(
            or_(
                AccountGrant.staff_id == staff_id,
                AccountGrant.skillgroup_id.in_(
                    select(staff_skillgroup.c.skillgroup_id).where(
                        staff_skillgroup.c.staff_id == staff_id
                    )
                ),
                AccountGrant.role_id.in_(
                    select(staff_role.c.role_id).where(
                        staff_role.c.staff_id == staff_id
                    )
                ),
            )
        )
    ).all()
    reasons_by_account: dict[int, list[str]] = {}
    for row in grant_rows:
        if row.staff_id is not None:
            reason = "Granted by name"
        elif row.skillgroup is not None:
            reason = f"Member of the skillgroup {row.skillgroup}"
        else:
            reason = f"Has the role {row.role}"
        reasons_by_account.setdefault(row.account_id, []).append(reason)

    result = []
    for account in accounts:
        if account.owner_id is not None:
            reasons = ["Personal account"]
        elif account.security == Security.PERMISSIONS:
            reasons = sorted(reasons_by_account.get(account.id, []))
        else:
            reasons = [f"Security: {SECURITY_LABELS[Security(account.security)]}"]
        result.append(AccountAccess(account=account, reasons=reasons))
    return result
