"""The fake Google on 127.0.0.1, a Workspace connected to it, and a personal client."""

import json

import pytest

from portal.extensions import db
from portal.integrations import google as integration
from tests.fakes.google import FakeGoogle

ALL_SCOPES = tuple(use.scope for use in integration.DELEGATION_SCOPES)
PERSONAL_REDIRECT = "http://localhost/preferences/email/accounts/google/callback"


@pytest.fixture
def google(app):
    """The fake, with a Workspace of a few users; the portal points at it."""
    fake = FakeGoogle(domains=("example.com",)).start()
    app.config.update(fake.config())
    app.config.update(GOOGLE_MAX_RETRY_WAIT=0.05, GOOGLE_MAX_RETRIES=3)
    integration.clear_token_cache()
    fake.add_user("admin@example.com", "Ada Admin", admin=True)
    fake.add_user(
        "helpdesk@example.com",
        "Help Desk",
        inbox_total=7,
        aliases={"support@example.com": "accepted", "pending@example.com": "pending"},
    )
    fake.add_user("hannah@example.com", "Hannah Hill")
    fake.add_user("harry@example.com", "Harry Hope", suspended=True)
    fake.add_user("alice@gmail.com", "Alice Consumer")
    yield fake
    fake.stop()
    integration.clear_token_cache()


def connect_workspace(fake: FakeGoogle, scopes=ALL_SCOPES, admin="admin@example.com"):
    """Create a service account in the fake, allow ``scopes``, store its key."""
    key_file = fake.new_service_account(scopes=scopes)
    key = integration.parse_service_account_key(json.dumps(key_file).encode())
    integration.save_service_account(key, admin)
    db.session.commit()
    return key_file


@pytest.fixture
def workspace(google):
    """A connected Workspace whose service account is allowed every scope."""
    connect_workspace(google)
    return google


@pytest.fixture
def oauth_client(google):
    """An OAuth client in the fake, stored on the integration page."""
    client = google.add_oauth_client(PERSONAL_REDIRECT)
    integration.save_oauth_client(client.client_id, client.client_secret)
    db.session.commit()
    return client
