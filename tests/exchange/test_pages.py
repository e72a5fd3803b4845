"""The Exchange account pages: settings, Autodiscover, tests and saving."""

import logging
import re

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import AccountSecret, EmailAccount, OutboxMessage
from portal.services import access, delivery, sending
from portal.services import accounts as account_service
from tests.conftest import HTMX, version_fields
from tests.exchange.conftest import (
    DELEGATED,
    GLOBAL,
    MAILBOX,
    OTHER,
    PERSONAL,
    SECRET,
    SHARED,
    USERNAME,
    exchange_form,
)
from tests.fakes.ews import AUTODISCOVER_PATH, RedirectAddress, RedirectUrl

NEW = f"{PERSONAL}/new/exchange"


def accounts() -> list[EmailAccount]:
    db.session.expire_all()
    return list(db.session.scalars(select(EmailAccount).order_by(EmailAccount.id)))


def post(client, data, url=NEW, htmx=True):
    response = client.post(url, data=data, headers=HTMX if htmx else {})
    return response, response.get_data(as_text=True)


def sealed_inputs(page: str) -> dict:
    """The hidden values a browser would send back: sealed result, allowed hosts."""
    values = {}
    match = re.search(r'name="discovery_sealed" value="([^"]+)"', page)
    if match:
        values["discovery_sealed"] = match.group(1)
    return values


def sealed_password(page: str) -> dict:
    match = re.search(r'name="password_sealed" value="([^"]+)"', page)
    return {"password_sealed": match.group(1)}


def test_type_is_offered_to_staff_and_administrators(staff_client, admin_client):
    page = admin_client.get(f"{GLOBAL}/new").get_data(as_text=True)
    assert "Microsoft Exchange (on-premises)" in page
    assert f'href="{GLOBAL}/new/exchange"' in page


def test_new_form_shows_every_setting(staff_client, exchange_app):
    page = staff_client.get(NEW).get_data(as_text=True)

    for label in (
        "Mailbox address",
        "User name",
        "Password",
        "NTLM (Windows authentication)",
        "Find automatically (Autodiscover)",
        "Enter the EWS URL",
        "Keep on premises",
        "Send As: only that address",
        "Send on Behalf: the mailbox on behalf of that address",
        "Trusted certificate (SHA-256 fingerprint)",
        "Test read",
    ):
        assert label in page
    assert re.search(r'<input[^>]* checked[^>]*name="keep_on_premises"', page)


def test_send_test_with_explicit_url(staff_client, exchange_app, exchange):
    response, fragment = post(
        staff_client, exchange_form(ews_url=exchange.ews_url, action="test-send")
    )

    assert response.status_code == 200
    assert "<html" not in fragment
    assert "Test send succeeded" in fragment
    assert "sent from alice@example.com" in fragment
    (sent,) = exchange.sent
    assert sent.mime["To"].addresses[0].addr_spec == "recipient@example.org"
    assert sent.mime["From"].addresses[0].display_name == "Helpdesk"
    assert exchange.requests_for("GetUserSettings") == []


@pytest.mark.parametrize(
    ("mode", "address", "shown", "sent_as"),
    [
        ("send_as", SHARED, f"as {SHARED} (Send As)", "send-as"),
        (
            "on_behalf",
            DELEGATED,
            f"from {MAILBOX} on behalf of {DELEGATED}",
            "on-behalf",
        ),
    ],
)
def test_send_test_uses_from_override(
    staff_client, exchange_app, exchange, mode, address, shown, sent_as
):
    form = exchange_form(
        ews_url=exchange.ews_url,
        from_address=address,
        from_mode=mode,
        action="test-send",
    )

    _, fragment = post(staff_client, form)

    assert "Test send succeeded" in fragment
    assert shown in fragment
    (sent,) = exchange.sent
    assert sent.from_element == address
    assert sent.sent_as == sent_as


def test_missing_send_as_right_is_explained(staff_client, exchange_app, exchange):
    form = exchange_form(
        ews_url=exchange.ews_url, from_address=OTHER, action="test-send"
    )

    _, fragment = post(staff_client, form)

    assert "Test send failed at the sender step" in fragment
    assert f"Send As permission denied by Exchange for {OTHER}" in fragment
    assert "ErrorSendAsDenied" in fragment


def test_read_test_counts_inbox(staff_client, exchange_app, exchange):
    _, fragment = post(
        staff_client, exchange_form(ews_url=exchange.ews_url, action="test-read")
    )

    assert "Test read succeeded" in fragment
    assert "7 messages, 2 unread" in fragment


def test_unauthorized_is_explained_without_secret(
    staff_client, exchange_app, exchange, caplog
):
    caplog.set_level(logging.DEBUG)
    form = exchange_form(
        ews_url=exchange.ews_url, password=SECRET + "x", action="test-read"
    )

    _, fragment = post(staff_client, form)

    assert "Test read failed at the authentication step" in fragment
    assert "HTTP 401 with Basic" in fragment
    assert SECRET not in fragment
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("username", "alice", "Write the user name as DOMAIN\\user"),
        (
            "ews_url",
            "http://mail.example.com/EWS/Exchange.asmx",
            "Enter an https:// address",
        ),
        ("ews_url", "", "Enter the EWS URL."),
        ("from_address", MAILBOX, "This is the mailbox&#39;s own address"),
        ("password", "", "Enter the password to sign in with."),
        ("trusted_fingerprint", "AB:CD", "A SHA-256 fingerprint has 64 hex digits"),
    ],
)
def test_invalid_field_is_shown_beside_it(
    staff_client, exchange_app, exchange, field, value, message
):
    form = exchange_form(ews_url=exchange.ews_url, action="test-send")
    form[field] = value

    response, page = post(staff_client, form)

    assert response.headers["HX-Retarget"] == "#account-form"
    assert message in page
    assert f'id="{field}-error"' in page
    assert exchange.received == []


def test_autodiscover_shows_what_it_found(staff_client, exchange_app, exchange):
    form = exchange_form(server_mode="autodiscover", action="autodiscover")

    _, fragment = post(staff_client, form)

    assert fragment.strip().startswith('<div id="exchange-server"')
    assert "Autodiscover found the server" in fragment
    assert exchange.ews_url in fragment
    assert "Microsoft Exchange Server 2019 (build 15.2.1544.4)" in fragment
    assert "Authentication: Basic (the server offers NTLM, Basic)" in fragment
    assert "Addresses tried (2)" in fragment
    assert "Run Autodiscover again" in fragment
    assert "discovery_sealed" in fragment


def test_autodiscover_result_is_stored_and_reused(
    staff_client, exchange_app, exchange, staff
):
    _, fragment = post(
        staff_client, exchange_form(server_mode="autodiscover", action="autodiscover")
    )
    form = exchange_form(server_mode="autodiscover") | sealed_inputs(fragment)
    response, _ = post(staff_client, form, htmx=False)
    assert response.status_code == 302
    assert len(exchange.requests_for("GetUserSettings")) == 1

    (account,) = accounts()
    found = account.settings["autodiscover"]
    assert found["ews_url"] == exchange.ews_url
    assert found["authentication"] == "basic"
    assert found["server_version"] == "15.2.1544.4"
    assert found["found_at"]
    assert "attempts" not in found

    page = staff_client.get(f"{PERSONAL}/{account.id}").get_data(as_text=True)
    assert "Autodiscover found the server" in page
    assert exchange.ews_url in page
    assert "Microsoft Exchange Server 2019" in page
    assert "Run Autodiscover again" in page

    # A test from the saved page uses the stored result: no Autodiscover.
    _, fragment = post(
        staff_client,
        exchange_form(server_mode="autodiscover", password="", action="test-send")
        | sealed_inputs(page),
        url=f"{PERSONAL}/{account.id}",
    )
    assert "Test send succeeded" in fragment
    assert len(exchange.requests_for("GetUserSettings")) == 1
    assert exchange.requests_for("ConvertId") == []


def test_save_runs_autodiscover_when_needed(staff_client, exchange_app, exchange):
    response, _ = post(
        staff_client, exchange_form(server_mode="autodiscover"), htmx=False
    )

    assert response.status_code == 302
    (account,) = accounts()
    assert account.settings["autodiscover"]["ews_url"] == exchange.ews_url


def test_test_runs_autodiscover_and_refreshes_panel(
    staff_client, exchange_app, exchange
):
    _, fragment = post(
        staff_client, exchange_form(server_mode="autodiscover", action="test-send")
    )

    assert "Test send succeeded" in fragment
    assert (
        'id="exchange-server" class="panel" aria-live="polite" hx-swap-oob="true"'
        in fragment
    )
    assert "Autodiscover found the server" in fragment


def test_redirect_to_other_host_is_confirmed_in_page(
    staff_client, exchange_app, exchange
):
    target = exchange.url(AUTODISCOVER_PATH, host="localhost")
    exchange.autodiscover[("127.0.0.1", AUTODISCOVER_PATH)] = RedirectUrl(target)
    form = exchange_form(server_mode="autodiscover", action="autodiscover")

    _, fragment = post(staff_client, form)
    assert "Allow a redirect to another host?" in fragment
    assert target in fragment
    assert "Allow localhost and continue" in fragment
    assert exchange.requests_for("GetUserSettings")[-1].host == "127.0.0.1"

    _, fragment = post(
        staff_client, form | {"action": "allow-host", "allow_host": "localhost"}
    )
    assert "Autodiscover found the server" in fragment
    assert "Redirects allowed to: localhost." in fragment
    assert exchange.requests_for("GetUserSettings")[-1].host == "localhost"

    response, _ = post(
        staff_client,
        exchange_form(server_mode="autodiscover", allowed_host="localhost")
        | sealed_inputs(fragment),
        htmx=False,
    )
    assert response.status_code == 302
    (account,) = accounts()
    assert account.settings["autodiscover"]["allowed_hosts"] == ["localhost"]


def test_exchange_online_mailbox_is_refused_in_page(
    staff_client, exchange_app, exchange
):
    exchange.autodiscover[("127.0.0.1", AUTODISCOVER_PATH)] = RedirectAddress(
        "alice@contoso.mail.onmicrosoft.com"
    )

    _, fragment = post(
        staff_client, exchange_form(server_mode="autodiscover", action="test-send")
    )

    assert "Test send failed at the autodiscover step" in fragment
    assert "The mailbox lives in Microsoft 365" in fragment
    assert "Use a Microsoft 365 account for this mailbox" in fragment
    assert exchange.sent == []


def test_save_with_failed_autodiscover_keeps_form(staff_client, exchange_app, exchange):
    response, page = post(
        staff_client,
        exchange_form(server_mode="autodiscover", email_address="nobody@example.com"),
        htmx=False,
    )

    assert response.status_code == 200
    assert "The account was not saved: Autodiscover found no Exchange server" in page
    assert "Autodiscover found no mailbox with the address nobody@example.com." in page
    assert 'value="nobody@example.com"' in page
    assert accounts() == []


def test_saved_account_keeps_password_secret(
    staff_client, exchange_app, exchange, staff
):
    response, _ = post(
        staff_client, exchange_form(ews_url=exchange.ews_url), htmx=False
    )
    assert response.status_code == 302

    (account,) = accounts()
    assert account.account_type == "exchange"
    assert account.owner_id == staff.id
    assert account.email_address == MAILBOX
    assert account.settings["username"] == USERNAME
    assert account.settings["server_mode"] == "url"
    assert account.settings["ews_url"] == exchange.ews_url
    (secret,) = db.session.scalars(select(AccountSecret))
    assert SECRET not in secret.ciphertext

    page = staff_client.get(f"{PERSONAL}/{account.id}").get_data(as_text=True)
    assert SECRET not in page
    assert "A value is stored and is never shown" in page
    list_page = staff_client.get(PERSONAL).get_data(as_text=True)
    assert "Exchange (EWS)" in list_page

    # Saving again without typing the password keeps it.
    response, _ = post(
        staff_client,
        exchange_form(
            ews_url=exchange.ews_url, password="", friendly_name="Renamed", version="1"
        ),
        url=f"{PERSONAL}/{account.id}",
        htmx=False,
    )
    assert response.status_code == 302
    (account,) = accounts()
    assert account.friendly_name == "Renamed"
    assert account.version == 2
    assert len(account.secrets) == 1


def test_concurrent_edit_is_refused_with_changes(staff_client, exchange_app, exchange):
    post(staff_client, exchange_form(ews_url=exchange.ews_url), htmx=False)
    (account,) = accounts()
    url = f"{PERSONAL}/{account.id}"
    page = staff_client.get(url).get_data(as_text=True)
    opened = version_fields(page)

    # Another tab (or person) saves first.
    first = exchange_form(
        ews_url=exchange.ews_url, password="", authentication="ntlm", **opened
    )
    response, _ = post(staff_client, first, url=url, htmx=False)
    assert response.status_code == 302

    second = exchange_form(
        ews_url=exchange.ews_url,
        password="A new password",
        description="My edit",
        **opened,
    )
    response, page = post(staff_client, second, url=url, htmx=False)
    assert response.status_code == 200
    assert "Someone else saved this account" in page
    assert "Authentication: NTLM (Windows authentication)" in page
    assert "My edit" in page  # the typed value stays
    assert "A new password" not in page
    assert 'name="password_sealed"' in page
    (account,) = accounts()
    assert account.description == ""
    assert account.settings["authentication"] == "ntlm"
    assert account.version == 2

    # Saving again from the refreshed form replaces theirs, typed password included.
    third = {
        **second,
        "password": "",
        **sealed_password(page),
        **version_fields(page),
    }
    response, _ = post(staff_client, third, url=url, htmx=False)
    assert response.status_code == 302
    (account,) = accounts()
    assert account.description == "My edit"
    assert account.settings["authentication"] == "basic"
    assert account.version == 3
    assert account_service.get_secret(account, "password") == "A new password"


def test_administrator_creates_global_account(admin_client, exchange_app, exchange):
    form = exchange_form(
        ews_url=exchange.ews_url,
        from_address=SHARED,
        from_mode="send_as",
        security="system",
    )

    response, _ = post(admin_client, form, url=f"{GLOBAL}/new/exchange", htmx=False)

    assert response.status_code == 302
    (account,) = accounts()
    assert account.owner_id is None
    assert account.security == "system"
    assert account.settings["from_address"] == SHARED
    assert account.settings["from_mode"] == "send_as"


def test_test_result_is_recorded_on_account(staff_client, exchange_app, exchange):
    post(staff_client, exchange_form(ews_url=exchange.ews_url), htmx=False)
    (account,) = accounts()

    post(
        staff_client,
        exchange_form(ews_url=exchange.ews_url, password="", action="test-read"),
        url=f"{PERSONAL}/{account.id}",
    )

    (account,) = accounts()
    assert account.last_read_test_ok is True
    assert "7 messages" in account.last_read_test_summary


def test_queued_message_is_delivered_through_ews(
    staff_client, exchange_app, exchange, staff
):
    form = exchange_form(
        server_mode="autodiscover", from_address=DELEGATED, from_mode="on_behalf"
    )
    post(staff_client, form, htmx=False)
    (account,) = accounts()
    lookups = len(exchange.requests_for("GetUserSettings"))

    sending.queue_message(
        access.StaffPrincipal(staff.id),
        account.id,
        sending.Draft(
            to=["customer@example.org"],
            bcc=["auditor@example.org"],
            subject="Your request",
            body="We are on it.",
        ),
    )
    db.session.commit()
    policy = delivery.DeliveryPolicy(timeout=3.0)
    counts = delivery.deliver(delivery.claim_batch("test", policy), policy)

    assert counts["sent"] == 1
    (sent,) = exchange.sent
    assert sent.from_element == DELEGATED
    assert sent.sent_as == "on-behalf"
    assert sent.mime["Sender"].addresses[0].addr_spec == MAILBOX
    assert sent.mime["Bcc"] == "auditor@example.org"
    assert len(exchange.requests_for("GetUserSettings")) == lookups
    (row,) = db.session.scalars(select(OutboxMessage))
    assert row.status == "sent"


def test_busy_delivery_is_queued_again(staff_client, exchange_app, exchange, staff):
    from tests.fakes.ews import Busy

    post(staff_client, exchange_form(ews_url=exchange.ews_url), htmx=False)
    (account,) = accounts()
    sending.queue_message(
        access.StaffPrincipal(staff.id),
        account.id,
        sending.Draft(to=["customer@example.org"], subject="Hello", body="Hi."),
    )
    db.session.commit()
    exchange.fail("*", Busy(60_000))

    policy = delivery.DeliveryPolicy(timeout=3.0)
    counts = delivery.deliver(delivery.claim_batch("test", policy), policy)

    assert counts["queued"] == 1
    (row,) = db.session.scalars(select(OutboxMessage))
    assert "is busy" in row.last_error


def test_personal_account_follows_outbound_policy(staff_client, exchange_app, exchange):
    exchange_app.config["OUTBOUND_ALLOW"] = ""

    _, fragment = post(
        staff_client, exchange_form(server_mode="autodiscover", action="test-send")
    )

    assert "Test send failed" in fragment
    assert "is not allowed: personal accounts may not connect to loopback" in fragment
    assert exchange.received == []
