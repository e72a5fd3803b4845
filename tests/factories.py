"""Small factories for test data; each adds to the session and flushes."""

import itertools

from portal.extensions import db
from portal.models import AccountGrant, EmailAccount, Role, Skillgroup, StaffMember

_numbers = itertools.count(1)


def staff_member(
    username: str | None = None, *, active: bool = True, **fields
) -> StaffMember:
    number = next(_numbers)
    username = username or f"staff{number}"
    staff = StaffMember(
        username=username,
        display_name=fields.pop("display_name", username.title()),
        email=fields.pop("email", f"{username}@example.com"),
        password_hash="!",  # no password: cannot sign in
        active=active,
        **fields,
    )
    db.session.add(staff)
    db.session.flush()
    return staff


def account(
    name: str | None = None,
    *,
    owner: StaffMember | None = None,
    security: str = "everyone",
    enabled: bool = True,
) -> EmailAccount:
    number = next(_numbers)
    row = EmailAccount(
        account_type="internet",
        friendly_name=name or f"Account {number}",
        email_address=f"account{number}@example.com",
        owner_id=owner.id if owner else None,
        security=security,
        enabled=enabled,
        settings={
            "smtp": {
                "host": "127.0.0.1",
                "port": 25,
                "security": "none",
                "auth": "none",
                "username": "",
            },
            "read": None,
            "trusted_fingerprint": "",
        },
    )
    db.session.add(row)
    db.session.flush()
    return row


def skillgroup(name: str | None = None, members=()) -> Skillgroup:
    group = Skillgroup(name=name or f"Group {next(_numbers)}")
    group.members.extend(members)
    db.session.add(group)
    db.session.flush()
    return group


def role(name: str | None = None, members=(), administration: bool = False) -> Role:
    item = Role(
        name=name or f"Role {next(_numbers)}", grants_administration=administration
    )
    item.members.extend(members)
    db.session.add(item)
    db.session.flush()
    return item


def grant(
    account: EmailAccount, *, skillgroup=None, role=None, staff=None
) -> AccountGrant:
    row = AccountGrant(
        account_id=account.id,
        skillgroup_id=skillgroup.id if skillgroup else None,
        role_id=role.id if role else None,
        staff_id=staff.id if staff else None,
    )
    db.session.add(row)
    db.session.flush()
    return row
