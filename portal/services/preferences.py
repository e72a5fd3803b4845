"""A staff member's email preferences: the default account to send from."""

import logging

from sqlalchemy import Row, select

from ..extensions import db
from ..models import DefaultAccount
from . import access, audit

log = logging.getLogger(__name__)


class NotUsable(PermissionError):
    """The staff member may not use the account they asked for."""


def sending_accounts(staff_id: int) -> tuple[list[Row], int | None]:
    """Accounts the staff member may send from, and the default among them.

    A default that is no longer usable (disabled, or access withdrawn) is
    reported as None. Two queries.
    """
    accounts = access.usable_accounts(access.StaffPrincipal(staff_id))
    default_id = db.session.scalar(
        select(DefaultAccount.account_id).where(DefaultAccount.staff_id == staff_id)
    )
    if default_id not in {account.id for account in accounts}:
        default_id = None
    return accounts, default_id


def set_default_account(staff_id: int, account_id: int | None) -> None:
    """Make ``account_id`` the default, or clear it with None; the caller commits."""
    row = db.session.get(DefaultAccount, staff_id)
    if account_id is None:
        if row is not None:
            db.session.delete(row)
        return
    if not access.may_use(access.StaffPrincipal(staff_id), account_id):
        log.warning(
            "Staff member %s tried to make account %s their default without access",
            staff_id,
            account_id,
        )
        raise NotUsable(account_id)
    old = row.account_id if row is not None else None
    if row is None:
        db.session.add(DefaultAccount(staff_id=staff_id, account_id=account_id))
    else:
        row.account_id = account_id
    if old != account_id:
        audit.record(
            "preference.default-account",
            object_type="staff",
            object_id=staff_id,
            changes={"default_account_id": [old, account_id]},
        )
