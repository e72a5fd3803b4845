"""Shared fixtures: the app on SQLite and PostgreSQL, clients, staff, servers."""

import contextvars
import os
import re

import pytest
from cryptography.fernet import Fernet

# Set before the app is imported, so the tests never create key files in the
# instance folder.
os.environ.setdefault("PORTAL_SECRET_KEY", "test-session-key")
os.environ.setdefault("PORTAL_ENCRYPTION_KEYS", Fernet.generate_key().decode())

from flask.testing import FlaskClient  # noqa: E402
from flask_migrate import upgrade  # noqa: E402

from portal import create_app  # noqa: E402
from portal.extensions import db  # noqa: E402
from portal.staff import create_staff  # noqa: E402
from tests.postgres import Cluster, find_bindir  # noqa: E402
from tests.servers.fixtures import *  # noqa: E402,F403  (real mail servers)

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a throwaway PostgreSQL cluster, or of PORTAL_TEST_POSTGRES_URL."""
    if os.environ.get("PORTAL_TEST_POSTGRES_URL"):
        yield os.environ["PORTAL_TEST_POSTGRES_URL"]
        return
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found; `make test` installs them")
    cluster = Cluster(bindir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'portal.sqlite3'}"
    return request.getfixturevalue("postgres_url")


_migrated: set[str] = set()


@pytest.fixture
def app(database_url, tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "START_WORKER": False,
            "SMTP_TIMEOUT": 3.0,
            # A cheap hash keeps the many sign-ins of the suite fast.
            "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
            # The test servers listen on loopback, which personal accounts may
            # reach only when the outbound policy allows it.
            "OUTBOUND_ALLOW": "127.0.0.0/8,[::1/128]",
        }
    )
    app.instance_path = str(tmp_path / "instance")
    with app.app_context():
        if database_url not in _migrated:
            upgrade()
            _migrated.add(database_url)
        yield app
        db.session.rollback()
        for table in reversed(db.metadata.sorted_tables):
            if table.name != "alembic_version":
                db.session.execute(table.delete())
        db.session.commit()
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()


class PortalClient(FlaskClient):
    """A test client that adds the CSRF token to every unsafe request, as a browser would.

    Each request runs in an empty ``contextvars`` context, so it gets its own
    app context, ``g`` and database session, as in production, even though
    the test itself holds an app context.
    """

    csrf: str | None = None

    def csrf_token(self) -> str:
        if self.csrf is None:
            page = super().get("/sign-in", follow_redirects=True).get_data(as_text=True)
            match = re.search(r'"X-CSRFToken": "([^"]+)"', page)
            assert match, "no CSRF token found on the page"
            self.csrf = match.group(1)
        return self.csrf

    def open(self, *args, **kwargs):
        method = kwargs.get("method", "GET").upper()
        if method not in ("GET", "HEAD", "OPTIONS") and not kwargs.pop(
            "without_csrf", False
        ):
            headers = dict(kwargs.pop("headers", None) or {})
            headers.setdefault("X-CSRFToken", self.csrf_token())
            kwargs["headers"] = headers
        return contextvars.Context().run(super().open, *args, **kwargs)


@pytest.fixture
def client(app):
    app.test_client_class = PortalClient
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def make_staff(username: str, *, administrator: bool = False, email: str = ""):
    staff = create_staff(
        username,
        PASSWORD,
        email=email or f"{username}@example.com",
        administrator=administrator,
    )
    db.session.commit()
    return staff


def sign_in(client: PortalClient, username: str, password: str = PASSWORD):
    """Sign in as ``username``, signing out whoever was signed in before."""
    client.csrf = None
    client.post("/sign-out")
    client.csrf = None
    response = client.post(
        "/sign-in", data={"username": username, "password": password}
    )
    client.csrf = None  # the session was replaced; fetch a fresh token next time
    return response


@pytest.fixture
def staff(app):
    return make_staff("alice")


@pytest.fixture
def admin(app):
    return make_staff("root", administrator=True)


@pytest.fixture
def staff_client(client, staff):
    sign_in(client, "alice")
    return client


@pytest.fixture
def admin_client(client, admin):
    sign_in(client, "root")
    return client


HTMX = {"HX-Request": "true"}


def version_fields(page: str) -> dict:
    """Return the account version and signed original values an edit form carries."""
    return {
        "version": re.search(r'name="version" value="(\d+)"', page).group(1),
        "original": re.search(r'name="original" value="([^"]+)"', page).group(1),
    }


def pytest_collection_modifyitems(config, items):
    """Run the browser tests last.

    Playwright's synchronous API keeps an asyncio event loop running in the
    main thread while its browser is open, and the mail transports call
    ``asyncio.run``, which refuses to start inside a running loop.
    """
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
