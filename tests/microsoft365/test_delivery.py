"""Sending through Graph from the outbox: MIME sendMail, throttling, tokens, concurrency."""

import email
import time
from email import policy

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import EmailAccount, OutboxMessage
from portal.services import delivery, sending
from portal.services.access import Module, ModulePrincipal
from portal.services.delivery import DeliveryPolicy
from tests.conftest import make_staff, sign_in
from tests.microsoft365.conftest import both_databases, connect_mailbox

FAST = DeliveryPolicy(first_retry_seconds=0.0, max_retry_seconds=0.0, timeout=5.0)
MODULE = ModulePrincipal(Module.AUTOMATION_SERVICE)
HELPDESK_ID = "a1b2c3d4-0000-4000-8000-000000000003"


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    return both_databases(request, tmp_path_factory)


def graph_account(**settings) -> EmailAccount:
    account = EmailAccount(
        account_type="microsoft365",
        friendly_name="Helpdesk",
        email_address=settings.pop("email_address", "helpdesk@contoso.com"),
        from_name="Contoso Helpdesk",
        security="everyone",
        settings={
            "user_id": HELPDESK_ID,
            "mailbox": "helpdesk@contoso.com",
            "read": {"protocol": "graph", "folder": "inbox"},
        }
        | settings,
    )
    db.session.add(account)
    db.session.commit()
    return account


def queue(account, count=1, principal=MODULE, **draft):
    for number in range(count):
        sending.queue_message(
            principal,
            account.id,
            sending.Draft(
                to=draft.get("to", [f"to{number}@example.com"]),
                cc=draft.get("cc", []),
                bcc=draft.get("bcc", []),
                subject=f"Message {number}",
                body="Hello",
            ),
        )
    db.session.commit()


def run(policy=FAST) -> dict:
    ids = delivery.claim_batch("test-worker", policy)
    return delivery.deliver(ids, policy)


def rows() -> list[OutboxMessage]:
    db.session.expire_all()
    return list(db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_outbox_sends_mime_with_bcc(connected_tenant):
    account = graph_account()
    queue(
        account,
        to=["to@example.com"],
        cc=["cc@example.com"],
        bcc=["hidden@example.com"],
    )
    assert run() == {"sent": 1, "queued": 0, "failed": 0}

    (sent,) = connected_tenant.sent
    assert sent["format"] == "mime"
    assert sent["path"] == f"/v1.0/users/{HELPDESK_ID}/sendMail"
    assert sorted(sent["recipients"]) == [
        "cc@example.com",
        "hidden@example.com",
        "to@example.com",
    ]
    message = email.message_from_bytes(sent["mime"], policy=policy.default)
    assert str(message["Bcc"]) == "hidden@example.com"
    assert message["From"].addresses[0].addr_spec == "helpdesk@contoso.com"
    (row,) = rows()
    assert row.server_reply.startswith("202 Accepted")


def test_send_as_denied_fails_for_good(connected_tenant):
    account = graph_account(email_address="ceo@contoso.com", send_as="ceo@contoso.com")
    queue(account)
    assert run()["failed"] == 1
    (row,) = rows()
    assert "Send As" in row.last_error
    assert "ErrorSendAsDenied" in row.last_error


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_waits_as_told_and_retries(connected_tenant, waits, status):
    account = graph_account()
    connected_tenant.throttle(
        status=status, times=2, retry_after="2", path_contains="sendMail"
    )
    queue(account)
    assert run()["sent"] == 1
    assert waits == [2.0, 2.0]


def test_throttling_without_retry_after_backs_off(connected_tenant, waits):
    account = graph_account()
    connected_tenant.throttle(times=2, retry_after=None, path_contains="sendMail")
    queue(account)
    assert run()["sent"] == 1
    assert waits == [1.0, 2.0]


def test_retries_are_bounded_then_outbox_retries(connected_tenant, waits):
    account = graph_account()
    connected_tenant.throttle(times=10, retry_after="1", path_contains="sendMail")
    queue(account)
    assert run() == {"sent": 0, "queued": 1, "failed": 0}
    assert waits == [1.0, 1.0, 1.0]  # MICROSOFT_GRAPH_MAX_RETRIES is 3
    (row,) = rows()
    assert "throttled the requests for helpdesk@contoso.com" in row.last_error
    assert "retried later" in row.last_error


def test_too_long_retry_after_is_left_to_the_outbox(connected_tenant, waits):
    account = graph_account()
    connected_tenant.throttle(times=1, retry_after="120", path_contains="sendMail")
    queue(account)
    assert run()["queued"] == 1
    assert waits == []
    assert "asked to wait 120 s more" in rows()[0].last_error


def test_retry_after_is_really_waited(connected_tenant):
    account = graph_account()
    connected_tenant.throttle(times=1, retry_after="1", path_contains="sendMail")
    queue(account)
    started = time.monotonic()
    assert run()["sent"] == 1
    assert time.monotonic() - started >= 1.0


def test_expired_token_is_refreshed_once(connected_tenant):
    account = graph_account()
    queue(account, count=8)
    connected_tenant.expire_tokens()
    before = connected_tenant.token_count("client_credentials")
    policy = DeliveryPolicy(
        first_retry_seconds=0.0, timeout=5.0, connections_per_account=8
    )
    assert run(policy)["sent"] == 8
    # Eight sends met the expired token at once; one fetched a new one.
    assert connected_tenant.token_count("client_credentials") == before + 1


def test_token_rejected_after_refresh_fails(connected_tenant):
    account = graph_account()
    queue(account)
    connected_tenant.tokens_valid_after = time.time() + 3600
    assert run()["failed"] == 1
    assert "rejected the portal's token even after a fresh one" in rows()[0].last_error


def test_revoked_consent_names_the_permission(connected_tenant):
    from portal.integrations.microsoft_tokens import CACHE

    account = graph_account()
    queue(account)
    connected_tenant.revoke_consent()
    CACHE.clear()
    assert run()["failed"] == 1
    error = rows()[0].last_error
    assert "Mail.Send" in error
    assert "Grant consent" in error


def test_at_most_four_requests_per_mailbox(connected_tenant):
    account = graph_account()
    connected_tenant.send_delay = 0.15
    queue(account, count=12)
    policy = DeliveryPolicy(
        first_retry_seconds=0.0, timeout=5.0, connections_per_account=8
    )
    assert run(policy)["sent"] == 12
    assert connected_tenant.max_in_flight[HELPDESK_ID] == 4
    # No request met Outlook's MailboxConcurrency limit, so none was repeated.
    sends = [
        r for r in connected_tenant.graph_requests if r["path"].endswith("/sendMail")
    ]
    assert len(sends) == 12


def test_missing_mailbox_fails_for_good(connected_tenant):
    account = graph_account(
        user_id="a1b2c3d4-0000-4000-8000-000000000004", mailbox="olga@contoso.com"
    )
    queue(account)
    assert run()["failed"] == 1
    assert "MailboxNotEnabledForRESTAPI" in rows()[0].last_error


def test_tenant_not_connected_fails_without_crashing(microsoft_app, microsoft_fake):
    account = graph_account()
    queue(account)
    assert run()["failed"] == 1
    assert "not connected" in rows()[0].last_error


def test_personal_refresh_race_refreshes_once(client, connected_tenant):
    staff = make_staff("alice", email="alice@contoso.com")
    sign_in(client, "alice")
    connect_mailbox(client, connected_tenant)
    account = db.session.scalar(
        select(EmailAccount).filter_by(account_type="microsoft365")
    )
    from portal.services.access import StaffPrincipal

    queue(account, count=6, principal=StaffPrincipal(staff.id))
    connected_tenant.expire_tokens()
    policy = DeliveryPolicy(
        first_retry_seconds=0.0, timeout=5.0, connections_per_account=6
    )
    assert run(policy)["sent"] == 6
    assert connected_tenant.token_count("refresh_token") == 1
    assert all(sent["path"] == "/v1.0/me/sendMail" for sent in connected_tenant.sent)
