"""An Internet account signing in with Google (XOAUTH2) in Chromium."""

import pytest
from playwright.sync_api import expect

from portal.extensions import db
from portal.integrations import google as integration
from tests.browser.conftest import screenshot, sign_in_as
from tests.servers.dovecot import OAUTH2_USERNAME
from tests.servers.smtp import google_token_check

pytestmark = pytest.mark.browser


@pytest.fixture
def google_for_live_server(live_server, google_fake):
    live_server.app.config.update(google_fake.config())
    integration.clear_token_cache()
    if OAUTH2_USERNAME not in google_fake.users:
        google_fake.add_user(OAUTH2_USERNAME, "Carol Token")
    google_fake.sign_in_as = None
    client = google_fake.add_oauth_client(
        f"{live_server.url}/preferences/email/accounts/google/callback"
    )
    with live_server.app.app_context():
        integration.save_oauth_client(client.client_id, client.client_secret)
        db.session.commit()
    yield google_fake
    integration.clear_token_cache()


def test_oauth2_sign_in_then_send(
    page, google_for_live_server, smtp_server, certificates
):
    server = smtp_server(
        tls="starttls",
        certificate=certificates.server,
        token_check=google_token_check(google_for_live_server),
    )
    sign_in_as(page, "alice")
    page.goto("/preferences/email/accounts/new/internet")
    page.get_by_label("Email address").fill("helpdesk@example.com")
    page.get_by_label("SMTP server").fill(server.host)
    page.get_by_label("SMTP port").fill(str(server.port))
    page.get_by_label("SMTP security").select_option("starttls")

    # Choosing OAuth2 swaps the form: the password fields give way to the sign-in.
    page.get_by_label("Authentication").select_option("oauth2-google")
    expect(page.locator("#oauth-sign-in")).to_contain_text("Not signed in yet")
    expect(page.get_by_label("SMTP password")).to_have_count(0)
    page.get_by_label("SMTP user name").fill(OAUTH2_USERNAME)
    page.get_by_label("Trusted certificate (SHA-256 fingerprint)").fill(
        certificates.server.sha256
    )
    page.get_by_label("Friendly name").fill("Gmail by token")

    page.get_by_role("button", name="Save and sign in with Google").click()
    # The fake's sign-in page responds at once and sends the browser back.
    expect(page.locator(".flash").last).to_contain_text(
        f"Signed in with Google as {OAUTH2_USERNAME}"
    )
    expect(page.locator("#oauth-sign-in")).to_contain_text("no password is stored")

    page.get_by_label("Send the test message to").fill("friend@example.net")
    page.get_by_role("button", name="Test", exact=True).click()
    expect(page.locator("#send-test-result")).to_contain_text(
        "Test send succeeded", timeout=15_000
    )
    screenshot(page, "internet-oauth2-signed-in")
    assert [message.login for message in server.messages] == [OAUTH2_USERNAME]

    page.goto("/preferences/email/accounts")
    expect(page.locator("#accounts")).to_contain_text("OAuth2 with Google")
