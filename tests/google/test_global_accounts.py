"""Global Google accounts: search and pick, tests, aliases, save and delivery."""

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.integrations import google as integration
from portal.models import EmailAccount, OutboxMessage
from portal.services import delivery, sending
from portal.services.access import Module, ModulePrincipal
from portal.services.delivery import DeliveryPolicy
from tests.conftest import HTMX, version_fields
from tests.google.conftest import connect_workspace

ACCOUNTS = "/admin/email-accounts"
NEW = f"{ACCOUNTS}/new/google"
SEARCH = f"{ACCOUNTS}/google/mailboxes"
FAST = DeliveryPolicy(first_retry_seconds=0.0, max_retry_seconds=0.0, timeout=5.0)


def google_form(**overrides):
    data = {
        "mailbox": "helpdesk@example.com",
        "from_address": "",
        "q": "",
        "test_to": "someone@example.net",
        "friendly_name": "Helpdesk (Google)",
        "description": "",
        "from_name": "The Helpdesk",
        "enabled": "y",
        "security": "everyone",
        "action": "save",
    }
    data.update(overrides)
    return {name: value for name, value in data.items() if value is not None}


def run_test(client, **overrides):
    response = client.post(
        NEW, data=google_form(action="test-send", **overrides), headers=HTMX
    )
    assert response.status_code == 200
    return response.get_data(as_text=True)


def save(client, **overrides):
    client.post(NEW, data=google_form(**overrides))
    return db.session.scalars(select(EmailAccount)).one_or_none()


# -- availability and search ------------------------------------------------------


def test_type_waits_for_workspace_connection(admin_client, google):
    page = admin_client.get(f"{ACCOUNTS}/new").get_data(as_text=True)
    assert "Connect the Google Workspace first" in page
    assert "/admin/integrations/google" in page
    assert admin_client.get(NEW).status_code == 403


def test_search_as_you_type_lists_names_and_addresses(admin_client, workspace):
    fragment = admin_client.get(SEARCH, query_string={"q": "h"}, headers=HTMX).get_data(
        as_text=True
    )

    assert "<html" not in fragment
    assert "Help Desk" in fragment
    assert "helpdesk@example.com" in fragment
    assert "Hannah Hill" in fragment
    assert "suspended" in fragment  # harry@example.com
    assert "admin@example.com" not in fragment
    request = workspace.directory_requests[-1]
    assert request["query"] == "email:h*"
    assert request["customer"] == "my_customer"
    tokens = [
        r for r in workspace.token_requests if r["grant_type"].endswith("jwt-bearer")
    ]
    assert tokens[-1]["claims"]["sub"] == "admin@example.com"
    assert tokens[-1]["claims"]["scope"] == integration.SCOPE_DIRECTORY


def test_search_pages_through_results(admin_client, workspace):
    for number in range(25):
        workspace.add_user(f"team{number:02d}@example.com", f"Team {number}")

    first = admin_client.get(SEARCH, query_string={"q": "team"}, headers=HTMX).get_data(
        as_text=True
    )
    assert first.count('name="pick"') == 20
    assert "More results" in first
    token = workspace.directory_requests[-1]
    assert token["maxResults"] == "20"

    page_token = first.split("page_token=")[1].split('"')[0].replace("&amp;", "&")
    second = admin_client.get(
        f"{SEARCH}?q=team&page_token={page_token}", headers=HTMX
    ).get_data(as_text=True)
    assert second.count('name="pick"') == 5
    assert "team24@example.com" in second
    assert "More results" not in second
    assert "<ul" not in second  # appended inside the first page's list


def test_search_strips_query_syntax(admin_client, workspace):
    admin_client.get(SEARCH, query_string={"q": "he lp'* desk"}, headers=HTMX)
    assert workspace.directory_requests[-1]["query"] == "email:helpdesk*"


def test_search_without_javascript_and_pick(admin_client, workspace):
    page = admin_client.post(
        NEW, data=google_form(mailbox="", q="help", action="search")
    ).get_data(as_text=True)
    assert "<html" in page
    assert "helpdesk@example.com" in page

    picked = admin_client.post(
        NEW, data=google_form(mailbox="", pick="helpdesk@example.com"), headers=HTMX
    )
    fragment = picked.get_data(as_text=True)
    assert 'value="helpdesk@example.com"' in fragment
    assert 'id="account-form"' in fragment


def test_search_reports_missing_directory_rights(admin_client, google):
    connect_workspace(google, admin="hannah@example.com")
    fragment = admin_client.get(SEARCH, query_string={"q": "h"}, headers=HTMX).get_data(
        as_text=True
    )
    assert "may not read the Google Workspace directory" in fragment
    assert "Users › Read" in fragment


# -- tests and save ----------------------------------------------------------------------


def test_test_send_arrives_at_gmail(admin_client, workspace):
    fragment = run_test(admin_client)

    assert "Test send succeeded" in fragment
    assert "Gmail accepted the message as helpdesk@example.com" in fragment
    (sent,) = workspace.sent
    assert sent.mailbox == "helpdesk@example.com"
    assert sent.recipients == ["someone@example.net"]
    assert sent.message["From"].addresses[0].addr_spec == "helpdesk@example.com"
    assert sent.message["From"].addresses[0].display_name == "The Helpdesk"
    assert sent.message["Subject"] == "Test message from the email account portal"
    claims = workspace.token_requests[-1]["claims"]
    assert claims["sub"] == "helpdesk@example.com"
    assert claims["scope"] == integration.SCOPE_SEND


def test_test_send_from_verified_alias(admin_client, workspace):
    fragment = run_test(admin_client, from_address="support@example.com")
    assert "Test send succeeded" in fragment
    assert (
        workspace.sent[0].message["From"].addresses[0].addr_spec
        == "support@example.com"
    )


@pytest.mark.parametrize("address", ["pending@example.com", "other@example.com"])
def test_test_send_from_unusable_alias_lists_aliases(admin_client, workspace, address):
    fragment = run_test(admin_client, from_address=address)

    assert "failed at the sender step" in fragment
    assert f"{address} is not a send-as address of helpdesk@example.com" in fragment
    assert "helpdesk@example.com, support@example.com" in fragment
    assert "Not yet verified: pending@example.com" in fragment
    assert workspace.sent == []


def test_save_checks_alias_beside_field(admin_client, workspace):
    response = admin_client.post(
        NEW, data=google_form(from_address="other@example.com")
    )
    page = response.get_data(as_text=True)
    assert "from_address-error" in page
    assert "support@example.com" in page
    assert db.session.scalars(select(EmailAccount)).all() == []


def test_save_stores_mailbox_and_from(admin_client, workspace):
    account = save(admin_client, from_address="support@example.com", read_mail="y")

    assert account.account_type == "google"
    assert account.owner_id is None
    assert account.email_address == "support@example.com"
    assert account.settings == {
        "mailbox": "helpdesk@example.com",
        "auth": "delegation",
        "read": True,
    }
    assert account.secrets == []
    page = admin_client.get(ACCOUNTS).get_data(as_text=True)
    assert "Google Workspace" in page

    edit = admin_client.get(f"{ACCOUNTS}/{account.id}").get_data(as_text=True)
    assert 'value="support@example.com"' in edit
    assert 'value="helpdesk@example.com"' in edit


def test_concurrent_edit_is_refused_with_changes(admin_client, workspace):
    account = save(admin_client)
    url = f"{ACCOUNTS}/{account.id}"
    opened = version_fields(admin_client.get(url).get_data(as_text=True))

    # Another tab (or person) saves first.
    first = google_form(from_address="support@example.com", **opened)
    assert admin_client.post(url, data=first).status_code == 302

    second = google_form(description="My edit", **opened)
    response = admin_client.post(url, data=second)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Someone else saved this account" in page
    assert "From address: support@example.com" in page
    assert "My edit" in page  # the typed value stays
    db.session.refresh(account)
    assert account.description == ""
    assert account.email_address == "support@example.com"
    assert account.version == 2

    # Saving again from the refreshed form replaces theirs.
    third = {**second, **version_fields(page)}
    assert admin_client.post(url, data=third).status_code == 302
    db.session.refresh(account)
    assert account.description == "My edit"
    assert account.email_address == "helpdesk@example.com"
    assert account.version == 3


@pytest.mark.parametrize("address", ["someone@gmail.com", "someone@googlemail.com"])
def test_consumer_mailbox_refused(admin_client, workspace, address):
    before = len(workspace.token_requests)
    fragment = admin_client.post(
        NEW, data=google_form(mailbox=address, action="test-send"), headers=HTMX
    ).get_data(as_text=True)
    assert "consumer Gmail address" in fragment
    assert "mailbox-error" in fragment
    admin_client.post(NEW, data=google_form(mailbox=address))
    assert db.session.scalars(select(EmailAccount)).all() == []
    assert len(workspace.token_requests) == before


def test_test_read_counts_inbox(admin_client, workspace):
    response = admin_client.post(
        NEW, data=google_form(action="test-read"), headers=HTMX
    )
    fragment = response.get_data(as_text=True)
    assert "Test read succeeded" in fragment
    assert "Opened the inbox of helpdesk@example.com: 7 messages." in fragment
    assert workspace.token_requests[-1]["claims"]["scope"] == integration.SCOPE_READ


# -- errors with cause and fix --------------------------------------------------------------


def test_delegation_not_authorised_names_client_id(admin_client, google):
    key_file = connect_workspace(google, scopes=(integration.SCOPE_DIRECTORY,))
    fragment = run_test(admin_client)
    assert "failed at the authentication step" in fragment
    assert "Domain-wide delegation is not authorised" in fragment
    assert key_file["client_id"] in fragment
    assert "unauthorized_client" in fragment
    assert key_file["private_key_id"] not in fragment


def test_insufficient_scope_is_explained(admin_client, workspace):
    workspace.fail_next(
        "gmail.users.messages.send",
        403,
        "insufficientPermissions",
        "Request had insufficient authentication scopes.",
    )
    fragment = run_test(admin_client)
    assert "lacks the scope https://www.googleapis.com/auth/gmail.send" in fragment
    assert "Domain-wide delegation" in fragment


def test_mailbox_not_found(admin_client, workspace):
    fragment = run_test(admin_client, mailbox="nobody@example.com")
    assert "failed at the sender step" in fragment
    assert "Google Workspace has no user nobody@example.com" in fragment
    assert "Invalid email or User ID" in fragment


def test_mailbox_without_gmail(admin_client, workspace):
    workspace.users["hannah@example.com"].gmail_enabled = False
    fragment = run_test(admin_client, mailbox="hannah@example.com")
    assert "Gmail has no mailbox for hannah@example.com" in fragment
    assert "licence" in fragment


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (429, "rateLimitExceeded"),
        (403, "userRateLimitExceeded"),
        (403, "rateLimitExceeded"),
        (503, "backendError"),
    ],
)
def test_rate_limit_is_retried_then_sent(admin_client, workspace, status, reason):
    workspace.fail_next("gmail.users.messages.send", status, reason, times=2)
    fragment = run_test(admin_client)
    assert "Test send succeeded" in fragment
    assert len(workspace.sent) == 1


def test_rate_limit_gives_up_after_bounded_retries(admin_client, workspace, app):
    workspace.fail_next(
        "gmail.users.messages.send",
        403,
        "userRateLimitExceeded",
        "User Rate Limit Exceeded",
        times=10,
    )
    fragment = run_test(admin_client)
    assert "rate limit for helpdesk@example.com was exceeded" in fragment
    assert "403 userRateLimitExceeded: User Rate Limit Exceeded" in fragment
    assert workspace.sent == []
    # One try and three retries.
    assert len(workspace._failures["gmail.users.messages.send"]) == 10 - 4


def test_long_retry_after_is_not_waited_for(admin_client, workspace):
    workspace.fail_next(
        "gmail.users.messages.send",
        429,
        "rateLimitExceeded",
        headers={"Retry-After": "3600"},
        times=5,
    )
    fragment = run_test(admin_client)
    assert "Google asked to wait 3600 s" in fragment
    assert len(workspace._failures["gmail.users.messages.send"]) == 4


def test_daily_sending_limit_is_not_retried(admin_client, workspace):
    workspace.fail_next(
        "gmail.users.messages.send",
        429,
        "rateLimitExceeded",
        "User-rate limit exceeded (Mail sending). Retry after 2099-01-01T00:00:00.000Z",
        times=3,
    )
    fragment = run_test(admin_client)
    assert "daily sending limit" in fragment
    assert len(workspace._failures["gmail.users.messages.send"]) == 2


# -- delivery through the outbox -----------------------------------------------------------


def test_outbox_delivers_through_gmail_with_bcc(app, workspace, admin_client):
    account = save(admin_client)
    sending.queue_message(
        ModulePrincipal(Module.AUTOMATION_SERVICE),
        account.id,
        sending.Draft(
            to=["to@example.net"],
            cc=["cc@example.net"],
            bcc=["hidden@example.net"],
            subject="Ticket 42",
            body="Hello",
        ),
    )
    db.session.commit()

    assert delivery.run_once("test-worker", FAST) == 1

    (sent,) = workspace.sent
    assert sorted(sent.recipients) == [
        "cc@example.net",
        "hidden@example.net",
        "to@example.net",
    ]
    assert sent.message["Bcc"] is None
    assert b"hidden@example.net" in sent.raw  # the client named it; Gmail strips it
    assert sent.message["Subject"] == "Ticket 42"
    row = db.session.scalars(select(OutboxMessage)).one()
    db.session.refresh(row)
    assert row.status == "sent"
    assert "Gmail accepted the message" in row.server_reply


def test_outbox_sends_stored_bytes_unchanged(app, workspace, admin_client):
    account = save(admin_client)
    row = sending.queue_message(
        ModulePrincipal(Module.AUTOMATION_SERVICE),
        account.id,
        sending.Draft(to=["to@example.net"], subject="As stored", body="Hello"),
    )
    db.session.commit()
    stored = row.mime

    delivery.run_once("test-worker", FAST)

    (sent,) = workspace.sent
    assert sent.raw == stored


def test_outbox_retries_rate_limited_message_later(app, workspace, admin_client):
    account = save(admin_client)
    sending.queue_message(
        ModulePrincipal(Module.AUTOMATION_SERVICE),
        account.id,
        sending.Draft(to=["to@example.net"], subject="Later", body="Hello"),
    )
    db.session.commit()
    workspace.fail_next("gmail.users.messages.send", 429, "rateLimitExceeded", times=4)

    delivery.run_once("test-worker", FAST)

    row = db.session.scalars(select(OutboxMessage)).one()
    db.session.refresh(row)
    assert row.status == "queued"
    assert "rate limit" in row.last_error
    delivery.run_once("test-worker", FAST)
    db.session.refresh(row)
    assert row.status == "sent"
