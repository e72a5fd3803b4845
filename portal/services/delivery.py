"""The delivery worker: claim queued outbox rows, send them, record the outcome.

Several workers (threads or processes) may run at once. A claim is one
UPDATE ... RETURNING statement whose inner SELECT locks rows with FOR UPDATE
SKIP LOCKED on PostgreSQL; SQLite runs each write statement alone. Either way
a row is claimed by one worker. A claim is a lease: a worker that dies leaves
its rows in ``sending``, and another worker takes them once the lease expires.

Delivery is at least once: a worker that dies after the server accepted a
message but before it recorded that sends the message again after the lease.
"""

import asyncio
import email
import functools
import logging
import os
import random
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry

from flask import Flask, current_app
from sqlalchemy import and_, or_, select, update

from ..extensions import db
from ..models import EmailAccount, OutboxMessage
from ..transports import destinations
from ..transports.base import TransportError
from . import access, outbound, senders

log = logging.getLogger(__name__)

QUEUED, SENDING, SENT, FAILED = "queued", "sending", "sent", "failed"


@dataclass(frozen=True)
class DeliveryPolicy:
    batch_size: int = 500
    max_attempts: int = 6
    first_retry_seconds: float = 30.0
    max_retry_seconds: float = 3600.0
    lease_seconds: float = 300.0
    # Connections opened to one account's server at once; each is reused
    # for its share of the batch.
    connections_per_account: int = 4
    timeout: float = 30.0

    @classmethod
    def from_config(cls, config) -> "DeliveryPolicy":
        return cls(
            batch_size=int(config.get("DELIVERY_BATCH_SIZE", cls.batch_size)),
            max_attempts=int(config.get("DELIVERY_MAX_ATTEMPTS", cls.max_attempts)),
            first_retry_seconds=float(
                config.get("DELIVERY_FIRST_RETRY_SECONDS", cls.first_retry_seconds)
            ),
            lease_seconds=float(
                config.get("DELIVERY_LEASE_SECONDS", cls.lease_seconds)
            ),
            connections_per_account=int(
                config.get(
                    "DELIVERY_CONNECTIONS_PER_ACCOUNT", cls.connections_per_account
                )
            ),
            timeout=float(config.get("SMTP_TIMEOUT", cls.timeout)),
        )

    def retry_delay(self, attempts: int) -> float:
        """Exponential backoff with full jitter: up to first * 2**(attempts-1) seconds."""
        ceiling = min(
            self.max_retry_seconds, self.first_retry_seconds * 2 ** (attempts - 1)
        )
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not security)


@dataclass
class Outcome:
    status: str  # SENT, QUEUED (retry later) or FAILED
    reply: str = ""
    error: str = ""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def claim_batch(
    worker: str, policy_: DeliveryPolicy, now: datetime | None = None
) -> list[int]:
    """Claim up to a batch of due rows for ``worker`` and return their ids."""
    now = now or datetime.now(UTC)
    due = or_(
        and_(OutboxMessage.status == QUEUED, OutboxMessage.next_attempt_at <= now),
        and_(OutboxMessage.status == SENDING, OutboxMessage.lease_expires_at < now),
    )
    candidates = (
        select(OutboxMessage.id)
        .where(due)
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(policy_.batch_size)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(candidates.scalar_subquery()), due)
        .values(
            status=SENDING,
            claimed_by=worker,
            lease_expires_at=now + timedelta(seconds=policy_.lease_seconds),
        )
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False)
    )
    ids = list(db.session.scalars(statement))
    db.session.commit()
    return ids


class _CachingHeaderRegistry(HeaderRegistry):
    """A header factory that reuses the header object for a repeated name and value.

    The email package parses a header's value again each time the header is
    read, and sending one message reads Content-Type several times and each
    address header twice. Header objects are immutable, so sharing one is safe.
    Values that are not plain strings (lists of addresses) are not cached.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        super().__init__()
        self._cached = functools.lru_cache(maxsize=max_entries)(super().__call__)

    def __call__(self, name: str, value) -> BaseHeader:
        if type(value) is str:
            return self._cached(name, value)
        return super().__call__(name, value)


_PARSE_POLICY = policy.default.clone(header_factory=_CachingHeaderRegistry())


def _parse(row: OutboxMessage) -> email.message.EmailMessage:
    return email.message_from_bytes(row.mime, policy=_PARSE_POLICY)


async def _send_share(
    connection, rows: list[OutboxMessage], outcomes: dict, guard
) -> None:
    """Send ``rows`` one after another over one connection.

    A transport that can send the stored bytes as they are (``send_bytes``)
    gets them; parsing and re-serialising a message costs more than sending
    it. It returns None when the server needs the message re-encoded.
    """
    destinations.set_guard(guard)  # this task's connections only
    send_bytes = getattr(connection, "send_bytes", None)
    try:
        async with connection:
            for row in rows:
                try:
                    result = None
                    if send_bytes is not None:
                        result = await send_bytes(
                            row.mime, sender=row.sender, recipients=row.recipients
                        )
                    if result is None:
                        result = await connection.send(
                            _parse(row), sender=row.sender, recipients=row.recipients
                        )
                except TransportError as error:
                    outcomes[row.id] = (error, None)
                else:
                    outcomes[row.id] = (None, result)
    except TransportError as error:
        # Opening (or reopening) the connection failed: every row not yet
        # sent gets this error.
        for row in rows:
            outcomes.setdefault(row.id, (error, None))


async def _send_all(jobs: list[tuple]) -> dict:
    outcomes: dict = {}
    await asyncio.gather(
        *(
            _send_share(connection, rows, outcomes, guard)
            for connection, rows, guard in jobs
        )
    )
    return outcomes


def _principal(row: OutboxMessage) -> access.Principal | None:
    if row.staff_id is not None:
        return access.StaffPrincipal(row.staff_id)
    if row.module:
        try:
            return access.ModulePrincipal(access.Module(row.module))
        except ValueError:
            return None
    return None


def deliver(ids: list[int], policy_: DeliveryPolicy) -> dict[str, int]:
    """Send the claimed rows and record each outcome; returns counts by status."""
    rows = list(
        db.session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(ids)))
    )
    outcomes: dict[int, Outcome] = {}
    by_account: dict[int, list[OutboxMessage]] = defaultdict(list)

    # The rule applies again at delivery: an account disabled or withdrawn
    # since the message was queued does not send it.
    allowed: dict[tuple, bool] = {}
    for row in rows:
        principal = _principal(row)
        key = (principal, row.account_id)
        if row.account_id is None or principal is None:
            allowed[key] = False
        elif key not in allowed:
            allowed[key] = access.may_use(principal, row.account_id)
        if not allowed[key]:
            outcomes[row.id] = Outcome(
                FAILED,
                error="Not sent: the account was deleted or disabled, or the sender may no longer use it.",
            )
        else:
            by_account[row.account_id].append(row)

    jobs = []
    outbound_policy = outbound.load_policy()
    guards = {
        personal: outbound.guard_for(personal, outbound_policy)
        for personal in (True, False)
    }
    for account_id, account_rows in by_account.items():
        account = db.session.get(EmailAccount, account_id)
        try:
            opener_of_type = senders.opener_for(account)
        except KeyError:
            for row in account_rows:
                outcomes[row.id] = Outcome(
                    FAILED,
                    error=f"Accounts of type {account.account_type!r} cannot send yet.",
                )
            continue
        # Connections are built here, outside the event loop, because
        # building one reads and decrypts the account's secrets.
        shares = min(policy_.connections_per_account, len(account_rows))
        for index in range(shares):
            connection = opener_of_type(account, policy_.timeout)
            jobs.append(
                (connection, account_rows[index::shares], guards[account.is_personal])
            )

    rows_by_id = {row.id: row for row in rows}
    for row_id, (error, result) in asyncio.run(_send_all(jobs)).items():
        row = rows_by_id[row_id]
        if error is None:
            outcomes[row_id] = Outcome(SENT, reply=result.reply)
        elif error.temporary and row.attempts + 1 < policy_.max_attempts:
            outcomes[row_id] = Outcome(QUEUED, error=_describe(error))
        else:
            outcomes[row_id] = Outcome(FAILED, error=_describe(error))

    return _record(rows, outcomes, policy_)


def _describe(error: TransportError) -> str:
    parts = [f"{error.step} step: {error.summary}"]
    if error.reply:
        parts.append(f"Server reply: {error.reply}")
    if error.advice:
        parts.append(error.advice)
    return " ".join(parts)[:1000]


def _record(
    rows: list[OutboxMessage], outcomes: dict[int, Outcome], policy_: DeliveryPolicy
) -> dict[str, int]:
    now = datetime.now(UTC)
    counts = {SENT: 0, QUEUED: 0, FAILED: 0}
    for row in rows:
        outcome = outcomes[row.id]
        row.attempts += 1
        row.status = outcome.status
        row.lease_expires_at = None
        row.claimed_by = None
        counts[outcome.status] += 1
        if outcome.status == SENT:
            row.sent_at = now
            row.server_reply = outcome.reply[:500]
            row.last_error = ""
        else:
            row.last_error = outcome.error
            if outcome.status == QUEUED:
                delay = policy_.retry_delay(row.attempts)
                row.next_attempt_at = now + timedelta(seconds=delay)
                log.info(
                    "Message %s from account %s will be retried in %.0f s: %s",
                    row.id,
                    row.account_id,
                    delay,
                    outcome.error,
                )
            else:
                log.warning(
                    "Message %s from account %s failed: %s",
                    row.id,
                    row.account_id,
                    outcome.error,
                )
    db.session.commit()
    return counts


def run_once(worker: str | None = None, policy_: DeliveryPolicy | None = None) -> int:
    """Claim and deliver one batch; returns the number of rows handled."""
    policy_ = policy_ or DeliveryPolicy.from_config(current_app.config)
    ids = claim_batch(worker or worker_name(), policy_)
    if not ids:
        return 0
    counts = deliver(ids, policy_)
    log.info("Delivered a batch of %d: %s", len(ids), counts)
    return len(ids)


def retry_message(row: OutboxMessage) -> None:
    """Queue a failed message again, due now; the caller commits."""
    row.status = QUEUED
    row.next_attempt_at = datetime.now(UTC)
    row.attempts = 0
    row.last_error = ""


class DeliveryWorker(threading.Thread):
    """Runs ``run_once`` in a loop until stopped; sleeps while there is nothing to do."""

    def __init__(self, app: Flask, poll_seconds: float = 2.0) -> None:
        super().__init__(name="delivery-worker", daemon=True)
        self.app = app
        self.poll_seconds = poll_seconds
        self.stopping = threading.Event()

    def run(self) -> None:
        log.info("Delivery worker started")
        name = worker_name()
        while not self.stopping.is_set():
            try:
                with self.app.app_context():
                    handled = run_once(name)
            except Exception:
                # A database outage must not end the worker; it tries again
                # after the pause.
                log.exception("Delivery batch failed; retrying after a pause")
                handled = 0
            if not handled:
                self.stopping.wait(self.poll_seconds)
        log.info("Delivery worker stopped")

    def stop(self, timeout: float | None = 10.0) -> None:
        self.stopping.set()
        self.join(timeout)
