"""The Exchange account wizard in Chromium: Autodiscover, tests with and without
a From override, save."""

import pytest
from playwright.sync_api import expect

from portal.transports import ews
from tests.browser.conftest import screenshot
from tests.conftest import PASSWORD
from tests.fakes.ews import FakeExchange

pytestmark = pytest.mark.browser

SECRET = "Exchange-pässword-1"


@pytest.fixture
def exchange(certificates, live_server, monkeypatch):
    with FakeExchange(certificates.server) as fake:
        fake.add_mailbox(
            "helpdesk@example.com",
            ("EXAMPLE\\helpdesk", "helpdesk@example.com"),
            SECRET,
            inbox_count=12,
            unread_count=3,
            send_as={"support@example.com"},
        )
        config = live_server.app.config
        monkeypatch.setitem(config, "EXCHANGE_CA_FILE", str(certificates.ca_path))
        monkeypatch.setitem(config, "EXCHANGE_AUTODISCOVER", fake.autodiscover_url)
        monkeypatch.setitem(config, "EXCHANGE_TIMEOUT", 5.0)
        yield fake
        ews.close_connections()


def sign_in_as_administrator(page) -> None:
    page.goto("/sign-in")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin/email-accounts")


def test_create_exchange_account_and_test_it(page, exchange):
    sign_in_as_administrator(page)
    page.goto("/admin/email-accounts/new")
    page.get_by_role(
        "link", name="Set up a Microsoft Exchange (on-premises) account"
    ).click()

    page.get_by_label("Mailbox address").fill("helpdesk@example.com")
    page.get_by_label("User name").fill("EXAMPLE\\helpdesk")
    page.get_by_label("Password").fill(SECRET)
    page.get_by_label("Authentication").select_option("basic")
    expect(page.get_by_label("Find automatically (Autodiscover)")).to_be_checked()
    expect(page.get_by_label("Keep on premises")).to_be_checked()
    page.get_by_role("button", name="Find server").click()

    server = page.locator("#exchange-server")
    expect(server).to_contain_text("Autodiscover found the server", timeout=15_000)
    expect(server).to_contain_text(exchange.ews_url)
    expect(server).to_contain_text("Microsoft Exchange Server 2019")
    screenshot(page, "exchange-autodiscover-found")

    page.get_by_label("Send the test message to").fill("someone@example.org")
    page.get_by_role("button", name="Test", exact=True).click()
    result = page.locator("#send-test-result")
    expect(result).to_contain_text("Test send succeeded", timeout=15_000)
    expect(result).to_contain_text("sent from helpdesk@example.com")

    page.get_by_label("Send from another address").fill("support@example.com")
    page.get_by_label("Send As: only that address").check()
    page.get_by_role("button", name="Test", exact=True).click()
    expect(result).to_contain_text("as support@example.com (Send As)", timeout=15_000)
    assert [sent.from_element for sent in exchange.sent] == [
        "helpdesk@example.com",
        "support@example.com",
    ]
    assert exchange.sent[1].sent_as == "send-as"

    page.get_by_role("button", name="Test read").click()
    expect(page.locator("#read-test-result")).to_contain_text(
        "12 messages, 3 unread", timeout=15_000
    )
    assert len(exchange.requests_for("GetUserSettings")) == 1
    screenshot(page, "exchange-tests-succeeded")

    page.get_by_label("Friendly name").fill("Helpdesk on Exchange")
    page.get_by_role("button", name="Save account").click()
    expect(page.locator(".flash")).to_contain_text("Created Helpdesk on Exchange")
    expect(page.locator("#accounts")).to_contain_text("Exchange (EWS, Autodiscover)")
    screenshot(page, "exchange-accounts")

    page.get_by_role("link", name="Helpdesk on Exchange").click()
    expect(page.locator("#exchange-server")).to_contain_text(exchange.ews_url)
    expect(page.get_by_label("Password")).to_have_value("")
