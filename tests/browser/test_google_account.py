"""The Google account type in Chromium: connect the Workspace, search, pick, test, save."""

import json

import pytest
from playwright.sync_api import expect

from portal.integrations import google as integration
from tests.browser.conftest import screenshot, sign_in_as
from tests.conftest import PASSWORD
from tests.fakes.google import FakeGoogle

pytestmark = pytest.mark.browser

ALL_SCOPES = [use.scope for use in integration.DELEGATION_SCOPES]


@pytest.fixture
def fake_google(live_server):
    fake = FakeGoogle(domains=("example.com",)).start()
    live_server.app.config.update(fake.config(), GOOGLE_MAX_RETRY_WAIT=0.05)
    integration.clear_token_cache()
    fake.add_user("admin@example.com", "Ada Admin", admin=True)
    fake.add_user("helpdesk@example.com", "Help Desk", inbox_total=3)
    fake.add_user("hannah@example.com", "Hannah Hill")
    yield fake
    fake.stop()
    integration.clear_token_cache()


def test_connect_workspace_search_pick_and_test(page, fake_google, tmp_path):
    key_path = tmp_path / "service-account.json"
    key_path.write_text(json.dumps(fake_google.new_service_account(scopes=ALL_SCOPES)))

    page.goto("/sign-in")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin/email-accounts")
    page.get_by_role("link", name="Google Workspace").click()
    page.get_by_label("Service account key (JSON file)").set_input_files(str(key_path))
    page.get_by_label("Administrator address").fill("admin@example.com")
    page.get_by_role("button", name="Save service account").click()
    expect(page.locator(".flash")).to_contain_text("Stored the key")

    page.get_by_role("button", name="Check connection").click()
    check = page.locator("#connection-check")
    expect(check).to_contain_text("Connection works", timeout=15_000)
    screenshot(page, "google-integration")

    page.goto("/admin/email-accounts/new")
    page.get_by_role("link", name="Set up a Google Workspace / Gmail account").click()
    page.get_by_label("Find a mailbox").press_sequentially("hel", delay=50)
    results = page.locator("#mailbox-results")
    expect(results).to_contain_text("Help Desk", timeout=15_000)
    expect(results).not_to_contain_text("hannah@example.com")
    screenshot(page, "google-mailbox-search")

    page.get_by_role("button", name="Pick helpdesk@example.com").click()
    expect(page.get_by_label("Mailbox", exact=True)).to_have_value(
        "helpdesk@example.com"
    )
    page.get_by_label("Send the test message to").fill("someone@example.net")
    page.get_by_role("button", name="Test", exact=True).click()
    result = page.locator("#send-test-result")
    expect(result).to_contain_text("Test send succeeded", timeout=15_000)
    assert [sent.mailbox for sent in fake_google.sent] == ["helpdesk@example.com"]

    page.get_by_role("button", name="Test read").click()
    expect(page.locator("#read-test-result")).to_contain_text(
        "3 messages", timeout=15_000
    )
    screenshot(page, "google-account-tested")

    page.get_by_label("Friendly name").fill("Helpdesk (Google)")
    page.get_by_role("button", name="Save account").click()
    expect(page.locator(".flash").first).to_contain_text("Created Helpdesk (Google)")
    expect(page.locator("#accounts")).to_contain_text("Google Workspace")


def test_staff_member_connects_personal_gmail(page, fake_google, live_server):
    fake_google.add_user("alice.private@gmail.com", "Alice Private")
    client = fake_google.add_oauth_client(
        f"{live_server.url}/preferences/email/accounts/google/callback"
    )
    with live_server.app.app_context():
        integration.save_oauth_client(client.client_id, client.client_secret)
        integration.db.session.commit()

    sign_in_as(page, "alice")
    page.goto("/preferences/email/accounts/new/google")
    page.get_by_label("Mailbox").fill("alice.private@gmail.com")
    page.get_by_label("Friendly name").fill("My Gmail")
    page.get_by_role("button", name="Connect Google mailbox").click()

    # The fake's consent screen answers at once and sends the browser back.
    expect(page.locator(".flash").first).to_contain_text(
        "Connected alice.private@gmail.com"
    )
    expect(page.get_by_label("Friendly name")).to_have_value("My Gmail")
    page.get_by_label("Send the test message to").fill("friend@example.net")
    page.get_by_role("button", name="Test", exact=True).click()
    expect(page.locator("#send-test-result")).to_contain_text(
        "Test send succeeded", timeout=15_000
    )
    screenshot(page, "google-personal-connected")

    page.get_by_role("button", name="Save account").click()
    expect(page.locator("#accounts")).to_contain_text("Gmail (signed in)")
    assert [sent.mailbox for sent in fake_google.sent] == ["alice.private@gmail.com"]
