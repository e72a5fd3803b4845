"""The Internet account wizard in Chromium: preset, test, save."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot, sign_in_as

pytestmark = pytest.mark.browser


def test_create_account_from_preset_and_test(page, plain_smtp):
    sign_in_as(page, "alice")
    screenshot(page, "my-email-accounts-empty")
    page.get_by_role("link", name="New account").click()
    page.get_by_role("link", name="Set up an Internet (SMTP/IMAP) account").click()

    page.get_by_label("Email address").fill("alice.helpdesk@example.com")
    page.get_by_label("Default settings").select_option(label="Gmail")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_label("SMTP server")).to_have_value("smtp.gmail.com")
    expect(page.get_by_label("Incoming server")).to_have_value("imap.gmail.com")
    expect(page.locator("#smtp_username")).to_have_value("alice.helpdesk@example.com")
    screenshot(page, "new-account-preset-applied")

    # Point the send settings at the local test server instead.
    page.get_by_label("SMTP server").fill("127.0.0.1")
    page.locator("#smtp_port").fill(str(plain_smtp.port))
    page.locator("#smtp_security").select_option("none")
    page.locator("#smtp_auth").select_option("none")
    page.get_by_label("Send the test message to").fill("someone@example.com")
    page.get_by_role("button", name="Test", exact=True).click()

    result = page.locator("#send-test-result")
    expect(result).to_contain_text("Test send succeeded", timeout=15_000)
    expect(result).to_contain_text("250")
    assert len(plain_smtp.messages) == 1
    screenshot(page, "new-account-test-succeeded")

    # Reading needs a password; this account only sends.
    page.get_by_label("Read mail with").select_option("")
    page.get_by_label("Friendly name").fill("Alice's desk")
    page.get_by_role("button", name="Save account").click()
    expect(page.locator(".flash")).to_contain_text("Created Alice's desk")
    expect(page.locator("#accounts")).to_contain_text("alice.helpdesk@example.com")
    screenshot(page, "my-email-accounts")


def test_failed_test_shows_step_and_advice(page, closed_port):
    sign_in_as(page, "alice")
    page.goto("/preferences/email/accounts/new/internet")
    page.get_by_label("Email address").fill("alice@example.com")
    page.get_by_label("SMTP server").fill("127.0.0.1")
    page.locator("#smtp_port").fill(str(closed_port))
    page.locator("#smtp_security").select_option("none")
    page.locator("#smtp_auth").select_option("none")
    page.get_by_label("Send the test message to").fill("someone@example.com")
    page.get_by_role("button", name="Test", exact=True).click()

    result = page.locator("#send-test-result")
    expect(result).to_contain_text("failed at the connect step", timeout=15_000)
    expect(result).to_contain_text("What to do")
    screenshot(page, "new-account-test-failed")
