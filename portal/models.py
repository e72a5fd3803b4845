"""Database models.

Models never commit: the view or service that changes them commits once.
"""

from datetime import UTC, datetime

from flask import current_app
from flask_login import UserMixin
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from .extensions import db


def utcnow() -> datetime:
    return datetime.now(UTC)


staff_role = Table(
    "staff_role",
    db.metadata,
    Column(
        "staff_id",
        ForeignKey("staff_member.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "role_id",
        ForeignKey("role.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)


staff_skillgroup = Table(
    "staff_skillgroup",
    db.metadata,
    Column(
        "staff_id",
        ForeignKey("staff_member.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "skillgroup_id",
        ForeignKey("skillgroup.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)


class Skillgroup(db.Model):
    """A team of staff members, such as "Second line" or "Networks"."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)

    members: Mapped[list["StaffMember"]] = relationship(
        secondary=staff_skillgroup, back_populates="skillgroups"
    )


# Group and role names are unique whatever their case.
Index("uq_skillgroup_lower_name", func.lower(Skillgroup.name), unique=True)


class Role(db.Model):
    """An application security role; administrator rights come from a role."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    grants_administration: Mapped[bool] = mapped_column(Boolean, default=False)

    members: Mapped[list["StaffMember"]] = relationship(
        secondary=staff_role, back_populates="roles"
    )


Index("uq_role_lower_name", func.lower(Role.name), unique=True)

ADMINISTRATORS_ROLE = "Administrators"


class StaffMember(UserMixin, db.Model):
    __tablename__ = "staff_member"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow
    )

    roles: Mapped[list[Role]] = relationship(
        secondary=staff_role, back_populates="members", lazy="selectin"
    )
    skillgroups: Mapped[list[Skillgroup]] = relationship(
        secondary=staff_skillgroup, back_populates="members"
    )

    @property
    def is_active(self) -> bool:  # read by Flask-Login
        return self.active

    @property
    def is_administrator(self) -> bool:
        return any(role.grants_administration for role in self.roles)

    def set_password(self, password: str) -> None:
        method = current_app.config.get("PASSWORD_HASH_METHOD", "scrypt")
        self.password_hash = generate_password_hash(password, method=method)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def __repr__(self) -> str:
        return f"<StaffMember {self.username}>"


class EmailAccount(db.Model):
    """The portal's record of a mail source: a personal or a global account.

    ``owner_id`` is set for personal accounts and null for global ones.
    Type-specific settings that are not secret live in ``settings``; secrets
    live encrypted in ``AccountSecret`` rows.
    """

    __tablename__ = "email_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff_member.id", ondelete="CASCADE"), index=True
    )
    account_type: Mapped[str] = mapped_column(String(20))
    friendly_name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(String(500), default="")
    email_address: Mapped[str] = mapped_column(String(320))
    from_name: Mapped[str] = mapped_column(String(200), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Who may use a global account: one of ``Security``; ignored for personal ones.
    security: Mapped[str] = mapped_column(String(20), default="everyone")
    # Incremented by every save from the account form, so a save based on an
    # older copy of the account can be detected.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    last_send_test_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_send_test_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_send_test_summary: Mapped[str] = mapped_column(String(500), default="")
    last_read_test_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_read_test_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_read_test_summary: Mapped[str] = mapped_column(String(500), default="")

    owner: Mapped[StaffMember | None] = relationship(foreign_keys=[owner_id])
    secrets: Mapped[list["AccountSecret"]] = relationship(
        back_populates="account", cascade="all, delete-orphan"
    )

    @property
    def is_personal(self) -> bool:
        return self.owner_id is not None

    def secret_names(self) -> set[str]:
        return {secret.name for secret in self.secrets}


# Friendly names are unique per owner, and among global accounts, whose owner is
# null; coalesce turns null into one comparable key, and lower() ignores case.
Index(
    "uq_email_account_owner_name",
    func.coalesce(EmailAccount.owner_id, 0),
    func.lower(EmailAccount.friendly_name),
    unique=True,
)


class AccountSecret(db.Model):
    """One encrypted secret of an account (a password, a token)."""

    __tablename__ = "account_secret"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("email_account.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(50))
    ciphertext: Mapped[str] = mapped_column(Text)

    account: Mapped[EmailAccount] = relationship(back_populates="secrets")


class AccountGrant(db.Model):
    """Permission for a skillgroup, a role or one staff member to use a global
    account whose security is "Staff members via permissions".

    Exactly one of the three targets is set.
    """

    __tablename__ = "account_grant"
    __table_args__ = (
        CheckConstraint(
            "(CASE WHEN skillgroup_id IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN role_id IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN staff_id IS NULL THEN 0 ELSE 1 END) = 1",
            name="ck_account_grant_one_target",
        ),
        UniqueConstraint("account_id", "skillgroup_id", "role_id", "staff_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("email_account.id", ondelete="CASCADE"), index=True
    )
    skillgroup_id: Mapped[int | None] = mapped_column(
        ForeignKey("skillgroup.id", ondelete="CASCADE"), index=True
    )
    role_id: Mapped[int | None] = mapped_column(
        ForeignKey("role.id", ondelete="CASCADE"), index=True
    )
    staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff_member.id", ondelete="CASCADE"), index=True
    )


class DefaultAccount(db.Model):
    """The account preselected as From when a staff member sends.

    Deleting the account deletes this row, so no default points at a
    missing account.
    """

    __tablename__ = "staff_default_account"

    staff_id: Mapped[int] = mapped_column(
        ForeignKey("staff_member.id", ondelete="CASCADE"), primary_key=True
    )
    account_id: Mapped[int] = mapped_column(
        ForeignKey("email_account.id", ondelete="CASCADE"), index=True
    )


class Setting(db.Model):
    """A portal-wide setting, stored as text under a fixed key."""

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class OutboxMessage(db.Model):
    """A message waiting for, or done with, delivery by the worker.

    ``status`` moves from queued to sending (claimed by a worker until
    ``lease_expires_at``) and on to sent or failed; a temporary failure puts
    it back to queued with a later ``next_attempt_at``. A worker that dies
    leaves its rows in sending, and they are claimed again once the lease
    expires.
    """

    __tablename__ = "outbox_message"
    __table_args__ = (Index("ix_outbox_message_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("email_account.id", ondelete="SET NULL"), index=True
    )
    # Who queued it: a staff member, or a module by its name.
    staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff_member.id", ondelete="SET NULL"), index=True
    )
    module: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(10), default="queued")
    sender: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(String(998), default="")
    mime: Mapped[bytes] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow
    )
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    last_error: Mapped[str] = mapped_column(String(1000), default="")
    server_reply: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow
    )
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    account: Mapped[EmailAccount | None] = relationship()


class ModuleAccount(db.Model):
    """The account a helpdesk module sends through.

    Deleting the account deletes the assignment, so no module is left
    pointing at a missing account.
    """

    __tablename__ = "module_account"

    module: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("email_account.id", ondelete="CASCADE"), index=True
    )


class EmailTemplate(db.Model):
    """A message with placeholders that modules fill in and send."""

    __tablename__ = "email_template"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    subject: Mapped[str] = mapped_column(String(998))
    body: Mapped[str] = mapped_column(Text)
    # Sends from this account instead of the sending module's own account.
    from_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("email_account.id", ondelete="SET NULL"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    from_account: Mapped[EmailAccount | None] = relationship()


class Integration(db.Model):
    """The portal's connection to a cloud directory: a Microsoft 365 tenant or
    a Google Workspace. ``kind`` names it; non-secret settings live in
    ``settings`` and secrets, encrypted, in ``IntegrationSecret`` rows."""

    __tablename__ = "integration"

    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    secrets: Mapped[list["IntegrationSecret"]] = relationship(
        back_populates="integration", cascade="all, delete-orphan"
    )


class IntegrationSecret(db.Model):
    """One encrypted secret of an integration (a client secret, a key)."""

    __tablename__ = "integration_secret"
    __table_args__ = (UniqueConstraint("kind", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(
        ForeignKey("integration.kind", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(50))
    ciphertext: Mapped[str] = mapped_column(Text)

    integration: Mapped[Integration] = relationship(back_populates="secrets")


class AuditEvent(db.Model):
    """One recorded action: who, when, from where, on what, what changed, and
    the outcome. Secrets appear in ``changes`` only as changed, never as values.
    The portal never updates or deletes these rows."""

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff_member.id", ondelete="SET NULL"), index=True
    )
    # Kept as text too, so the record still names the person after they are deleted.
    username: Mapped[str] = mapped_column(String(64), default="")
    remote_addr: Mapped[str] = mapped_column(String(45), default="")
    action: Mapped[str] = mapped_column(String(50), index=True)
    object_type: Mapped[str] = mapped_column(String(30), default="", index=True)
    object_id: Mapped[str] = mapped_column(String(50), default="")
    object_label: Mapped[str] = mapped_column(String(200), default="")
    changes: Mapped[dict] = mapped_column(JSON, default=dict)
    outcome: Mapped[str] = mapped_column(String(20), default="success")
    detail: Mapped[str] = mapped_column(String(1000), default="")
