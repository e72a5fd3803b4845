"""Creating staff members and the first administrator."""

import logging
import secrets

from sqlalchemy import func, select

from .extensions import db
from .models import ADMINISTRATORS_ROLE, Role, StaffMember

log = logging.getLogger(__name__)


class StaffError(ValueError):
    pass


def administrators_role() -> Role:
    """Return the role that grants administration, creating it when missing."""
    role = db.session.scalar(select(Role).where(Role.name == ADMINISTRATORS_ROLE))
    if role is None:
        role = Role(name=ADMINISTRATORS_ROLE, grants_administration=True)
        db.session.add(role)
    return role


def create_staff(
    username: str,
    password: str,
    *,
    display_name: str = "",
    email: str = "",
    administrator: bool = False,
) -> StaffMember:
    """Add a staff member to the session; the caller commits."""
    username = username.strip()
    if not username or len(username) > 64 or any(c.isspace() for c in username):
        raise StaffError("User names are 1 to 64 characters without spaces.")
    if len(password) < 8:
        raise StaffError("Passwords must be at least 8 characters long.")
    exists = db.session.scalar(
        select(StaffMember.id).where(
            func.lower(StaffMember.username) == username.lower()
        )
    )
    if exists:
        raise StaffError(f"A staff member named {username!r} already exists.")

    staff = StaffMember(
        username=username, display_name=display_name or username, email=email
    )
    staff.set_password(password)
    if administrator:
        staff.roles.append(administrators_role())
    db.session.add(staff)
    return staff


def ensure_first_administrator(password: str | None) -> str | None:
    """Create ``admin`` when there are no staff members yet.

    Returns the generated password when one had to be made (``password`` was
    None), so the caller can show it once; otherwise None.
    """
    if db.session.scalar(select(func.count(StaffMember.id))):
        return None

    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(12)
    create_staff("admin", password, display_name="Administrator", administrator=True)
    db.session.commit()
    log.info("Created the first administrator 'admin'")
    return generated
