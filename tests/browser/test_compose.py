"""Compose in Chromium and watch the delivery log change from queued to sent."""

import pytest
from playwright.sync_api import expect

from portal.extensions import db
from portal.models import EmailAccount
from portal.services.delivery import DeliveryWorker
from tests.browser.conftest import screenshot, sign_in_as

pytestmark = pytest.mark.browser


def test_compose_and_watch_delivery(page, live_server, plain_smtp):
    with live_server.app.app_context():
        account = EmailAccount(
            account_type="internet",
            friendly_name="Service desk",
            email_address="servicedesk@example.com",
            from_name="Service desk",
            security="all_staff",
            settings={
                "smtp": {
                    "host": plain_smtp.host,
                    "port": plain_smtp.port,
                    "security": "none",
                    "auth": "none",
                    "username": "",
                },
                "read": None,
                "trusted_fingerprint": "",
            },
        )
        db.session.add(account)
        db.session.commit()
        account_id = account.id

    sign_in_as(page, "alice")
    page.get_by_label("Service desk").check()
    page.get_by_role("button", name="Save default account").click()
    expect(page.locator("#sending-accounts")).to_contain_text("Saved.")

    page.get_by_role("link", name="Compose").click()
    from_field = page.get_by_label("From")
    expect(from_field).to_have_value(str(account_id))
    page.get_by_label("To", exact=True).fill("customer@example.com")
    page.get_by_label("Subject").fill("Your ticket 4711")
    page.get_by_label("Message").fill("We have fixed the printer.")
    screenshot(page, "compose")
    page.get_by_role("button", name="Send").click()

    deliveries = page.locator("#deliveries")
    expect(deliveries).to_contain_text("Queued")
    screenshot(page, "delivery-log-queued")

    worker = DeliveryWorker(live_server.app, poll_seconds=0.2)
    worker.start()
    try:
        expect(deliveries).to_contain_text("Sent", timeout=15_000)
    finally:
        worker.stop()
    screenshot(page, "delivery-log-sent")
    assert [m.rcpt_tos for m in plain_smtp.messages] == [["customer@example.com"]]
