"""The Microsoft 365 wizard in Chromium: search as you type, pick, test, save."""

import pytest
from playwright.sync_api import expect
from sqlalchemy import delete

from portal.extensions import db
from portal.integrations import microsoft
from portal.models import EmailAccount, Integration
from tests.browser.conftest import screenshot
from tests.conftest import PASSWORD
from tests.fakes.microsoft_fixtures import *  # noqa: F403
from tests.microsoft365.conftest import configure_tenant

pytestmark = pytest.mark.browser


@pytest.fixture
def tenant(live_server, microsoft_fake):
    """The live portal with its Microsoft 365 tenant connected to the fake."""
    app = live_server.app
    app.config.update(
        MICROSOFT_LOGIN_URL=microsoft_fake.url, MICROSOFT_GRAPH_URL=microsoft_fake.url
    )
    with app.app_context():
        configure_tenant()
        microsoft_fake.grant_consent()
        assert microsoft.check_connection()["ok"]
        db.session.commit()
    yield microsoft_fake
    with app.app_context():
        db.session.execute(
            delete(EmailAccount).where(EmailAccount.account_type == "microsoft365")
        )
        db.session.execute(
            delete(Integration).where(Integration.kind == "microsoft365")
        )
        db.session.commit()
    app.config.update(MICROSOFT_LOGIN_URL="", MICROSOFT_GRAPH_URL="")


def sign_in_as_admin(page) -> None:
    page.goto("/sign-in")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin/email-accounts")


def test_search_pick_and_test_mailbox(page, tenant):
    sign_in_as_admin(page)
    page.goto("/admin/integrations/microsoft365")
    expect(page.locator("#permission-checklist")).to_contain_text("Mail.Send")
    screenshot(page, "microsoft365-integration")

    page.goto("/admin/email-accounts/new")
    page.get_by_role("link", name="Set up a Microsoft 365 account").click()
    page.get_by_label("Address, user name or display name").press_sequentially(
        "help", delay=30
    )
    results = page.locator("#mailbox-results")
    expect(results).to_contain_text("helpdesk@contoso.com", timeout=10_000)
    expect(results).to_contain_text("Shared mailbox")
    screenshot(page, "microsoft365-search")

    page.get_by_role("link", name="Choose Helpdesk (helpdesk@contoso.com)").click()
    expect(page.locator("#chosen-mailbox")).to_contain_text("helpdesk@contoso.com")
    page.get_by_label("Send the test message to").fill("someone@example.com")
    page.get_by_role("button", name="Test", exact=True).click()
    result = page.locator("#send-test-result")
    expect(result).to_contain_text("Test send succeeded", timeout=15_000)
    expect(result).to_contain_text("202 Accepted")
    page.get_by_role("button", name="Test read").click()
    expect(page.locator("#read-test-result")).to_contain_text(
        "57 messages", timeout=15_000
    )
    screenshot(page, "microsoft365-test-succeeded")

    (sent,) = tenant.sent
    assert sent["format"] == "mime"
    assert sent["recipients"] == ["someone@example.com"]
    assert sent["mailbox"] == "helpdesk@contoso.com"

    page.get_by_label("Friendly name").fill("Contoso helpdesk")
    page.get_by_role("button", name="Save account").click()
    expect(page.locator(".flash")).to_contain_text("Created Contoso helpdesk")
    expect(page.locator("#accounts")).to_contain_text("Microsoft 365 (shared mailbox)")
    screenshot(page, "microsoft365-grid")


def test_more_results_append_to_the_list(page, tenant):
    sign_in_as_admin(page)
    page.goto("/admin/email-accounts/new/microsoft365")
    page.get_by_label("Address, user name or display name").fill("agent")
    page.get_by_role("button", name="Search").click()
    items = page.locator("#mailbox-list li")
    expect(items).to_have_count(11, timeout=10_000)  # ten mailboxes and "More results"
    page.get_by_role("link", name="More results").click()
    expect(items).to_have_count(21)
