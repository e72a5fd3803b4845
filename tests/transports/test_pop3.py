"""The POP3 transport against Dovecot and scripted servers on 127.0.0.1."""

import pytest

from portal.transports import pop3
from portal.transports.base import ReadSettings, Security, Step, TransportError
from tests.servers.scripted import pop3_responder

TIMEOUT = 2.0  # seconds; short, so that the timeout tests stay fast
SCRIPTED_PASSWORD = "scripted-Secret-7"


def settings_for(dovecot, port: int, security: Security, **options) -> ReadSettings:
    options.setdefault("username", dovecot.username)
    options.setdefault("password", dovecot.password)
    options.setdefault("timeout", TIMEOUT)
    return ReadSettings(
        host="127.0.0.1", port=port, security=security, protocol="pop3", **options
    )


def scripted_settings(port: int, security: Security) -> ReadSettings:
    return ReadSettings(
        host="127.0.0.1",
        port=port,
        security=security,
        username="agent@portal.test",
        password=SCRIPTED_PASSWORD,
        protocol="pop3",
        timeout=TIMEOUT,
    )


def check_failure(settings: ReadSettings, **options) -> TransportError:
    with pytest.raises(TransportError) as caught:
        pop3.check_mailbox(settings, **options)
    return caught.value


def assert_no_password(error: TransportError, password: str) -> None:
    assert password not in str(error)
    assert password not in error.summary
    assert password not in error.advice
    assert password not in error.reply


@pytest.mark.parametrize(
    ("port_name", "security"),
    [
        ("pop3s_port", Security.SSL),
        ("pop3_port", Security.STARTTLS),
        ("pop3_port", Security.NONE),
    ],
)
def test_check_mailbox_counts_messages(dovecot, certificates, port_name, security):
    settings = settings_for(dovecot, getattr(dovecot, port_name), security)

    result = pop3.check_mailbox(settings, cafile=str(certificates.ca_path))

    assert result.message_count == 3
    assert result.folder == "INBOX"
    assert result.folders == ["INBOX"]


def test_pinned_fingerprint_replaces_ca_check(dovecot, certificates):
    settings = settings_for(
        dovecot,
        dovecot.pop3_port,
        Security.STARTTLS,
        trusted_fingerprint=certificates.server.sha256,
    )

    result = pop3.check_mailbox(settings)

    assert result.message_count == 3


def test_wrong_password_fails_authentication(dovecot, certificates):
    password = "not-the-Secret-1"
    settings = settings_for(
        dovecot, dovecot.pop3s_port, Security.SSL, password=password
    )

    error = check_failure(settings, cafile=str(certificates.ca_path))

    assert error.step is Step.AUTHENTICATION
    assert error.summary == f"The server rejected the sign-in for {dovecot.username}."
    assert "Check the user name and password." in error.advice
    assert error.reply == "-ERR [AUTH] Authentication failed."
    assert error.temporary is False
    assert_no_password(error, password)


def test_unknown_host_fails_at_dns():
    settings = ReadSettings(
        host="no-such-host.invalid",
        port=995,
        security=Security.SSL,
        protocol="pop3",
        timeout=TIMEOUT,
    )

    error = check_failure(settings)

    assert error.step is Step.DNS
    assert error.summary == "The host name no-such-host.invalid was not found."


def test_closed_port_fails_at_connect(dovecot, closed_port):
    error = check_failure(settings_for(dovecot, closed_port, Security.NONE))

    assert error.step is Step.CONNECT
    assert error.summary == f"127.0.0.1 refused the connection on port {closed_port}."
    assert error.temporary is True


def test_missing_greeting_times_out(dovecot, silent_port):
    settings = settings_for(dovecot, silent_port, Security.NONE, timeout=1.0)

    error = check_failure(settings)

    assert error.step is Step.TIMEOUT
    assert error.summary == (
        f"127.0.0.1 port {silent_port} did not respond within 1 s while waiting "
        "for the greeting."
    )
    assert error.temporary is True


def test_silent_implicit_tls_port_times_out(dovecot, silent_port):
    settings = settings_for(dovecot, silent_port, Security.SSL, timeout=1.0)

    error = check_failure(settings)

    assert error.step is Step.TIMEOUT
    assert error.summary.endswith("while performing the TLS handshake.")


@pytest.mark.parametrize("security", [Security.STARTTLS, Security.NONE])
def test_implicit_tls_port_without_ssl_setting(dovecot, security):
    settings = settings_for(dovecot, dovecot.pop3s_port, security, timeout=1.0)

    error = check_failure(settings)

    assert error.step is Step.TLS
    assert "expects implicit TLS (SSL/TLS)" in error.summary
    assert f"Choose SSL/TLS security for port {dovecot.pop3s_port}" in error.advice
    assert "110" in error.advice


def test_ssl_setting_on_plain_port(dovecot):
    error = check_failure(settings_for(dovecot, dovecot.pop3_port, Security.SSL))

    assert error.step is Step.TLS
    assert error.summary == (
        f"127.0.0.1 port {dovecot.pop3_port} does not use implicit TLS: the "
        "server answered in plain text."
    )
    assert "995" in error.advice


@pytest.mark.parametrize(
    ("port_name", "security"),
    [("pop3s_port", Security.SSL), ("pop3_port", Security.STARTTLS)],
)
def test_unknown_ca_is_untrusted(dovecot, certificates, port_name, security):
    settings = settings_for(dovecot, getattr(dovecot, port_name), security)

    error = check_failure(settings)

    assert error.step is Step.TLS
    assert error.summary == (
        "The server's certificate was issued by a certificate authority that "
        "this portal does not trust."
    )
    assert error.certificate is not None
    assert error.certificate.sha256 == certificates.server.sha256
    assert_no_password(error, dovecot.password)


@pytest.mark.parametrize(
    ("port_name", "security"),
    [("pop3s_port", Security.SSL), ("pop3_port", Security.STARTTLS)],
)
def test_changed_certificate_fails_before_sign_in(
    dovecot, certificates, port_name, security
):
    settings = settings_for(
        dovecot,
        getattr(dovecot, port_name),
        security,
        trusted_fingerprint=certificates.self_signed.sha256,
    )

    error = check_failure(settings)

    assert error.step is Step.TLS
    assert error.summary.startswith("The server's certificate changed:")
    assert certificates.server.sha256 in error.summary
    assert error.certificate is not None
    assert error.certificate.sha256 == certificates.server.sha256


def test_stls_unavailable_never_falls_back(scripted_server):
    server = scripted_server("+OK Ready\r\n", pop3_responder(["USER", "UIDL"]))

    error = check_failure(scripted_settings(server.port, Security.STARTTLS))

    assert error.step is Step.TLS
    assert error.summary == (
        f"STARTTLS is unavailable: 127.0.0.1 port {server.port} does not offer STLS."
    )
    assert not any(line.startswith(("USER", "PASS")) for line in server.received)
    assert_no_password(error, SCRIPTED_PASSWORD)


def test_sign_in_not_offered_before_tls(scripted_server):
    server = scripted_server(
        "+OK Ready\r\n", pop3_responder(["STLS", "SASL PLAIN", "UIDL"])
    )

    error = check_failure(scripted_settings(server.port, Security.NONE))

    assert error.step is Step.AUTHENTICATION
    assert error.summary == (
        "127.0.0.1 does not offer sign-in on an unencrypted connection."
    )
    assert "Choose STARTTLS security" in error.advice
    assert not any(line.startswith("PASS") for line in server.received)


def test_locked_mailbox_is_temporary(scripted_server):
    server = scripted_server(
        "+OK Ready\r\n",
        pop3_responder(["USER"], sign_in_reply="-ERR [IN-USE] Mailbox is locked"),
    )

    error = check_failure(scripted_settings(server.port, Security.NONE))

    assert error.step is Step.AUTHENTICATION
    assert error.summary == (
        "Another client is using the mailbox, so the server locked it."
    )
    assert error.reply == "-ERR [IN-USE] Mailbox is locked"
    assert error.temporary is True
    assert_no_password(error, SCRIPTED_PASSWORD)
