"""The IMAP transport against Dovecot and scripted servers on 127.0.0.1."""

import pytest

from portal.transports import imap
from portal.transports.base import ReadSettings, Security, Step, TransportError
from tests.servers.scripted import imap_responder

TIMEOUT = 2.0  # seconds; short, so that the timeout tests stay fast
ALL_FOLDERS = ["INBOX", "Archive", "Entwürfe", "Отправленные"]
SCRIPTED_PASSWORD = "scripted-Secret-7"


def settings_for(dovecot, port: int, security: Security, **options) -> ReadSettings:
    options.setdefault("username", dovecot.username)
    options.setdefault("password", dovecot.password)
    options.setdefault("timeout", TIMEOUT)
    return ReadSettings(host="127.0.0.1", port=port, security=security, **options)


def scripted_settings(port: int, security: Security, **options) -> ReadSettings:
    return ReadSettings(
        host="127.0.0.1",
        port=port,
        security=security,
        username="agent@portal.test",
        password=SCRIPTED_PASSWORD,
        timeout=TIMEOUT,
        **options,
    )


def check_failure(settings: ReadSettings, **options) -> TransportError:
    with pytest.raises(TransportError) as caught:
        imap.check_folder(settings, **options)
    return caught.value


def assert_no_password(error: TransportError, password: str) -> None:
    assert password not in str(error)
    assert password not in error.summary
    assert password not in error.advice
    assert password not in error.reply


# Successful checks


@pytest.mark.parametrize(
    ("port_name", "security"),
    [
        ("imaps_port", Security.SSL),
        ("imap_port", Security.STARTTLS),
        ("imap_port", Security.NONE),
    ],
)
def test_check_folder_counts_inbox(dovecot, certificates, port_name, security):
    settings = settings_for(dovecot, getattr(dovecot, port_name), security)

    result = imap.check_folder(settings, cafile=str(certificates.ca_path))

    assert result.message_count == 3
    assert result.folder == "INBOX"
    assert result.folders == ALL_FOLDERS


@pytest.mark.parametrize(("folder", "count"), [("Entwürfe", 1), ("Отправленные", 2)])
def test_check_folder_opens_non_ascii_folder(dovecot, certificates, folder, count):
    settings = settings_for(dovecot, dovecot.imaps_port, Security.SSL, folder=folder)

    result = imap.check_folder(settings, cafile=str(certificates.ca_path))

    assert result.message_count == count
    assert result.folder == folder


def test_list_folders_decodes_modified_utf7(dovecot, certificates):
    settings = settings_for(dovecot, dovecot.imaps_port, Security.SSL)

    folders = imap.list_folders(settings, cafile=str(certificates.ca_path))

    assert folders == ALL_FOLDERS


def test_ascii_password_signs_in_with_login(dovecot, certificates):
    settings = settings_for(
        dovecot,
        dovecot.imap_port,
        Security.STARTTLS,
        username=dovecot.ascii_username,
        password=dovecot.ascii_password,
    )

    result = imap.check_folder(settings, cafile=str(certificates.ca_path))

    assert result.message_count == 3


def test_pinned_fingerprint_replaces_ca_check(dovecot, certificates):
    settings = settings_for(
        dovecot,
        dovecot.imaps_port,
        Security.SSL,
        trusted_fingerprint=certificates.server.sha256,
    )

    result = imap.check_folder(settings)

    assert result.message_count == 3


# Failures


def test_wrong_password_fails_authentication(dovecot, certificates):
    password = "not-the-Secret-1"
    settings = settings_for(
        dovecot, dovecot.imaps_port, Security.SSL, password=password
    )

    error = check_failure(settings, cafile=str(certificates.ca_path))

    assert error.step is Step.AUTHENTICATION
    assert error.summary == f"The server rejected the sign-in for {dovecot.username}."
    assert "Check the user name and password." in error.advice
    assert error.reply == "[AUTHENTICATIONFAILED] Authentication failed."
    assert error.temporary is False
    assert_no_password(error, password)


def test_wrong_non_ascii_password_fails_authentication(dovecot, certificates):
    password = "fälsch-Geheim-✗"
    settings = settings_for(
        dovecot, dovecot.imap_port, Security.NONE, password=password
    )

    error = check_failure(settings, cafile=str(certificates.ca_path))

    assert error.step is Step.AUTHENTICATION
    assert error.reply == "[AUTHENTICATIONFAILED] Authentication failed."
    assert_no_password(error, password)


def test_missing_folder_lists_server_folders(dovecot, certificates):
    settings = settings_for(
        dovecot, dovecot.imaps_port, Security.SSL, folder="Gesendet"
    )

    error = check_failure(settings, cafile=str(certificates.ca_path))

    assert error.step is Step.FOLDER
    assert error.summary == 'The folder "Gesendet" was not found on 127.0.0.1.'
    assert error.advice == (
        "Choose one of the server's folders: INBOX, Archive, Entwürfe, Отправленные."
    )
    assert "Gesendet" in error.reply
    assert_no_password(error, dovecot.password)


def test_unknown_host_fails_at_dns():
    settings = ReadSettings(
        host="no-such-host.invalid", port=993, security=Security.SSL, timeout=TIMEOUT
    )

    error = check_failure(settings)

    assert error.step is Step.DNS
    assert error.summary == "The host name no-such-host.invalid was not found."


def test_closed_port_fails_at_connect(dovecot, closed_port):
    error = check_failure(settings_for(dovecot, closed_port, Security.SSL))

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
    assert_no_password(error, dovecot.password)


@pytest.mark.parametrize("security", [Security.STARTTLS, Security.NONE])
def test_implicit_tls_port_without_ssl_setting(dovecot, security):
    settings = settings_for(dovecot, dovecot.imaps_port, security, timeout=1.0)

    error = check_failure(settings)

    assert error.step is Step.TLS
    assert "expects implicit TLS (SSL/TLS)" in error.summary
    assert f"Choose SSL/TLS security for port {dovecot.imaps_port}" in error.advice
    assert "143" in error.advice


def test_ssl_setting_on_plain_port(dovecot):
    error = check_failure(settings_for(dovecot, dovecot.imap_port, Security.SSL))

    assert error.step is Step.TLS
    assert error.summary == (
        f"127.0.0.1 port {dovecot.imap_port} does not use implicit TLS: the server "
        "answered in plain text."
    )
    assert "993" in error.advice


@pytest.mark.parametrize(
    ("port_name", "security"),
    [("imaps_port", Security.SSL), ("imap_port", Security.STARTTLS)],
)
def test_unknown_ca_is_untrusted(dovecot, certificates, port_name, security):
    # Without cafile only the system's CAs count, and they lack the test CA.
    settings = settings_for(dovecot, getattr(dovecot, port_name), security)

    error = check_failure(settings)

    assert error.step is Step.TLS
    assert error.summary == (
        "The server's certificate was issued by a certificate authority that "
        "this portal does not trust."
    )
    assert error.certificate is not None
    assert error.certificate.sha256 == certificates.server.sha256
    assert error.certificate.subject == "CN=localhost,O=Portal tests"
    assert error.certificate.issuer == "CN=Portal test CA,O=Portal tests"
    assert_no_password(error, dovecot.password)


@pytest.mark.parametrize(
    ("port_name", "security"),
    [("imaps_port", Security.SSL), ("imap_port", Security.STARTTLS)],
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
    assert error.summary == (
        "The server's certificate changed: it is now CN=localhost,O=Portal tests "
        f"with SHA-256 fingerprint {certificates.server.sha256}."
    )
    assert "The password was not sent." in error.advice
    assert error.certificate is not None
    assert error.certificate.sha256 == certificates.server.sha256


# Failures that Dovecot cannot simulate


def test_starttls_unavailable_never_falls_back(scripted_server):
    server = scripted_server(
        "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Ready\r\n",
        imap_responder("IMAP4rev1 AUTH=PLAIN"),
    )

    error = check_failure(scripted_settings(server.port, Security.STARTTLS))

    assert error.step is Step.TLS
    assert error.summary == (
        f"STARTTLS is unavailable: 127.0.0.1 port {server.port} does not offer it."
    )
    assert not any("LOGIN" in line for line in server.received)
    assert_no_password(error, SCRIPTED_PASSWORD)


def test_login_disabled_before_tls(scripted_server):
    server = scripted_server(
        "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Ready\r\n",
        imap_responder("IMAP4rev1 STARTTLS LOGINDISABLED"),
    )

    error = check_failure(scripted_settings(server.port, Security.NONE))

    assert error.step is Step.AUTHENTICATION
    assert error.summary == (
        "127.0.0.1 does not offer sign-in on an unencrypted connection."
    )
    assert "Choose STARTTLS security" in error.advice
    assert not any("LOGIN " in line for line in server.received)


def test_gmail_app_password_required(scripted_server):
    reply = (
        "[ALERT] Application-specific password required: "
        "https://support.google.com/accounts/answer/185833 (Failure)"
    )
    server = scripted_server(
        "* OK [CAPABILITY IMAP4rev1] Gimap ready\r\n",
        imap_responder("IMAP4rev1", login_reply=f"NO {reply}"),
    )

    error = check_failure(scripted_settings(server.port, Security.NONE))

    assert error.step is Step.AUTHENTICATION
    assert error.summary == "Google requires an app password for this account."
    assert "Create an app password" in error.advice
    assert error.reply == reply
    assert_no_password(error, SCRIPTED_PASSWORD)


def test_unavailable_sign_in_is_temporary(scripted_server):
    server = scripted_server(
        "* OK [CAPABILITY IMAP4rev1] Ready\r\n",
        imap_responder(
            "IMAP4rev1", login_reply="NO [UNAVAILABLE] Authentication backend down"
        ),
    )

    error = check_failure(scripted_settings(server.port, Security.NONE))

    assert error.step is Step.AUTHENTICATION
    assert error.summary == "The server could not check the sign-in right now."
    assert error.temporary is True
