"""Compose, the delivery log and retries."""

import logging

from sqlalchemy import select

from portal.extensions import db
from portal.models import OutboxMessage
from portal.services.preferences import set_default_account
from tests import factories
from tests.conftest import HTMX, make_staff, sign_in
from tests.services.test_delivery import FAST, drain, smtp_account


def compose_form(account_id, **overrides):
    data = {
        "account_id": str(account_id),
        "to": "first@example.com, second@example.com",
        "cc": "",
        "bcc": "",
        "subject": "Printer on floor 2",
        "body": "It is fixed.",
    }
    data.update(overrides)
    return data


def test_from_lists_only_usable_accounts_with_default_first(app, client):
    alice = make_staff("alice")
    shared = factories.account("Shared desk", security="all_staff")
    factories.account("Robots", security="system")
    factories.account("Secret", security="permissions")
    set_default_account(alice.id, shared.id)
    db.session.commit()
    sign_in(client, "alice")
    page = client.get("/compose").get_data(as_text=True)
    assert "Shared desk" in page
    assert "Robots" not in page
    assert "Secret" not in page
    assert (
        f'<option selected value="{shared.id}">' in page
        or f'value="{shared.id}" selected' in page
    )


def test_compose_queues_and_worker_delivers(app, client, plain_smtp):
    make_staff("alice")
    account = smtp_account(plain_smtp, name="Desk", security="all_staff")
    db.session.commit()
    sign_in(client, "alice")

    response = client.post("/compose", data=compose_form(account.id))
    assert response.status_code == 302
    assert response.headers["Location"] == "/deliveries"
    log_page = client.get("/deliveries").get_data(as_text=True)
    assert "Queued" in log_page
    assert 'hx-trigger="every 2s"' in log_page  # polls while pending

    drain(FAST)
    fragment = client.get("/deliveries", headers=HTMX).get_data(as_text=True)
    assert "Sent" in fragment
    assert "every 2s" not in fragment  # polling stops
    assert sorted(plain_smtp.messages[0].rcpt_tos) == [
        "first@example.com",
        "second@example.com",
    ]


def test_forged_account_is_refused_and_logged(app, client, plain_smtp, caplog):
    make_staff("alice")
    bob = make_staff("bob")
    bobs = smtp_account(plain_smtp, name="Bob's own", owner=bob)
    db.session.commit()
    sign_in(client, "alice")
    with caplog.at_level(logging.WARNING):
        response = client.post("/compose", data=compose_form(bobs.id))
    assert response.status_code == 403
    assert db.session.scalars(select(OutboxMessage)).all() == []
    assert any("may not use" in record.getMessage() for record in caplog.records)


def test_compose_errors_beside_fields_keep_values(app, client, plain_smtp):
    make_staff("alice")
    account = smtp_account(plain_smtp, security="all_staff")
    db.session.commit()
    sign_in(client, "alice")
    form = compose_form(account.id, to="nobody", subject="Line\nbreak")
    page = client.post("/compose", data=form).get_data(as_text=True)
    assert 'id="to-error"' in page
    assert 'id="subject-error"' in page
    assert "It is fixed." in page
    assert db.session.scalars(select(OutboxMessage)).all() == []


def test_staff_see_only_their_messages(app, client, plain_smtp):
    make_staff("alice")
    make_staff("bob")
    make_staff("root", administrator=True)
    account = smtp_account(plain_smtp, security="all_staff")
    db.session.commit()
    sign_in(client, "alice")
    client.post("/compose", data=compose_form(account.id, subject="From Alice"))
    sign_in(client, "bob")
    client.post("/compose", data=compose_form(account.id, subject="From Bob"))

    page = client.get("/deliveries").get_data(as_text=True)
    assert "From Bob" in page
    assert "From Alice" not in page
    sign_in(client, "root")
    page = client.get("/deliveries").get_data(as_text=True)
    assert "From Bob" in page
    assert "From Alice" in page


def test_failed_message_can_be_retried(app, client, smtp_server):
    from tests.servers.smtp import RecordingHandler

    make_staff("alice")
    handler = RecordingHandler(data_reply="554 5.6.0 Message rejected")
    account = smtp_account(smtp_server(handler=handler), security="all_staff")
    db.session.commit()
    sign_in(client, "alice")
    client.post("/compose", data=compose_form(account.id))
    drain(FAST)
    (row,) = db.session.scalars(select(OutboxMessage)).all()
    assert row.status == "failed"
    page = client.get("/deliveries").get_data(as_text=True)
    assert "554 5.6.0 Message rejected" in page
    assert "Retry" in page

    handler.data_reply = None
    assert client.post(f"/deliveries/{row.id}/retry").status_code == 302
    drain(FAST)
    db.session.refresh(row)
    assert row.status == "sent"


def test_other_staff_cannot_retry(app, client, plain_smtp):
    make_staff("alice")
    make_staff("bob")
    account = smtp_account(plain_smtp, security="all_staff")
    db.session.commit()
    sign_in(client, "alice")
    client.post("/compose", data=compose_form(account.id))
    (row,) = db.session.scalars(select(OutboxMessage)).all()
    row.status = "failed"
    db.session.commit()
    sign_in(client, "bob")
    assert client.post(f"/deliveries/{row.id}/retry").status_code == 404


def test_compose_without_accounts_explains(staff_client):
    page = staff_client.get("/compose").get_data(as_text=True)
    assert "There is no account you may send from" in page


def test_delivery_log_query_count_constant(app, client, plain_smtp):
    from tests.queries import count_queries

    make_staff("root", administrator=True)
    account = smtp_account(plain_smtp)
    sign_in(client, "root")
    client.get("/deliveries")
    counts = []
    for count in (3, 60):
        for _ in range(count):
            from portal.services import sending
            from portal.services.access import Module, ModulePrincipal

            sending.queue_message(
                ModulePrincipal(Module.WEB_PORTAL),
                account.id,
                sending.Draft(to=["a@example.com"], subject="S", body="B"),
            )
        db.session.commit()
        with count_queries() as counter:
            client.get("/deliveries")
        counts.append(counter.count)
    assert counts[0] == counts[1]
