"""The SMTP transport against real aiosmtpd servers on 127.0.0.1."""

import asyncio
import email
import email.policy
from email.headerregistry import Address
from email.message import EmailMessage

import pytest

from portal.transports import smtp
from portal.transports.base import Security, SmtpSettings, Step, TransportError
from tests.servers.smtp import (
    SMTP_PASSWORD,
    SMTP_USERNAME,
    Authenticator,
    RecordingHandler,
)

TIMEOUT = 2.0  # seconds; short, so that the timeout tests stay fast


def make_message(
    sender: str | Address = "agent@portal.test",
    to: str | Address = "customer@example.com",
    subject: str = "Test message",
    body: str = "Hello from the portal.",
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


def settings_for(port: int, security: Security, **options) -> SmtpSettings:
    """Settings for a test server. The password is set even without sign-in, so
    that every test can check that it never leaks."""
    options.setdefault("username", SMTP_USERNAME)
    options.setdefault("password", SMTP_PASSWORD)
    options.setdefault("timeout", TIMEOUT)
    return SmtpSettings(host="127.0.0.1", port=port, security=security, **options)


def send_failure(settings: SmtpSettings, message=None, **options) -> TransportError:
    with pytest.raises(TransportError) as caught:
        smtp.send_message(settings, message or make_message(), **options)
    return caught.value


def assert_no_password(error: TransportError, password: str = SMTP_PASSWORD) -> None:
    assert password not in str(error)
    assert password not in error.summary
    assert password not in error.advice
    assert password not in error.reply


def parse(content: bytes) -> EmailMessage:
    return email.message_from_bytes(content, policy=email.policy.default)


# Successful sends


def test_send_plain_delivers_message(plain_smtp):
    result = smtp.send_message(
        settings_for(plain_smtp.port, Security.NONE), make_message()
    )

    assert result.reply == "250 2.0.0 Ok: queued as TEST1"
    assert result.refused_recipients == {}
    [received] = plain_smtp.messages
    assert received.mail_from == "agent@portal.test"
    assert received.rcpt_tos == ["customer@example.com"]
    assert received.encrypted is False
    assert parse(received.content)["Subject"] == "Test message"


def test_send_starttls_verified_with_ca(starttls_smtp, certificates):
    settings = settings_for(starttls_smtp.port, Security.STARTTLS)

    result = smtp.send_message(
        settings, make_message(), cafile=str(certificates.ca_path)
    )

    assert result.reply.startswith("250 ")
    [received] = starttls_smtp.messages
    assert received.encrypted is True


def test_send_implicit_tls_verified_with_ca(implicit_tls_smtp, certificates):
    settings = settings_for(implicit_tls_smtp.port, Security.SSL)

    smtp.send_message(settings, make_message(), cafile=str(certificates.ca_path))

    [received] = implicit_tls_smtp.messages
    assert received.encrypted is True


@pytest.mark.parametrize("tls_mode", ["implicit", "starttls"])
def test_send_pinned_self_signed_certificate(smtp_server, certificates, tls_mode):
    server = smtp_server(tls=tls_mode, certificate=certificates.self_signed)
    security = Security.SSL if tls_mode == "implicit" else Security.STARTTLS
    # Lower case without colons: the fingerprint is normalized before use.
    fingerprint = certificates.self_signed.sha256.replace(":", "").lower()

    smtp.send_message(
        settings_for(server.port, security, trusted_fingerprint=fingerprint),
        make_message(),
    )

    [received] = server.messages
    assert received.encrypted is True


@pytest.mark.parametrize("excluded_mechanism", ["LOGIN", "PLAIN"])
def test_sign_in_with_non_ascii_password(smtp_server, certificates, excluded_mechanism):
    authenticator = Authenticator()
    server = smtp_server(
        tls="starttls",
        certificate=certificates.server,
        authenticator=authenticator,
        auth_required=True,
        auth_exclude_mechanism=[excluded_mechanism],
    )
    settings = settings_for(server.port, Security.STARTTLS, use_auth=True)

    smtp.send_message(settings, make_message(), cafile=str(certificates.ca_path))

    assert authenticator.attempts == [SMTP_USERNAME]
    [received] = server.messages
    assert received.login == SMTP_USERNAME


def test_sign_in_without_tls_when_server_allows(smtp_server):
    authenticator = Authenticator()
    server = smtp_server(authenticator=authenticator, auth_require_tls=False)
    settings = settings_for(server.port, Security.NONE, use_auth=True)

    smtp.send_message(settings, make_message())

    [received] = server.messages
    assert received.login == SMTP_USERNAME


def test_non_ascii_display_names_are_encoded(plain_smtp):
    message = make_message(
        sender=Address("Jörg Müller", "joerg", "portal.test"),
        to=Address("Zoë Ærø", "zoe", "example.com"),
        subject="Grüße aus Köln",
        body="Schöne Grüße ✓",
    )

    smtp.send_message(settings_for(plain_smtp.port, Security.NONE), message)

    [received] = plain_smtp.messages
    head = received.content.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"=?utf-8?" in head
    parsed = parse(received.content)
    assert parsed["From"].addresses[0].display_name == "Jörg Müller"
    assert parsed["To"].addresses[0].display_name == "Zoë Ærø"
    assert parsed["Subject"] == "Grüße aus Köln"
    assert parsed.get_content().strip() == "Schöne Grüße ✓"
    assert received.smtputf8 is False


def test_idna_domain_uses_a_labels(plain_smtp):
    message = make_message(
        sender=Address("Bücherei", "info", "bücher.example"),
        to=Address("", "kunde", "münchen.example"),
    )

    smtp.send_message(settings_for(plain_smtp.port, Security.NONE), message)

    [received] = plain_smtp.messages
    assert received.mail_from == "info@xn--bcher-kva.example"
    assert received.rcpt_tos == ["kunde@xn--mnchen-3ya.example"]
    assert received.smtputf8 is False
    head = received.content.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"<info@xn--bcher-kva.example>" in head
    assert b"kunde@xn--mnchen-3ya.example" in head
    # The caller's message keeps its Unicode domains.
    assert message["From"].addresses[0].domain == "bücher.example"


def test_non_ascii_local_part_uses_smtputf8(plain_smtp):
    message = make_message(to=Address("Jörg", "jörg", "bücher.example"))

    smtp.send_message(settings_for(plain_smtp.port, Security.NONE), message)

    [received] = plain_smtp.messages
    assert received.smtputf8 is True
    assert "SMTPUTF8" in received.mail_options
    assert received.rcpt_tos == ["jörg@xn--bcher-kva.example"]
    # With SMTPUTF8 the headers travel as raw UTF-8.
    head = received.content.split(b"\r\n\r\n", 1)[0]
    assert "To: Jörg <jörg@bücher.example>".encode() in head


def test_smtputf8_unsupported_fails_on_recipient(smtp_server):
    server = smtp_server(enable_SMTPUTF8=False)
    message = make_message(to="jörg@example.com")

    error = send_failure(settings_for(server.port, Security.NONE), message)

    assert error.step is Step.RECIPIENT
    assert "does not support SMTPUTF8" in error.summary
    assert "jörg@example.com" in error.summary
    assert error.temporary is False
    assert server.messages == []


def test_bcc_is_delivered_but_not_sent(plain_smtp):
    message = make_message()
    message["Bcc"] = "hidden@example.com"

    smtp.send_message(settings_for(plain_smtp.port, Security.NONE), message)

    [received] = plain_smtp.messages
    assert received.rcpt_tos == ["customer@example.com", "hidden@example.com"]
    assert b"hidden@example.com" not in received.content


def test_partial_recipient_refusal_is_reported(smtp_server):
    handler = RecordingHandler(
        rcpt_replies={"gone@example.com": "550 5.1.1 User unknown"}
    )
    server = smtp_server(handler=handler)
    message = make_message(to="customer@example.com, gone@example.com")

    result = smtp.send_message(settings_for(server.port, Security.NONE), message)

    assert result.refused_recipients == {"gone@example.com": "550 5.1.1 User unknown"}
    [received] = server.messages
    assert received.rcpt_tos == ["customer@example.com"]


def test_connection_sends_several_messages(smtp_server):
    handler = RecordingHandler(
        rcpt_replies={"gone@example.com": "550 5.1.1 User unknown"}
    )
    server = smtp_server(handler=handler)

    settings = settings_for(server.port, Security.NONE)

    async def send_batch() -> list[str]:
        outcomes = []
        async with smtp.SmtpConnection(settings) as connection:
            for to in ["one@example.com", "gone@example.com", "three@example.com"]:
                try:
                    result = await connection.send(make_message(to=to, subject=to))
                except TransportError as error:
                    outcomes.append(f"{to}: {error.step}")
                else:
                    outcomes.append(f"{to}: {result.reply}")
            # The rejected recipient did not cost the connection.
            outcomes.append(f"connected: {connection.is_connected}")
        return outcomes

    outcomes = asyncio.run(send_batch())

    assert outcomes == [
        "one@example.com: 250 2.0.0 Ok: queued as TEST1",
        "gone@example.com: recipient",
        "three@example.com: 250 2.0.0 Ok: queued as TEST2",
        "connected: True",
    ]
    assert [message.rcpt_tos for message in server.messages] == [
        ["one@example.com"],
        ["three@example.com"],
    ]


# Failures before the server's greeting


def test_unknown_host_fails_at_dns():
    settings = SmtpSettings(
        host="no-such-host.invalid",
        port=25,
        security=Security.NONE,
        password=SMTP_PASSWORD,
        timeout=TIMEOUT,
    )

    error = send_failure(settings)

    assert error.step is Step.DNS
    assert error.summary == "The host name no-such-host.invalid was not found."
    assert "typing errors" in error.advice
    assert error.temporary is False
    assert_no_password(error)


def test_closed_port_fails_at_connect(closed_port):
    error = send_failure(settings_for(closed_port, Security.NONE))

    assert error.step is Step.CONNECT
    assert error.summary == f"127.0.0.1 refused the connection on port {closed_port}."
    assert "Check the port number" in error.advice
    assert error.temporary is True
    assert_no_password(error)


def test_unanswered_connect_times_out(unanswered_port):
    settings = settings_for(unanswered_port, Security.NONE, timeout=1.0)

    error = send_failure(settings)

    assert error.step is Step.TIMEOUT
    assert error.summary == (
        f"127.0.0.1 port {unanswered_port} did not respond within 1 s while connecting."
    )
    assert "firewall" in error.advice
    assert error.temporary is True
    assert_no_password(error)


def test_missing_greeting_times_out(silent_port):
    settings = settings_for(silent_port, Security.NONE, timeout=1.0)

    error = send_failure(settings)

    assert error.step is Step.TIMEOUT
    assert error.summary == (
        f"127.0.0.1 port {silent_port} did not respond within 1 s while waiting "
        "for the greeting."
    )
    assert error.temporary is True
    assert_no_password(error)


# TLS


@pytest.mark.parametrize("security", [Security.STARTTLS, Security.NONE])
def test_implicit_tls_port_without_ssl_setting(implicit_tls_smtp, security):
    settings = settings_for(implicit_tls_smtp.port, security, timeout=1.0)

    error = send_failure(settings)

    assert error.step is Step.TLS
    assert "expects implicit TLS (SSL/TLS)" in error.summary
    assert f"Choose SSL/TLS security for port {implicit_tls_smtp.port}" in error.advice
    assert "587" in error.advice
    assert error.temporary is False
    assert_no_password(error)


@pytest.mark.parametrize("tls_mode", ["none", "starttls"])
def test_ssl_setting_on_plain_port(smtp_server, certificates, tls_mode):
    server = smtp_server(tls=tls_mode, certificate=certificates.server)

    error = send_failure(settings_for(server.port, Security.SSL))

    assert error.step is Step.TLS
    assert error.summary == (
        f"127.0.0.1 port {server.port} does not use implicit TLS: the server "
        "answered in plain text."
    )
    assert f"Choose STARTTLS security for port {server.port}" in error.advice
    assert "465" in error.advice
    assert_no_password(error)


@pytest.mark.parametrize(
    ("tls_mode", "security"),
    [("implicit", Security.SSL), ("starttls", Security.STARTTLS)],
)
def test_self_signed_certificate_is_untrusted(
    smtp_server, certificates, tls_mode, security
):
    authenticator = Authenticator()
    server = smtp_server(
        tls=tls_mode, certificate=certificates.self_signed, authenticator=authenticator
    )
    settings = settings_for(server.port, security, use_auth=True)

    error = send_failure(settings)

    assert error.step is Step.TLS
    assert error.summary == "The server's certificate is self-signed."
    assert certificates.self_signed.sha256 in error.advice
    assert error.certificate is not None
    assert error.certificate.sha256 == certificates.self_signed.sha256
    assert error.certificate.subject == "CN=localhost,O=Portal tests"
    assert error.certificate.issuer == "CN=localhost,O=Portal tests"
    assert error.certificate.not_after.startswith("20")
    assert authenticator.attempts == []
    assert_no_password(error)


def test_unknown_ca_is_untrusted(starttls_smtp, certificates):
    # Without cafile only the system's CAs count, and they lack the test CA.
    error = send_failure(settings_for(starttls_smtp.port, Security.STARTTLS))

    assert error.step is Step.TLS
    assert error.summary == (
        "The server's certificate was issued by a certificate authority that "
        "this portal does not trust."
    )
    assert error.certificate is not None
    assert error.certificate.sha256 == certificates.server.sha256
    assert error.certificate.issuer == "CN=Portal test CA,O=Portal tests"


def test_expired_certificate_is_untrusted(smtp_server, certificates):
    server = smtp_server(tls="implicit", certificate=certificates.expired)

    error = send_failure(
        settings_for(server.port, Security.SSL), cafile=str(certificates.ca_path)
    )

    assert error.step is Step.TLS
    assert error.certificate is not None
    assert (
        error.summary
        == f"The server's certificate expired on {error.certificate.not_after}."
    )
    assert error.certificate.sha256 == certificates.expired.sha256


def test_wrong_host_certificate_is_untrusted(smtp_server, certificates):
    server = smtp_server(tls="starttls", certificate=certificates.wrong_host)

    error = send_failure(
        settings_for(server.port, Security.STARTTLS), cafile=str(certificates.ca_path)
    )

    assert error.step is Step.TLS
    assert (
        error.summary == "The server's certificate is not valid for the name 127.0.0.1."
    )
    assert "The certificate is for mail.example.invalid." in error.advice
    assert error.certificate is not None
    assert error.certificate.alt_names == ("mail.example.invalid",)


@pytest.mark.parametrize(
    ("tls_mode", "security"),
    [("implicit", Security.SSL), ("starttls", Security.STARTTLS)],
)
def test_changed_certificate_fails_before_sign_in(
    smtp_server, certificates, tls_mode, security
):
    authenticator = Authenticator()
    server = smtp_server(
        tls=tls_mode, certificate=certificates.server, authenticator=authenticator
    )
    settings = settings_for(
        server.port,
        security,
        use_auth=True,
        trusted_fingerprint=certificates.self_signed.sha256,
    )

    error = send_failure(settings)

    assert error.step is Step.TLS
    assert error.summary == (
        "The server's certificate changed: it is now CN=localhost,O=Portal tests "
        f"with SHA-256 fingerprint {certificates.server.sha256}."
    )
    assert certificates.self_signed.sha256 in error.advice
    assert "The password was not sent." in error.advice
    assert error.certificate is not None
    assert error.certificate.sha256 == certificates.server.sha256
    assert authenticator.attempts == []
    assert server.messages == []
    assert_no_password(error)


def test_invalid_fingerprint_fails_at_tls(plain_smtp):
    settings = settings_for(
        plain_smtp.port, Security.SSL, trusted_fingerprint="not-a-fingerprint"
    )

    error = send_failure(settings)

    assert error.step is Step.TLS
    assert "not a valid SHA-256 fingerprint" in error.summary


def test_starttls_unavailable_never_falls_back(smtp_server):
    authenticator = Authenticator()
    server = smtp_server(authenticator=authenticator, auth_require_tls=False)
    settings = settings_for(server.port, Security.STARTTLS, use_auth=True)

    error = send_failure(settings)

    assert error.step is Step.TLS
    assert error.summary == (
        f"STARTTLS is unavailable: 127.0.0.1 port {server.port} does not offer it."
    )
    assert "465" in error.advice
    assert authenticator.attempts == []
    assert server.messages == []
    assert_no_password(error)


# Sign-in


def test_sign_in_not_offered_before_tls(smtp_server, certificates):
    # aiosmtpd advertises AUTH only after STARTTLS unless auth_require_tls=False.
    authenticator = Authenticator()
    server = smtp_server(
        tls="starttls", certificate=certificates.server, authenticator=authenticator
    )
    settings = settings_for(server.port, Security.NONE, use_auth=True)

    error = send_failure(settings)

    assert error.step is Step.AUTHENTICATION
    assert error.summary == (
        "127.0.0.1 does not offer sign-in on an unencrypted connection."
    )
    assert "Choose STARTTLS security" in error.advice
    assert authenticator.attempts == []
    assert_no_password(error)


def auth_server(smtp_server, certificates, **authenticator_options):
    return smtp_server(
        tls="starttls",
        certificate=certificates.server,
        authenticator=Authenticator(**authenticator_options),
        auth_required=True,
    )


def test_wrong_password_fails_authentication(smtp_server, certificates):
    server = auth_server(smtp_server, certificates)
    settings = settings_for(
        server.port, Security.STARTTLS, use_auth=True, password="wrong password ✗"
    )

    error = send_failure(settings, cafile=str(certificates.ca_path))

    assert error.step is Step.AUTHENTICATION
    assert error.summary == f"The server rejected the sign-in for {SMTP_USERNAME}."
    assert "Check the user name and password." in error.advice
    assert error.reply == "535 5.7.8 Authentication credentials invalid"
    assert error.temporary is False
    assert_no_password(error, "wrong password ✗")


@pytest.mark.parametrize(
    ("reply", "summary", "advice"),
    [
        (
            "535 5.7.139 Authentication unsuccessful, basic authentication is "
            "disabled.",
            "Microsoft 365 rejected the password because basic authentication is "
            "disabled.",
            "Convert this account to a Microsoft 365 account",
        ),
        (
            "534 5.7.9 Application-specific password required.",
            "Google requires an app password for this account.",
            "Create an app password",
        ),
    ],
    ids=["microsoft-365", "gmail"],
)
def test_provider_rejects_password(smtp_server, certificates, reply, summary, advice):
    server = auth_server(smtp_server, certificates, failures={SMTP_USERNAME: reply})
    settings = settings_for(server.port, Security.STARTTLS, use_auth=True)

    error = send_failure(settings, cafile=str(certificates.ca_path))

    assert error.step is Step.AUTHENTICATION
    assert error.summary == summary
    assert advice in error.advice
    assert error.reply == reply
    assert error.temporary is False
    assert_no_password(error)


def test_temporary_sign_in_failure_is_temporary(smtp_server, certificates):
    server = auth_server(
        smtp_server,
        certificates,
        failures={SMTP_USERNAME: "454 4.7.0 Temporary authentication failure"},
    )
    settings = settings_for(server.port, Security.STARTTLS, use_auth=True)

    error = send_failure(settings, cafile=str(certificates.ca_path))

    assert error.step is Step.AUTHENTICATION
    assert error.summary == "The server could not check the sign-in right now."
    assert error.temporary is True


def test_echoed_password_is_hidden(smtp_server, certificates):
    server = auth_server(
        smtp_server,
        certificates,
        failures={SMTP_USERNAME: f"535 5.7.8 Wrong password {SMTP_PASSWORD}"},
    )
    settings = settings_for(server.port, Security.STARTTLS, use_auth=True)

    error = send_failure(settings, cafile=str(certificates.ca_path))

    assert error.reply == "535 5.7.8 Wrong password ********"
    assert_no_password(error)


# Rejected sender, recipients and message


def failing_server(smtp_server, **handler_options):
    return smtp_server(handler=RecordingHandler(**handler_options))


def test_sender_refused_after_sign_in(smtp_server, certificates):
    handler = RecordingHandler(
        mail_reply="550 5.7.60 SMTP; Client does not have permissions to send as "
        "this sender"
    )
    server = smtp_server(
        tls="starttls",
        certificate=certificates.server,
        handler=handler,
        authenticator=Authenticator(),
    )
    settings = settings_for(server.port, Security.STARTTLS, use_auth=True)
    message = make_message(sender="boss@portal.test")

    error = send_failure(settings, message, cafile=str(certificates.ca_path))

    assert error.step is Step.SENDER
    assert error.summary == "The server refused the sender address boss@portal.test."
    assert "Sign-in worked, but this login may not send as boss@portal.test" in (
        error.advice
    )
    assert error.reply.startswith("550 5.7.60")
    assert error.temporary is False
    assert_no_password(error)


def test_recipient_refused(smtp_server):
    server = failing_server(
        smtp_server,
        rcpt_replies={"customer@example.com": "550 5.1.1 User unknown"},
    )

    error = send_failure(settings_for(server.port, Security.NONE))

    assert error.step is Step.RECIPIENT
    assert error.summary == "The server refused the recipient customer@example.com."
    assert "Check the address" in error.advice
    assert error.reply == "550 5.1.1 User unknown"
    assert error.temporary is False
    assert server.messages == []
    assert_no_password(error)


def test_greylisted_recipient_is_temporary(smtp_server):
    server = failing_server(
        smtp_server,
        rcpt_replies={"customer@example.com": "451 4.7.1 Greylisted, try later"},
    )

    error = send_failure(settings_for(server.port, Security.NONE))

    assert error.step is Step.RECIPIENT
    assert error.temporary is True
    assert "try again later" in error.advice


@pytest.mark.parametrize(
    "handler_options",
    [
        {"data_reply": "552 5.3.4 Message size exceeds fixed limit"},
        {"mail_reply": "552 5.3.4 Message size exceeds fixed limit"},
    ],
    ids=["data", "mail"],
)
def test_server_rejects_large_message(smtp_server, handler_options):
    # No SIZE limit in EHLO, so that only the reply reports the size problem.
    server = smtp_server(
        handler=RecordingHandler(**handler_options), data_size_limit=None
    )

    error = send_failure(settings_for(server.port, Security.NONE))

    assert error.step is Step.MESSAGE
    assert error.summary == "The server rejected the message because it is too large."
    assert "smaller message" in error.advice
    assert error.reply == "552 5.3.4 Message size exceeds fixed limit"
    assert error.temporary is False


def test_message_above_advertised_size(smtp_server):
    server = smtp_server(data_size_limit=1000)
    message = make_message(body="x" * 5000)

    error = send_failure(settings_for(server.port, Security.NONE), message)

    assert error.step is Step.MESSAGE
    assert error.summary.startswith("The message is ")
    assert error.summary.endswith(
        "bytes, more than the 1000 bytes that 127.0.0.1 accepts."
    )
    assert server.messages == []


def test_temporary_data_failure_is_temporary(smtp_server):
    server = failing_server(smtp_server, data_reply="451 4.3.0 Temporary local problem")

    error = send_failure(settings_for(server.port, Security.NONE))

    assert error.step is Step.MESSAGE
    assert error.summary == "The server rejected the message."
    assert error.reply == "451 4.3.0 Temporary local problem"
    assert error.temporary is True


def test_message_without_recipient_is_rejected():
    message = make_message()
    del message["To"]

    with pytest.raises(ValueError, match="no To, Cc or Bcc"):
        smtp.build_envelope(message)
