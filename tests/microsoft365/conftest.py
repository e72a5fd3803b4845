"""A portal pointed at the Microsoft fake, with and without a connected tenant."""

from datetime import date, timedelta

import pytest
import requests

from portal.extensions import db
from portal.integrations import microsoft
from portal.transports import graph
from tests.fakes import microsoft as fake_tenant
from tests.fakes.microsoft_fixtures import *  # noqa: F403


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """SQLite alone: what these tests check does not depend on the database.

    The tests of personal accounts and of delivery, which write from several
    threads, run on PostgreSQL too (see ``both_databases``).
    """
    return f"sqlite:///{tmp_path_factory.mktemp('microsoft365') / 'portal.sqlite3'}"


def both_databases(request, tmp_path_factory):
    """The body of a ``database_url`` fixture that runs on SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'portal.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def microsoft_app(app, microsoft_fake):
    app.config.update(
        MICROSOFT_LOGIN_URL=microsoft_fake.url,
        MICROSOFT_GRAPH_URL=microsoft_fake.url,
        MICROSOFT_TIMEOUT=5.0,
        # The fake's throttling responses carry a Retry-After of a second or
        # two; most tests record the waits instead of sleeping (see ``waits``).
        MICROSOFT_GRAPH_MAX_RETRY_WAIT=5.0,
        TEST_LIMIT="1000/minute",
    )
    return app


@pytest.fixture
def waits(monkeypatch):
    """The retry waits of Graph requests, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(graph, "_sleep", recorded.append)
    return recorded


def configure_tenant(
    *, secret: str = fake_tenant.CLIENT_SECRET, expires: date | None = None
):
    microsoft.save_settings(
        tenant_id=fake_tenant.TENANT_ID,
        client_id=fake_tenant.CLIENT_ID,
        cloud="global",
        secret_expires=expires or date.today() + timedelta(days=365),
        client_secret=secret,
    )
    db.session.commit()


@pytest.fixture
def connected_tenant(microsoft_app, microsoft_fake):
    """A tenant whose administrator granted consent and checked the connection."""
    configure_tenant()
    microsoft_fake.grant_consent()
    check = microsoft.check_connection()
    db.session.commit()
    assert check["ok"], check
    return microsoft_fake


def follow(fake, location: str) -> str:
    """Open a page of the fake as a browser would; return the portal path it redirects to."""
    response = requests.get(location, allow_redirects=False, timeout=5)
    assert response.status_code == 302, response.text
    return response.headers["Location"].removeprefix("http://localhost")


def connect_mailbox(client, fake, address: str = "alice@contoso.com"):
    """Run a staff member's Connect Microsoft 365 mailbox round trip; returns the last response."""
    start = client.post(
        "/preferences/email/accounts/new/microsoft365",
        data={"action": "connect", "address": address},
    )
    assert start.status_code == 302, start.get_data(as_text=True)
    return client.get(follow(fake, start.headers["Location"]))
