"""Skillgroups, application security roles and their members.

Both kinds of group are a name and a list of staff members. Roles also carry
``grants_administration``, so changes to roles are checked against two rules.
The portal always keeps at least one active administrator, and the signed-in
administrator cannot take away their own administrator rights.
"""

import logging

from sqlalchemy import ColumnElement, distinct, exists, func, or_, select

from .. import validation
from ..extensions import db
from ..models import (
    AccountGrant,
    Role,
    Skillgroup,
    StaffMember,
    staff_role,
    staff_skillgroup,
)
from . import audit

log = logging.getLogger(__name__)

Group = Skillgroup | Role

MAX_NAME_LENGTH = 100
MAX_SEARCH_RESULTS = 20

# The column of each membership table that names the group. The other column
# of both tables is ``staff_id``.
MEMBERSHIP_COLUMNS = {
    Skillgroup: staff_skillgroup.c.skillgroup_id,
    Role: staff_role.c.role_id,
}
GRANT_COLUMNS = {Skillgroup: AccountGrant.skillgroup_id, Role: AccountGrant.role_id}
NOUNS = {Skillgroup: "skillgroup", Role: "role"}


class GroupError(ValueError):
    """A rejected change to a group. The message states why and what to do.

    ``field`` names the form field the message belongs beside, if any.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# -- names ---------------------------------------------------------------------


def check_name_text(value: str | None) -> str:
    """Return the name stripped, or raise ValueError if it is empty, longer than
    100 characters, or contains a line break or other control character."""
    name = validation.check_header_value(value, MAX_NAME_LENGTH)
    if not name:
        raise ValueError("Enter a name.")
    return name


def find_by_name(model: type[Group], name: str) -> Group | None:
    """Return the group whose name equals ``name`` ignoring case, or None."""
    query = select(model).where(func.lower(model.name) == name.lower())
    return db.session.scalar(query.limit(1))


def check_name(model: type[Group], value: str | None, exclude: Group | None) -> str:
    """Return a valid, unused name for a group of ``model``, or raise GroupError.

    Names are unique ignoring case. ``exclude`` is the group being renamed,
    which may keep its own name or change only its case.
    """
    try:
        name = check_name_text(value)
    except ValueError as error:
        raise GroupError(str(error), field="name") from None

    # NOTE: the database enforces only case-sensitive uniqueness, so two
    # requests that race to create "Networks" and "networks" can both succeed.
    # A unique index on lower(name) would close that gap.
    existing = find_by_name(model, name)
    if existing is not None and (exclude is None or existing.id != exclude.id):
        raise GroupError(
            f"A {NOUNS[model]} named {existing.name!r} already exists. "
            "Choose another name.",
            field="name",
        )
    return name


# -- queries -------------------------------------------------------------------


def list_with_member_counts(model: type[Group]) -> list[tuple[Group, int]]:
    """Return every group of ``model`` with its number of members, by name.

    It runs one statement, whatever the number of groups.
    """
    column = MEMBERSHIP_COLUMNS[model]
    member_count = (
        select(func.count())
        .select_from(column.table)
        .where(column == model.id)
        .correlate(model)
        .scalar_subquery()
    )
    query = select(model, member_count).order_by(func.lower(model.name), model.id)
    return [(group, count) for group, count in db.session.execute(query)]


def list_members(group: Group) -> list[StaffMember]:
    column = MEMBERSHIP_COLUMNS[type(group)]
    query = (
        select(StaffMember)
        .join(column.table, column.table.c.staff_id == StaffMember.id)
        .where(column == group.id)
        .order_by(func.lower(StaffMember.display_name), StaffMember.username)
    )
    return list(db.session.scalars(query))


def count_account_grants(group: Group) -> int:
    """Return how many global accounts are shared with ``group`` by permission."""
    column = GRANT_COLUMNS[type(group)]
    query = select(func.count(AccountGrant.id)).where(column == group.id)
    return db.session.scalar(query) or 0


def search_staff(group: Group, text: str) -> list[tuple[StaffMember, bool]]:
    """Return up to 20 staff members whose user name, display name or email
    contains ``text``, each with whether they already belong to ``group``.

    The match ignores case.
    """
    text = text.strip().lower()
    if not text:
        return []

    # NOTE: SQLite's lower() folds only ASCII letters, so on SQLite "ö" does
    # not match "Ö". PostgreSQL folds other letters too, unless the database's
    # LC_CTYPE is C.
    column = MEMBERSHIP_COLUMNS[type(group)]
    is_member = exists().where(
        column.table.c.staff_id == StaffMember.id, column == group.id
    )
    matches = or_(
        *(
            func.lower(attribute).contains(text, autoescape=True)
            for attribute in (
                StaffMember.username,
                StaffMember.display_name,
                StaffMember.email,
            )
        )
    )
    query = (
        select(StaffMember, is_member)
        .where(matches)
        .order_by(func.lower(StaffMember.display_name), StaffMember.username)
        .limit(MAX_SEARCH_RESULTS)
    )
    return [(staff, bool(member)) for staff, member in db.session.execute(query)]


# -- changes -------------------------------------------------------------------


def create_group(
    model: type[Group], name: str, *, grants_administration: bool = False
) -> Group:
    """Add a new group to the session, or raise GroupError. The caller commits.

    ``grants_administration`` applies to roles only.
    """
    group = model(name=check_name(model, name, exclude=None))
    if isinstance(group, Role):
        group.grants_administration = grants_administration
    db.session.add(group)
    db.session.flush()
    audit.record(
        f"{_kind(group)}.create",
        object_type=_kind(group),
        object_id=group.id,
        label=group.name,
    )
    return group


def _kind(group: Group) -> str:
    return "role" if isinstance(group, Role) else "skillgroup"


def rename_group(group: Group, name: str) -> None:
    """Rename the group, or raise GroupError if the name is invalid or taken."""
    old = group.name
    group.name = check_name(type(group), name, exclude=group)
    if old != group.name:
        audit.record(
            f"{_kind(group)}.rename",
            object_type=_kind(group),
            object_id=group.id,
            label=group.name,
            changes={"name": [old, group.name]},
        )


def set_grants_administration(role: Role, grants: bool, acting: StaffMember) -> None:
    """Set the role's administration flag, unless clearing it would leave the
    portal, or ``acting``, without administrator rights."""
    if role.grants_administration and not grants:
        _check_administration_kept(role, acting, change="revoke")
    if role.grants_administration != grants:
        audit.record(
            "role.administration",
            object_type="role",
            object_id=role.id,
            label=role.name,
            changes={"grants_administration": [role.grants_administration, grants]},
        )
    role.grants_administration = grants


def check_deletion(group: Group, acting: StaffMember, *, lock: bool = True) -> None:
    """Raise GroupError if ``acting`` may not delete ``group``.

    Pass ``lock=False`` to check without locking, as a confirmation page
    does, because ``delete_group`` checks again with the lock.
    """
    if isinstance(group, Role):
        _check_administration_kept(group, acting, change="delete", lock=lock)


def delete_group(group: Group, acting: StaffMember) -> None:
    """Delete the group; memberships and account permissions that name it go too."""
    check_deletion(group, acting)
    audit.record(
        f"{_kind(group)}.delete",
        object_type=_kind(group),
        object_id=group.id,
        label=group.name,
    )
    db.session.delete(group)


def add_member(group: Group, staff: StaffMember) -> bool:
    """Add ``staff`` to ``group``; return False if they already belonged to it."""
    if staff in group.members:
        return False
    group.members.append(staff)
    audit.record(
        f"{_kind(group)}.member-add",
        object_type=_kind(group),
        object_id=group.id,
        label=group.name,
        changes={"member": [None, staff.username]},
    )
    return True


def remove_member(group: Group, staff: StaffMember, acting: StaffMember) -> bool:
    """Remove ``staff`` from ``group``; return False if they were not a member."""
    if staff not in group.members:
        return False
    if isinstance(group, Role):
        _check_administration_kept(group, acting, change="remove", staff=staff)
    group.members.remove(staff)
    audit.record(
        f"{_kind(group)}.member-remove",
        object_type=_kind(group),
        object_id=group.id,
        label=group.name,
        changes={"member": [staff.username, None]},
    )
    return True


# -- keeping an administrator ------------------------------------------------


def _check_administration_kept(
    role: Role,
    acting: StaffMember,
    *,
    change: str,
    staff: StaffMember | None = None,
    lock: bool = True,
) -> None:
    """Raise GroupError if a change to ``role`` takes away administrator rights
    that must stay.

    ``change`` is "delete" (the role), "revoke" (its administration flag) or
    "remove" (``staff`` from its members). Three rules apply, in this order:
    the last role that grants administration keeps its flag and is not
    deleted, ``acting`` keeps their own administrator rights, and at least one
    active staff member stays an administrator.
    """
    if not role.grants_administration:
        return
    if lock:
        _lock_administrator_roles()
    field = "grants_administration" if change == "revoke" else None

    if change != "remove" and not _other_administrator_roles_exist(role):
        raise GroupError(_LAST_ROLE_MESSAGES[change].format(role=role.name), field)

    if _takes_own_rights(role, acting, change, staff):
        raise GroupError(_OWN_RIGHTS_MESSAGES[change].format(role=role.name), field)

    if change == "remove":
        remaining = or_(
            staff_role.c.role_id != role.id, staff_role.c.staff_id != staff.id
        )
    else:
        remaining = staff_role.c.role_id != role.id
    if _count_administrators(remaining) == 0:
        raise GroupError(
            "This change would leave no active staff member with administrator "
            "rights, so nobody could administer the portal. First add an active "
            "staff member to another role that grants administration.",
            field,
        )


def _takes_own_rights(
    role: Role, acting: StaffMember, change: str, staff: StaffMember | None
) -> bool:
    """Return True if the change leaves ``acting`` without administrator rights."""
    if change == "remove" and staff.id != acting.id:
        return False
    administrator_roles = {
        other.id for other in acting.roles if other.grants_administration
    }
    return administrator_roles == {role.id}


def _other_administrator_roles_exist(role: Role) -> bool:
    query = select(Role.id).where(Role.grants_administration, Role.id != role.id)
    return db.session.scalar(query.limit(1)) is not None


def _count_administrators(remaining: ColumnElement[bool]) -> int:
    """Return how many active staff members would still be administrators
    through the role memberships that match ``remaining``."""
    query = (
        select(func.count(distinct(staff_role.c.staff_id)))
        .select_from(staff_role)
        .join(Role, Role.id == staff_role.c.role_id)
        .join(StaffMember, StaffMember.id == staff_role.c.staff_id)
        .where(Role.grants_administration, StaffMember.active, remaining)
    )
    return db.session.scalar(query) or 0


def _lock_administrator_roles() -> None:
    """Lock the rows of every role that grants administration until commit.

    Without the lock, two administrators who remove each other at the same
    moment would each count the other as the remaining administrator. With
    it, the second change waits for the first to commit and then counts again.
    """
    # NOTE: SQLite has no SELECT ... FOR UPDATE, so on SQLite two such
    # concurrent changes are not serialised and can both succeed.
    db.session.execute(
        select(Role.id).where(Role.grants_administration).with_for_update()
    )


_OWN_RIGHTS_MESSAGES = {
    "delete": (
        "You cannot delete {role} because it is your only role that grants "
        "administration, and you would lose access to the administration pages. "
        "Ask another administrator to delete it."
    ),
    "revoke": (
        "You cannot clear Grants administration on {role} because it is your "
        "only role that grants administration, and you would lose access to the "
        "administration pages. Ask another administrator to change it."
    ),
    "remove": (
        "You cannot remove yourself from {role} because it is your only role "
        "that grants administration, and you would lose access to the "
        "administration pages. Ask another administrator to remove you."
    ),
}

_LAST_ROLE_MESSAGES = {
    "delete": (
        "{role} cannot be deleted because it is the only role that grants "
        "administration, and nobody could administer the portal afterwards. "
        "First tick Grants administration on another role and add members to it."
    ),
    "revoke": (
        "{role} must keep Grants administration because it is the only role "
        "that grants it, and nobody could administer the portal otherwise. "
        "First tick Grants administration on another role."
    ),
}
