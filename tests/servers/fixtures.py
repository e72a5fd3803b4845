"""Pytest fixtures for real mail servers on 127.0.0.1.

tests/conftest.py star-imports this module, so every fixture named in
``__all__`` is available to the whole suite.
"""

import contextlib
from collections.abc import Callable, Iterator

import pytest

from tests.fakes.google import FakeGoogle
from tests.servers import smtp
from tests.servers.certs import TestCertificates, create_test_certificates
from tests.servers.dovecot import (
    OAUTH2_USERNAME,
    DovecotServer,
    OAuth2Settings,
    dovecot_version,
    run_dovecot,
)
from tests.servers.scripted import Responder, ScriptedServer
from tests.servers.scripted import scripted_server as run_scripted_server

__all__ = [
    "certificates",
    "closed_port",
    "dovecot",
    "dovecot_oauth2",
    "google_fake",
    "implicit_tls_smtp",
    "plain_smtp",
    "scripted_server",
    "silent_port",
    "smtp_server",
    "starttls_smtp",
    "unanswered_port",
]


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    """The test CA and the server certificates, written once per session."""
    return create_test_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., smtp.SmtpServer]]:
    """A function that starts aiosmtpd servers, all stopped after the test.

    It takes the arguments of tests.servers.smtp.start_smtp_server().
    """
    started: list[smtp.SmtpServer] = []

    def start(**options: object) -> smtp.SmtpServer:
        server = smtp.start_smtp_server(**options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def plain_smtp(smtp_server: Callable[..., smtp.SmtpServer]) -> smtp.SmtpServer:
    """An SMTP server without TLS or sign-in."""
    return smtp_server()


@pytest.fixture
def starttls_smtp(
    smtp_server: Callable[..., smtp.SmtpServer], certificates: TestCertificates
) -> smtp.SmtpServer:
    """An SMTP server that offers STARTTLS with the CA-signed certificate."""
    return smtp_server(tls="starttls", certificate=certificates.server)


@pytest.fixture
def implicit_tls_smtp(
    smtp_server: Callable[..., smtp.SmtpServer], certificates: TestCertificates
) -> smtp.SmtpServer:
    """An SMTP server that speaks TLS from the first byte (like port 465)."""
    return smtp_server(tls="implicit", certificate=certificates.server)


@pytest.fixture
def scripted_server() -> Iterator[Callable[[str, Responder], ScriptedServer]]:
    """A function that starts line servers with scripted replies.

    It takes a greeting and a responder from tests.servers.scripted; every
    server stops after the test.
    """
    with contextlib.ExitStack() as stack:

        def start(greeting: str, respond: Responder) -> ScriptedServer:
            return stack.enter_context(run_scripted_server(greeting, respond))

        yield start


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never sends a greeting."""
    with smtp.silent_port() as port:
        yield port


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose TCP handshake never completes, so connecting times out."""
    with smtp.unanswered_port() as port:
        yield port


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that refuses connections."""
    return smtp.closed_port()


@pytest.fixture(scope="session")
def dovecot(certificates: TestCertificates) -> Iterator[DovecotServer]:
    """A Dovecot IMAP and POP3 server with a seeded test mailbox.

    It presents the CA-signed certificate. Skips the test when Dovecot is not
    installed (Debian packages dovecot-imapd and dovecot-pop3d).
    """
    version = _installed_dovecot()
    with run_dovecot(certificates.server, version) as server:
        yield server


@pytest.fixture(scope="session")
def google_fake() -> Iterator[FakeGoogle]:
    """The Google fake on 127.0.0.1, without a portal pointed at it.

    The whole session shares it, so a test adds the users it needs and must
    not expect the fake to be empty.
    """
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def dovecot_oauth2(
    certificates: TestCertificates, google_fake: FakeGoogle
) -> Iterator[DovecotServer]:
    """A Dovecot like ``dovecot`` that also takes XOAUTH2 and OAUTHBEARER sign-ins.

    It checks tokens at ``google_fake``'s tokeninfo endpoint and requires the
    https://mail.google.com/ scope. Its ``oauth2_username``, which this fixture
    adds to ``google_fake`` as a user, signs in to the seeded mailbox.
    """
    version = _installed_dovecot()
    google_fake.add_user(OAUTH2_USERNAME, "Carol Token")
    settings = OAuth2Settings(
        tokeninfo_url=f"{google_fake.tokeninfo_url}?access_token="
    )
    with run_dovecot(certificates.server, version, oauth2=settings) as server:
        yield server


def _installed_dovecot() -> tuple[int, int, int]:
    """Return the Dovecot version, or skip the test when it is not installed."""
    version = dovecot_version()
    if version is None:
        pytest.skip(
            "Dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)"
        )
    return version
