"""Administration pages in Chromium: permissions, the personal-accounts switch,
the audit trail, and a keyboard-only pass through the account wizard."""

import re

import pytest
from playwright.sync_api import expect

from portal.extensions import db
from portal.models import EmailAccount, Skillgroup, StaffMember
from tests.browser.conftest import screenshot, sign_in_as

pytestmark = pytest.mark.browser


def test_permission_editor_and_preview(page, live_server):
    with live_server.app.app_context():
        alice = db.session.query(StaffMember).filter_by(username="alice").one()
        group = Skillgroup(name="Second line")
        group.members.append(alice)
        account = EmailAccount(
            account_type="internet",
            friendly_name="Second line desk",
            email_address="second@example.com",
            security="everyone",
            settings={
                "smtp": {
                    "host": "127.0.0.1",
                    "port": 25,
                    "security": "none",
                    "auth": "none",
                },
                "read": None,
            },
        )
        db.session.add_all([group, account])
        db.session.commit()
        account_id = account.id

    sign_in_as(page, "admin")
    page.goto(f"/admin/email-accounts/{account_id}")
    access = page.locator("#access")
    expect(access).to_contain_text("staff members may use this account")

    page.get_by_label("Staff members via permissions").check()
    expect(access).to_contain_text("No permissions yet")
    expect(access).to_contain_text("0 staff members may use")

    page.get_by_label("Name to search for").fill("second")
    # The button searches too. The search as you type can miss a value filled
    # in before htmx has set up the panel it just swapped in.
    access.get_by_role("button", name="Search", exact=True).click()
    candidates = page.locator("#grant-candidates")
    expect(candidates).to_contain_text("Second line")
    candidates.get_by_role("button", name="Add skillgroup Second line").click()
    expect(access).to_contain_text("1 staff member may use this account")
    expect(page.locator("#access-preview")).to_contain_text("alice")
    screenshot(page, "global-account-permissions")

    page.goto("/admin/staff-access")
    page.get_by_label("Staff member").fill("alice")
    page.get_by_role("link", name="Alice").click()
    expect(page.locator("#staff-access-results")).to_contain_text(
        "Member of the skillgroup Second line"
    )
    screenshot(page, "staff-access")


def test_personal_accounts_switch(page, live_server):
    sign_in_as(page, "admin")
    page.goto("/admin/settings/personal-accounts")
    switch = page.locator("#personal-switch")
    switch.get_by_role("button", name="Turn off").click()
    expect(switch).to_contain_text("Off")
    screenshot(page, "personal-accounts-switch")
    switch.get_by_role("button", name="Turn on").click()
    expect(switch).to_contain_text("On")


def test_audit_page_filters(page, live_server):
    sign_in_as(page, "admin")
    page.goto("/admin/audit")
    expect(page.locator("#audit-events")).to_contain_text("sign-in")
    page.get_by_label("Outcome").select_option("success")
    expect(page).to_have_url(re.compile(r"outcome=success"))
    screenshot(page, "audit-trail")


def test_keyboard_only_wizard(page, live_server, plain_smtp):
    sign_in_as(page, "alice")
    page.goto("/preferences/email/accounts/new/internet")

    def type_into(label: str, text: str) -> None:
        # Tab until the field with this label has the focus, then type.
        field = page.get_by_label(label, exact=True)
        for _ in range(60):
            if field.evaluate("element => element === document.activeElement"):
                break
            page.keyboard.press("Tab")
        else:
            raise AssertionError(f"{label} cannot be reached with Tab")
        page.keyboard.press("Control+A")
        page.keyboard.type(text)

    def choose(label: str, option_text: str) -> None:
        field = page.get_by_label(label, exact=True)
        for _ in range(60):
            if field.evaluate("element => element === document.activeElement"):
                break
            page.keyboard.press("Tab")
        field.select_option(
            label=option_text
        )  # what the arrow keys do in a focused select

    page.keyboard.press("Tab")
    type_into("Email address", "keyboard@example.com")
    type_into("SMTP server", "127.0.0.1")
    type_into("SMTP port", str(plain_smtp.port))
    choose("SMTP security", "None (unencrypted)")
    choose("Authentication", "None")
    type_into("Send the test message to", "someone@example.com")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Test", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#send-test-result")).to_contain_text(
        "Test send succeeded", timeout=15_000
    )

    type_into("Friendly name", "Typed by keyboard")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Save account":
            break
    page.keyboard.press("Enter")
    expect(page.locator(".flash")).to_contain_text("Created Typed by keyboard")
