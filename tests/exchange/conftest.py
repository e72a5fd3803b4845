"""Fixtures for the Exchange account type: the fake server and a configured portal."""

import pytest

from portal.transports import ews
from tests.fakes.ews import FakeExchange

PERSONAL = "/preferences/email/accounts"
GLOBAL = "/admin/email-accounts"
MAILBOX = "alice@example.com"
USERNAME = "EXAMPLE\\alice"
UPN = "alice@example.com"
SECRET = "Pässwörd-Ω-Exchange-42"
SHARED = "helpdesk@example.com"  # alice has Send As on it
DELEGATED = "sales@example.com"  # alice has Send on Behalf on it
OTHER = "bob@example.com"


@pytest.fixture
def exchange(certificates):
    """The fake Exchange server with alice's mailbox and two addresses she may send from."""
    with FakeExchange(certificates.server) as fake:
        fake.add_mailbox(
            MAILBOX,
            (USERNAME, UPN),
            SECRET,
            inbox_count=7,
            unread_count=2,
            send_as={SHARED},
            send_on_behalf={DELEGATED},
        )
        fake.add_mailbox(OTHER, ("EXAMPLE\\bob",), "bobs password")
        fake.add_mailbox(SHARED, ("EXAMPLE\\helpdesk",), "shared password")
        fake.add_mailbox(DELEGATED, ("EXAMPLE\\sales",), "sales password")
        yield fake
        # exchangelib keeps connections to the fake open until told otherwise.
        ews.close_connections()


@pytest.fixture
def exchange_app(app, exchange, certificates):
    """The portal pointed at the fake: its CA, its Autodiscover URL, short waits."""
    app.config.update(
        EXCHANGE_TIMEOUT=3.0,
        EXCHANGE_CA_FILE=str(certificates.ca_path),
        EXCHANGE_AUTODISCOVER=exchange.autodiscover_url,
        EXCHANGE_BUSY_RETRIES=2,
        EXCHANGE_MAX_BACK_OFF=0.2,
    )
    return app


def exchange_form(**overrides) -> dict:
    """The fields of a complete Exchange form with an explicit EWS URL."""
    data = {
        "email_address": MAILBOX,
        "username": USERNAME,
        "password": SECRET,
        "authentication": "basic",
        "server_mode": "url",
        "ews_url": "",
        "keep_on_premises": "y",
        "from_address": "",
        "from_mode": "send_as",
        "trusted_fingerprint": "",
        "test_to": "recipient@example.org",
        "friendly_name": "Alice on Exchange",
        "description": "",
        "from_name": "Helpdesk",
        "enabled": "y",
        "security": "everyone",
        "action": "save",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}
