"""Internet accounts that sign in to SMTP and IMAP with XOAUTH2.

The portal points at the session's Google fake, the same one the Dovecot of
``dovecot_oauth2`` checks tokens with, and at the Microsoft fake.
"""

from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from portal.extensions import db
from portal.integrations import google as google_integration
from portal.integrations import microsoft
from tests.fakes import microsoft as fake_tenant
from tests.fakes.microsoft_fixtures import *  # noqa: F403
from tests.microsoft365.conftest import configure_tenant
from tests.servers.dovecot import OAUTH2_USERNAME
from tests.servers.smtp import google_token_check, microsoft_token_check

PERSONAL = "/preferences/email/accounts"
GLOBAL = "/admin/email-accounts"
GOOGLE_CALLBACK = "http://localhost/preferences/email/accounts/google/callback"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """SQLite alone: the sign-in and the transports do not depend on the database."""
    return f"sqlite:///{tmp_path_factory.mktemp('oauth2') / 'portal.sqlite3'}"


@pytest.fixture
def google_sign_in(app, google_fake):
    """The portal pointed at the Google fake, with an OAuth client for sign-ins."""
    app.config.update(google_fake.config())
    google_integration.clear_token_cache()
    if OAUTH2_USERNAME not in google_fake.users:
        google_fake.add_user(OAUTH2_USERNAME, "Carol Token")
    google_fake.sign_in_as = None
    google_fake.declined_scopes = set()
    google_fake.deny_consent = False
    client = google_fake.add_oauth_client(GOOGLE_CALLBACK)
    google_integration.save_oauth_client(client.client_id, client.client_secret)
    db.session.commit()
    yield google_fake
    google_integration.clear_token_cache()


@pytest.fixture
def microsoft_sign_in(app, microsoft_fake):
    """The portal pointed at the Microsoft fake, with the tenant's app registration."""
    app.config.update(MICROSOFT_LOGIN_URL=microsoft_fake.url, MICROSOFT_TIMEOUT=5.0)
    configure_tenant()
    microsoft_fake.grant_consent()
    assert microsoft.is_configured()
    return microsoft_fake


@pytest.fixture
def gmail_smtp(smtp_server, certificates, google_fake):
    """An SMTP server that takes XOAUTH2 with tokens of the Google fake."""
    return smtp_server(
        tls="starttls",
        certificate=certificates.server,
        token_check=google_token_check(google_fake),
    )


@pytest.fixture
def outlook_smtp(smtp_server, certificates, microsoft_fake):
    """An SMTP server that takes XOAUTH2 with tokens of the Microsoft fake."""
    return smtp_server(
        tls="starttls",
        certificate=certificates.server,
        token_check=microsoft_token_check(microsoft_fake),
    )


def oauth_form(server, certificates, provider="google", **overrides):
    """The values of an Internet account form that signs in with OAuth2."""
    data = {
        "email_address": "helpdesk@example.com",
        "smtp_host": server.host,
        "smtp_port": str(server.port),
        "smtp_security": "starttls",
        "smtp_auth": f"oauth2-{provider}",
        "smtp_username": OAUTH2_USERNAME,
        "read_protocol": "",
        "read_host": "",
        "read_port": "",
        "read_security": "ssl",
        "read_folder": "INBOX",
        "trusted_fingerprint": certificates.server.sha256,
        "test_to": "recipient@example.com",
        "friendly_name": "Token mail",
        "description": "",
        "from_name": "Helpdesk",
        "enabled": "y",
        "action": "save",
    }
    data.update(overrides)
    return data


def follow_sign_in(location: str) -> str:
    """Let the fake's sign-in page respond, and return the portal path it sends the browser to."""
    response = requests.get(location, allow_redirects=False, timeout=5)
    assert response.status_code == 302, response.text
    return response.headers["Location"].removeprefix("http://localhost")


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


__all__ = [
    "fake_tenant",
    "follow_sign_in",
    "oauth_form",
    "query",
]
