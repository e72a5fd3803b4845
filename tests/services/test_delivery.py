"""The outbox and the delivery worker, against real aiosmtpd servers."""

import email
import email.policy
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import OutboxMessage
from portal.services import delivery, sending
from portal.services.access import Module, ModulePrincipal, StaffPrincipal
from portal.services.delivery import DeliveryPolicy
from tests import factories
from tests.servers.smtp import RecordingHandler

FAST = DeliveryPolicy(first_retry_seconds=0.0, max_retry_seconds=0.0, timeout=5.0)
MODULE = ModulePrincipal(Module.AUTOMATION_SERVICE)


class CountingHandler(RecordingHandler):
    """Records, besides the messages, each SMTP session that sent mail."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sessions: set[int] = set()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        self.sessions.add(id(session))
        return await super().handle_MAIL(
            server, session, envelope, address, mail_options
        )


def smtp_account(server, **fields):
    account = factories.account(**fields)
    account.settings = {
        "smtp": {
            "host": server.host,
            "port": server.port,
            "security": "none",
            "auth": "none",
            "username": "",
        },
        "read": None,
        "trusted_fingerprint": "",
    }
    db.session.flush()
    return account


def queue(account, count=1, principal=MODULE, prefix="Message"):
    rows = [
        sending.queue_message(
            principal,
            account.id,
            sending.Draft(
                to=[f"to{n}@example.com"], subject=f"{prefix} {n}", body="Hello"
            ),
        )
        for n in range(count)
    ]
    db.session.commit()
    return rows


def drain(policy=FAST, worker="test-worker", limit=50):
    for _ in range(limit):
        if not delivery.run_once(worker, policy):
            return
    raise AssertionError("the outbox did not drain")


def statuses():
    db.session.expire_all()
    return [
        row.status
        for row in db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
    ]


def test_message_is_delivered_once(app, plain_smtp):
    account = smtp_account(plain_smtp, name="Desk")
    (row,) = queue(account)
    assert row.status == "queued"

    drain()
    assert statuses() == ["sent"]
    (received,) = plain_smtp.messages
    assert received.rcpt_tos == ["to0@example.com"]
    message = email.message_from_bytes(received.content, policy=email.policy.default)
    assert message["Subject"] == "Message 0"
    db.session.refresh(row)
    assert row.attempts == 1
    assert row.server_reply.startswith("250")


def test_bcc_is_delivered_but_not_shown(app, plain_smtp):
    account = smtp_account(plain_smtp)
    draft = sending.Draft(
        to=["a@example.com"],
        cc=["c@example.com"],
        bcc=["hidden@example.com"],
        subject="S",
        body="B",
    )
    sending.queue_message(MODULE, account.id, draft)
    db.session.commit()
    drain()
    (received,) = plain_smtp.messages
    assert sorted(received.rcpt_tos) == [
        "a@example.com",
        "c@example.com",
        "hidden@example.com",
    ]
    assert b"hidden@example.com" not in received.content


def test_temporary_failure_is_retried_then_delivered_once(app, smtp_server):
    handler = RecordingHandler(data_reply="451 4.3.0 Mail system busy, try again later")
    server = smtp_server(handler=handler)
    account = smtp_account(server)
    (row,) = queue(account)

    assert delivery.run_once("w", FAST) == 1
    db.session.refresh(row)
    assert row.status == "queued"
    assert row.attempts == 1
    assert "451 4.3.0" in row.last_error
    assert handler.messages == []

    handler.data_reply = None
    drain()
    assert statuses() == ["sent"]
    assert len(handler.messages) == 1
    db.session.refresh(row)
    assert row.attempts == 2
    assert row.last_error == ""


def test_retry_waits_with_backoff(app, smtp_server):
    server = smtp_server(handler=RecordingHandler(data_reply="451 4.3.0 Busy"))
    account = smtp_account(server)
    (row,) = queue(account)
    policy = DeliveryPolicy(first_retry_seconds=60, timeout=5.0)
    before = datetime.now(UTC)
    delivery.run_once("w", policy)
    db.session.refresh(row)
    due = (
        row.next_attempt_at.replace(tzinfo=UTC)
        if row.next_attempt_at.tzinfo is None
        else row.next_attempt_at
    )
    assert before + timedelta(seconds=29) <= due <= before + timedelta(seconds=61)
    assert delivery.run_once("w", policy) == 0  # not due yet


def test_retries_stop_at_the_limit(app, smtp_server):
    server = smtp_server(handler=RecordingHandler(data_reply="451 4.3.0 Busy"))
    account = smtp_account(server)
    queue(account)
    drain(
        DeliveryPolicy(
            first_retry_seconds=0, max_retry_seconds=0, max_attempts=3, timeout=5.0
        )
    )
    (row,) = db.session.scalars(select(OutboxMessage)).all()
    assert row.status == "failed"
    assert row.attempts == 3


def test_permanent_failure_keeps_server_reply(app, smtp_server):
    handler = RecordingHandler(
        rcpt_replies={"to0@example.com": "550 5.1.1 Mailbox unavailable"}
    )
    server = smtp_server(handler=handler)
    account = smtp_account(server)
    (row,) = queue(account)
    drain()
    db.session.refresh(row)
    assert row.status == "failed"
    assert row.attempts == 1
    assert "550 5.1.1 Mailbox unavailable" in row.last_error


def test_connection_refused_is_temporary(app, closed_port):
    account = factories.account()
    account.settings = {
        "smtp": {
            "host": "127.0.0.1",
            "port": closed_port,
            "security": "none",
            "auth": "none",
        },
        "read": None,
    }
    (row,) = queue(account)
    delivery.run_once("w", FAST)
    db.session.refresh(row)
    assert row.status == "queued"
    assert "connect" in row.last_error


def test_connections_are_reused_within_a_batch(app, smtp_server):
    handler = CountingHandler()
    server = smtp_server(handler=handler)
    account = smtp_account(server)
    queue(account, count=12)
    drain(DeliveryPolicy(connections_per_account=3, timeout=5.0))
    assert len(handler.messages) == 12
    assert len(handler.sessions) == 3


def test_disabled_account_is_not_used_at_delivery(app, plain_smtp):
    account = smtp_account(plain_smtp)
    (row,) = queue(account)
    account.enabled = False
    db.session.commit()
    drain()
    db.session.refresh(row)
    assert row.status == "failed"
    assert "disabled" in row.last_error
    assert plain_smtp.messages == []


def test_withdrawn_access_is_not_used_at_delivery(app, plain_smtp):
    staff = factories.staff_member()
    account = smtp_account(plain_smtp, security="all_staff")
    (row,) = queue(account, principal=StaffPrincipal(staff.id))
    account.security = "system"  # staff may no longer send from it
    db.session.commit()
    drain()
    db.session.refresh(row)
    assert row.status == "failed"


def test_stopped_worker_loses_nothing(app, plain_smtp):
    account = smtp_account(plain_smtp)
    queue(account, count=5)
    # A worker claims the batch and dies before sending anything.
    policy = DeliveryPolicy(lease_seconds=60, timeout=5.0)
    claimed = delivery.claim_batch("dead-worker", policy)
    assert len(claimed) == 5
    assert statuses() == ["sending"] * 5

    assert delivery.run_once("new-worker", policy) == 0  # the lease still holds
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert delivery.claim_batch("new-worker", policy, now=later) == claimed
    delivery.deliver(claimed, policy)
    assert statuses() == ["sent"] * 5
    assert len(plain_smtp.messages) == 5


def test_worker_crash_mid_batch_is_recovered(app, plain_smtp, monkeypatch):
    account = smtp_account(plain_smtp)
    queue(account, count=4)
    policy = DeliveryPolicy(lease_seconds=60, connections_per_account=1, timeout=5.0)

    def crash(*args, **kwargs):
        raise SystemExit("worker killed")

    monkeypatch.setattr(delivery, "_record", crash)
    with pytest.raises(SystemExit):
        delivery.run_once("doomed", policy)
    monkeypatch.undo()
    db.session.rollback()
    assert statuses() == ["sending"] * 4

    later = datetime.now(UTC) + timedelta(seconds=61)
    ids = delivery.claim_batch("rescuer", policy, now=later)
    delivery.deliver(ids, policy)
    assert statuses() == ["sent"] * 4
    # Delivery is at least once: the crashed worker had sent before dying.
    delivered = [m.rcpt_tos[0] for m in plain_smtp.messages]
    assert sorted(set(delivered)) == [f"to{n}@example.com" for n in range(4)]


def test_two_workers_never_deliver_the_same_row(app, plain_smtp):
    account = smtp_account(plain_smtp)
    queue(account, count=120)
    policy = DeliveryPolicy(batch_size=7, connections_per_account=2, timeout=5.0)
    errors = []

    def work(name):
        try:
            with app.app_context():
                for _ in range(100):
                    if not delivery.run_once(name, policy):
                        break
        except Exception as error:  # reported below, a thread cannot fail the test
            errors.append(error)

    threads = [threading.Thread(target=work, args=(f"worker-{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert statuses() == ["sent"] * 120
    delivered = [m.rcpt_tos[0] for m in plain_smtp.messages]
    assert len(delivered) == 120
    assert len(set(delivered)) == 120


def test_queue_refuses_account_the_principal_may_not_use(app, plain_smtp):
    staff = factories.staff_member()
    account = smtp_account(plain_smtp, security="system")
    with pytest.raises(sending.SendNotAllowed):
        queue(account, principal=StaffPrincipal(staff.id))
    assert statuses() == []


@pytest.mark.parametrize(
    ("field", "draft"),
    [
        ("to", sending.Draft(to=[], subject="S", body="B")),
        ("to", sending.Draft(to=["not an address"], subject="S", body="B")),
        ("cc", sending.Draft(to=["a@example.com"], cc=["b@"], subject="S", body="B")),
        (
            "subject",
            sending.Draft(
                to=["a@example.com"], subject="Hi\r\nBcc: x@example.com", body="B"
            ),
        ),
    ],
)
def test_queue_validates_fields(app, plain_smtp, field, draft):
    account = smtp_account(plain_smtp)
    with pytest.raises(sending.MessageInvalid) as raised:
        sending.queue_message(MODULE, account.id, draft)
    assert field in raised.value.errors
    assert statuses() == []


def test_internationalised_addresses(app, plain_smtp):
    account = smtp_account(plain_smtp)
    account.from_name = "Société Générale"
    draft = sending.Draft(to=["jörg@bücher.example"], subject="Grüße", body="Hallo")
    sending.queue_message(MODULE, account.id, draft)
    db.session.commit()
    drain()
    (received,) = plain_smtp.messages
    assert received.rcpt_tos == ["jörg@xn--bcher-kva.example"]
    assert received.smtputf8
    # With SMTPUTF8 the headers travel as UTF-8 (RFC 6532) instead of encoded words.
    message = email.message_from_string(
        received.content.decode("utf-8"), policy=email.policy.default
    )
    assert message["Subject"] == "Grüße"
    assert message["From"].addresses[0].display_name == "Société Générale"
