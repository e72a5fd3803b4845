"""Permissions of global accounts whose security is "Staff members via permissions"."""

import logging
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import func, or_, select

from ..extensions import db
from ..models import AccountGrant, EmailAccount, Role, Skillgroup, StaffMember
from . import audit
from .access import SECURITY_LABELS, Security

log = logging.getLogger(__name__)


class GrantKind(StrEnum):
    SKILLGROUP = "skillgroup"
    ROLE = "role"
    STAFF = "staff"


KIND_LABELS = {
    GrantKind.SKILLGROUP: "Skillgroup",
    GrantKind.ROLE: "Role",
    GrantKind.STAFF: "Staff member",
}
KIND_COLUMNS = {
    GrantKind.SKILLGROUP: AccountGrant.skillgroup_id,
    GrantKind.ROLE: AccountGrant.role_id,
    GrantKind.STAFF: AccountGrant.staff_id,
}


class GrantError(ValueError):
    pass


@dataclass
class GrantView:
    id: int
    kind: GrantKind
    name: str
    detail: str = ""


@dataclass
class Candidate:
    id: int
    name: str
    detail: str = ""


def list_grants(account: EmailAccount) -> list[GrantView]:
    """The account's grants with the names of their targets (one query)."""
    rows = db.session.execute(
        select(
            AccountGrant.id,
            AccountGrant.skillgroup_id,
            AccountGrant.role_id,
            Skillgroup.name.label("skillgroup"),
            Role.name.label("role"),
            StaffMember.display_name,
            StaffMember.username,
        )
        .outerjoin(Skillgroup, Skillgroup.id == AccountGrant.skillgroup_id)
        .outerjoin(Role, Role.id == AccountGrant.role_id)
        .outerjoin(StaffMember, StaffMember.id == AccountGrant.staff_id)
        .where(AccountGrant.account_id == account.id)
    ).all()
    grants = []
    for row in rows:
        if row.skillgroup_id is not None:
            grants.append(GrantView(row.id, GrantKind.SKILLGROUP, row.skillgroup))
        elif row.role_id is not None:
            grants.append(GrantView(row.id, GrantKind.ROLE, row.role))
        else:
            grants.append(
                GrantView(row.id, GrantKind.STAFF, row.display_name, row.username)
            )
    order = list(GrantKind)
    grants.sort(key=lambda grant: (order.index(grant.kind), grant.name.lower()))
    return grants


def search_candidates(
    account: EmailAccount, kind: GrantKind, text: str, limit: int = 20
) -> list[Candidate]:
    """Skillgroups, roles or staff matching ``text`` that have no grant yet (one query)."""
    pattern = f"%{text.strip().lower()}%"
    granted = select(KIND_COLUMNS[kind]).where(
        AccountGrant.account_id == account.id, KIND_COLUMNS[kind].is_not(None)
    )
    if kind == GrantKind.STAFF:
        query = (
            select(StaffMember)
            .where(
                StaffMember.active.is_(True),
                StaffMember.id.not_in(granted),
                or_(
                    func.lower(StaffMember.username).like(pattern),
                    func.lower(StaffMember.display_name).like(pattern),
                    func.lower(StaffMember.email).like(pattern),
                ),
            )
            .order_by(func.lower(StaffMember.display_name))
            .limit(limit)
        )
        return [
            Candidate(
                staff.id,
                staff.display_name,
                f"{staff.username} · {staff.email}".strip(" ·"),
            )
            for staff in db.session.scalars(query)
        ]

    model = Skillgroup if kind == GrantKind.SKILLGROUP else Role
    query = (
        select(model)
        .where(model.id.not_in(granted), func.lower(model.name).like(pattern))
        .order_by(func.lower(model.name))
        .limit(limit)
    )
    return [Candidate(item.id, item.name) for item in db.session.scalars(query)]


def add_grant(account: EmailAccount, kind: GrantKind, target_id: int) -> None:
    """Grant a skillgroup, role or staff member use of ``account``; the caller commits."""
    if account.owner_id is not None:
        raise GrantError("Personal accounts are used by their owner only.")
    model = {
        GrantKind.SKILLGROUP: Skillgroup,
        GrantKind.ROLE: Role,
        GrantKind.STAFF: StaffMember,
    }[kind]
    if db.session.get(model, target_id) is None:
        raise GrantError(f"That {KIND_LABELS[kind].lower()} no longer exists.")
    exists = db.session.scalar(
        select(AccountGrant.id).where(
            AccountGrant.account_id == account.id, KIND_COLUMNS[kind] == target_id
        )
    )
    if exists:
        return
    grant = AccountGrant(account_id=account.id)
    setattr(grant, KIND_COLUMNS[kind].key, target_id)
    db.session.add(grant)
    log.info("Account %s: granted %s %s", account.id, kind, target_id)
    audit.record(
        "account.grant-add",
        object_type="account",
        object_id=account.id,
        label=account.friendly_name,
        changes={f"grant.{kind}": [None, target_id]},
    )


def remove_grant(account: EmailAccount, grant_id: int) -> bool:
    grant = db.session.get(AccountGrant, grant_id)
    if grant is None or grant.account_id != account.id:
        return False
    db.session.delete(grant)
    log.info("Account %s: removed grant %s", account.id, grant_id)
    kind = next(
        k
        for k, column in KIND_COLUMNS.items()
        if getattr(grant, column.key) is not None
    )
    audit.record(
        "account.grant-remove",
        object_type="account",
        object_id=account.id,
        label=account.friendly_name,
        changes={f"grant.{kind}": [getattr(grant, KIND_COLUMNS[kind].key), None]},
    )
    return True


def set_security(account: EmailAccount, security: str) -> None:
    if account.owner_id is not None:
        raise GrantError("Personal accounts have no security setting.")
    try:
        value = Security(security)
    except ValueError as error:
        choices = ", ".join(SECURITY_LABELS.values())
        raise GrantError(f"Choose one of: {choices}.") from error
    if account.security != str(value):
        audit.record(
            "account.security",
            object_type="account",
            object_id=account.id,
            label=account.friendly_name,
            changes={"security": [account.security, str(value)]},
        )
    account.security = str(value)
    log.info("Account %s: security set to %s", account.id, value)
