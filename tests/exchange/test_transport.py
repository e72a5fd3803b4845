"""The EWS transport against the fake Exchange server: sends, reads and failures."""

import asyncio
import base64
import logging
from dataclasses import replace

import pytest

from portal.services.messages import build_message
from portal.transports import destinations, ews
from portal.transports.base import Step, TransportError
from tests.exchange.conftest import (
    DELEGATED,
    MAILBOX,
    OTHER,
    SECRET,
    SHARED,
    UPN,
    USERNAME,
)
from tests.fakes.ews import Busy, ResponseError, Silence, Status
from tests.servers.ports import free_port


@pytest.fixture
def settings(exchange, certificates):
    return ews.ExchangeSettings(
        ews_url=exchange.ews_url,
        mailbox=MAILBOX,
        username=USERNAME,
        password=SECRET,
        authentication=ews.Authentication.BASIC,
        tls=ews.TlsPolicy(cafile=str(certificates.ca_path)),
        timeout=3.0,
        max_back_off=0.2,
    )


def message(**overrides):
    values = {
        "from_address": MAILBOX,
        "from_name": "Helpdesk",
        "to": ["customer@example.org"],
        "subject": "Your request",
        "body": "We are on it.",
    }
    values.update(overrides)
    return build_message(**values)


def failure_of(call) -> TransportError:
    with pytest.raises(TransportError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize(
    ("authentication", "username"),
    [
        (ews.Authentication.BASIC, USERNAME),
        (ews.Authentication.BASIC, UPN),
        (ews.Authentication.NTLM, USERNAME),
        (ews.Authentication.NTLM, UPN),
    ],
)
def test_send_signs_in_and_creates_item(exchange, settings, authentication, username):
    settings = replace(settings, authentication=authentication, username=username)

    result = ews.send_message(settings, message())

    assert result.reply.startswith("NoError")
    (sent,) = exchange.sent
    assert sent.mailbox == MAILBOX
    assert sent.disposition == "SendOnly"
    assert sent.from_element == MAILBOX
    assert sent.sent_as == "self"
    assert sent.mime["Subject"] == "Your request"
    (create,) = exchange.requests_for("CreateItem")
    assert create.user.lower() == username.lower()
    scheme = "Basic" if authentication == ews.Authentication.BASIC else ""
    if scheme:
        assert create.authorization_scheme == scheme


def test_count_inbox_reads_total_and_unread(settings):
    result = ews.count_inbox(settings)

    assert result.message_count == 7
    assert result.unread_count == 2
    assert result.folder == "Inbox"


def test_known_version_skips_version_request(exchange, settings):
    ews.count_inbox(replace(settings, server_version="15.2.1544.4"))

    assert exchange.requests_for("ConvertId") == []
    assert len(exchange.requests_for("GetFolder")) == 2


def test_unknown_version_is_asked_first(exchange, settings):
    ews.count_inbox(settings)

    assert len(exchange.requests_for("ConvertId")) == 1


def test_send_as_puts_override_in_from(exchange, settings):
    settings = replace(settings, from_address=SHARED, from_mode=ews.FromMode.SEND_AS)

    ews.send_message(settings, message())

    (sent,) = exchange.sent
    assert sent.from_element == SHARED
    assert sent.sent_as == "send-as"
    assert sent.mime["From"].addresses[0].addr_spec == SHARED
    assert sent.mime["From"].addresses[0].display_name == "Helpdesk"
    assert sent.mime["Sender"] is None


def test_send_on_behalf_names_mailbox_as_sender(exchange, settings):
    settings = replace(
        settings, from_address=DELEGATED, from_mode=ews.FromMode.ON_BEHALF
    )

    ews.send_message(settings, message())

    (sent,) = exchange.sent
    assert sent.from_element == DELEGATED
    assert sent.sent_as == "on-behalf"
    assert sent.mime["From"].addresses[0].addr_spec == DELEGATED
    assert sent.mime["Sender"].addresses[0].addr_spec == MAILBOX


@pytest.mark.parametrize(
    ("mode", "right"),
    [(ews.FromMode.SEND_AS, "Send As"), (ews.FromMode.ON_BEHALF, "Send on Behalf")],
)
def test_missing_right_is_explained(exchange, settings, mode, right):
    settings = replace(settings, from_address=OTHER, from_mode=mode)

    error = failure_of(lambda: ews.send_message(settings, message()))

    assert error.step == Step.SENDER
    assert error.summary.startswith(
        f"{right} permission denied by Exchange for {OTHER}"
    )
    assert f"{MAILBOX} does not have the {right} right" in error.summary
    assert "ErrorSendAsDenied" in error.reply
    assert "clear the From override" in error.advice
    assert not error.temporary
    assert exchange.sent == []


def test_envelope_recipients_not_shown_become_bcc(exchange, settings):
    ews.send_message(
        settings,
        message(to=["customer@example.org"]),
        recipients=["customer@example.org", "auditor@example.org"],
    )

    (sent,) = exchange.sent
    assert sent.mime["Bcc"] == "auditor@example.org"


def test_delivery_connection_sends_without_blocking_loop(exchange, settings):
    async def deliver():
        async with ews.EwsConnection(settings) as connection:
            first = connection.send(message(subject="one"))
            second = connection.send(message(subject="two"))
            return await asyncio.gather(first, second)

    results = asyncio.run(deliver())

    assert [result.reply.split(" ")[0] for result in results] == ["NoError", "NoError"]
    assert sorted(sent.mime["Subject"] for sent in exchange.sent) == ["one", "two"]


def test_wrong_password_is_unauthorized(exchange, settings):
    settings = replace(settings, password="not the password")

    error = failure_of(lambda: ews.count_inbox(settings))

    assert error.step == Step.AUTHENTICATION
    assert "HTTP 401 with Basic" in error.summary
    assert "DOMAIN\\user" in error.advice
    assert "try NTLM" in error.advice
    assert not error.temporary


def test_wrong_password_with_ntlm_is_unauthorized(settings):
    settings = replace(
        settings, password="not the password", authentication=ews.Authentication.NTLM
    )

    error = failure_of(lambda: ews.send_message(settings, message()))

    assert error.step == Step.AUTHENTICATION
    assert "HTTP 401 with NTLM" in error.summary
    assert "try Basic" in error.advice


def test_basic_not_offered_is_unauthorized(exchange, settings):
    exchange.offered = ("NTLM",)

    error = failure_of(lambda: ews.count_inbox(settings))

    assert error.step == Step.AUTHENTICATION


def test_unknown_mailbox_is_not_found(settings):
    settings = replace(settings, mailbox="nobody@example.com")

    error = failure_of(lambda: ews.send_message(settings, message()))

    assert error.step == Step.SENDER
    assert (
        error.summary == "Exchange has no mailbox with the address nobody@example.com."
    )
    assert "ErrorNonExistentMailbox" in error.reply


def test_other_mailbox_without_rights_is_denied(settings):
    settings = replace(settings, mailbox=OTHER, server_version="15.2.1544.4")

    error = failure_of(lambda: ews.count_inbox(settings))

    assert error.step == Step.FOLDER
    assert f"may not open the mailbox {OTHER}" in error.summary
    assert "Full Access" in error.advice


def test_busy_server_is_retried(exchange, settings):
    exchange.fail("CreateItem", Busy(back_off_ms=20), Status(503, retry_after=0))

    result = ews.send_message(settings, message())

    assert result.reply.startswith("NoError")
    assert len(exchange.sent) == 1
    assert len(exchange.requests_for("CreateItem")) == 3


def test_busy_server_gives_up_after_retries(exchange, settings):
    exchange.fail("CreateItem", Busy(20), Busy(20), Busy(20))

    error = failure_of(lambda: ews.send_message(settings, message()))

    assert error.temporary
    assert "is busy" in error.summary
    assert "3 times" in error.summary
    assert "ErrorServerBusy" in error.reply
    assert exchange.sent == []


def test_long_back_off_is_left_to_outbox(exchange, settings):
    exchange.fail("GetFolder", Busy(back_off_ms=60_000))

    error = failure_of(lambda: ews.count_inbox(settings))

    assert error.temporary
    assert "asked to wait 60 s" in error.summary
    assert len(exchange.requests_for("GetFolder")) == 1


def test_quota_error_names_mailbox(exchange, settings):
    exchange.fail("CreateItem", ResponseError("ErrorQuotaExceeded", "Quota exceeded."))

    error = failure_of(lambda: ews.send_message(settings, message()))

    assert error.step == Step.MESSAGE
    assert error.summary == f"The mailbox {MAILBOX} is full."


def test_not_ews_endpoint_is_explained(exchange, settings):
    settings = replace(settings, ews_url=exchange.url("/owa/"))

    error = failure_of(lambda: ews.count_inbox(settings))

    assert error.step == Step.PROTOCOL
    assert "answered with HTTP 404, not as an EWS endpoint" in error.summary
    assert "/EWS/Exchange.asmx" in error.advice


def test_closed_port_is_connection_refused(settings):
    settings = replace(
        settings, ews_url=f"https://127.0.0.1:{free_port()}/EWS/Exchange.asmx"
    )

    error = failure_of(lambda: ews.count_inbox(settings))

    assert error.step == Step.CONNECT
    assert "refused the connection" in error.summary
    assert error.temporary


def test_silent_server_times_out(exchange, settings):
    exchange.fail("GetFolder", Silence(5))
    settings = replace(settings, timeout=0.5)

    error = failure_of(lambda: ews.count_inbox(settings))

    assert error.step == Step.TIMEOUT
    assert "did not respond within 0.5 s" in error.summary
    assert error.temporary


def test_deadline_bounds_waiting_caller(settings):
    settings = replace(settings, timeout=0.05, busy_retries=0)

    def slow():
        import time

        time.sleep(1)

    error = failure_of(lambda: ews.run_with_deadline(slow, settings))

    assert error.step == Step.TIMEOUT


def test_self_signed_certificate_shows_fingerprint(certificates):
    from tests.fakes.ews import FakeExchange

    with FakeExchange(certificates.self_signed) as exchange:
        exchange.add_mailbox(MAILBOX, USERNAME, SECRET)
        settings = ews.ExchangeSettings(
            ews_url=exchange.ews_url,
            mailbox=MAILBOX,
            username=USERNAME,
            password=SECRET,
            authentication=ews.Authentication.BASIC,
            timeout=3.0,
        )

        error = failure_of(lambda: ews.count_inbox(settings))
        assert error.step == Step.TLS
        assert error.summary == "The server's certificate is self-signed."
        assert error.certificate.sha256 == certificates.self_signed.sha256
        assert exchange.requests_for("GetFolder") == []

        pinned = replace(
            settings,
            tls=ews.TlsPolicy(trusted_fingerprint=certificates.self_signed.sha256),
        )
        assert ews.count_inbox(pinned).message_count == 3
        ews.close_connections()


def test_changed_certificate_stops_before_password(exchange, settings, certificates):
    pinned = replace(
        settings,
        tls=ews.TlsPolicy(trusted_fingerprint=certificates.self_signed.sha256),
    )

    error = failure_of(lambda: ews.send_message(pinned, message()))

    assert error.step == Step.TLS
    assert error.summary.startswith("The server's certificate changed")
    assert certificates.server.sha256 in error.summary
    assert "The password was not sent." in error.advice
    assert exchange.received == []


def test_expired_certificate_is_explained(certificates):
    from tests.fakes.ews import FakeExchange

    with FakeExchange(certificates.expired) as exchange:
        settings = ews.ExchangeSettings(
            ews_url=exchange.ews_url,
            mailbox=MAILBOX,
            username=USERNAME,
            password=SECRET,
            tls=ews.TlsPolicy(cafile=str(certificates.ca_path)),
            timeout=3.0,
        )
        error = failure_of(lambda: ews.count_inbox(settings))
    assert error.step == Step.TLS
    assert error.summary.startswith("The server's certificate expired")


def test_certificate_for_other_host_is_explained(certificates):
    from tests.fakes.ews import FakeExchange

    with FakeExchange(certificates.wrong_host) as exchange:
        settings = ews.ExchangeSettings(
            ews_url=exchange.ews_url,
            mailbox=MAILBOX,
            username=USERNAME,
            password=SECRET,
            tls=ews.TlsPolicy(cafile=str(certificates.ca_path)),
            timeout=3.0,
        )
        error = failure_of(lambda: ews.count_inbox(settings))
    assert error.step == Step.TLS
    assert "is not valid for the name 127.0.0.1" in error.summary
    assert "mail.example.invalid" in error.advice


def test_plain_http_port_is_explained(exchange, settings):
    settings = replace(settings, ews_url=exchange.http_url("/EWS/Exchange.asmx"))
    settings = replace(settings, ews_url=settings.ews_url.replace("http:", "https:"))

    error = failure_of(lambda: ews.count_inbox(settings))

    assert error.step == Step.TLS
    assert "does not speak TLS" in error.summary


def test_no_secret_in_errors_or_logs(exchange, settings, caplog):
    caplog.set_level(logging.DEBUG)
    basic = base64.b64encode(f"{USERNAME}:{SECRET}".encode()).decode()
    failures = []
    for candidate in (
        replace(settings, password=SECRET),
        replace(settings, password=SECRET, authentication=ews.Authentication.NTLM),
        replace(settings, from_address=OTHER),
    ):
        try:
            ews.send_message(candidate, message())
        except TransportError as error:
            failures.append(error)

    texts = [caplog.text] + [
        " ".join((error.summary, error.advice, error.reply)) for error in failures
    ]
    for text in texts:
        assert SECRET not in text
        assert basic not in text
        assert "Authorization': 'Basic" not in text
        assert "Authorization': 'NTLM" not in text
    assert "[removed]" in caplog.text  # exchangelib logged request headers


def test_server_echo_of_secret_stays_out_of_error(exchange, settings):
    basic = base64.b64encode(f"{USERNAME}:{SECRET}".encode()).decode()
    exchange.fail("GetFolder", Status(500, body=f"echo {SECRET} {basic}".encode()))

    error = failure_of(lambda: ews.count_inbox(settings))

    text = " ".join((error.summary, error.advice, error.reply))
    assert "HTTP 500" in text
    assert SECRET not in text
    assert basic not in text


def test_scrub_removes_authorization_and_password():
    text = "{'Authorization': 'Basic dXNlcjpwYXNz', 'X': 1} secret! c2VjcmV0IQ=="

    scrubbed = ews.scrub(text, "user", "secret!")

    assert "dXNlcjpwYXNz" not in scrubbed
    assert "secret!" not in scrubbed
    assert "c2VjcmV0IQ==" not in scrubbed
    assert "'Authorization': '[removed]'" in scrubbed


def test_close_connections_can_run_twice(settings):
    ews.count_inbox(settings)

    ews.close_connections()
    ews.close_connections()

    assert ews.count_inbox(settings).message_count == 7


def test_describe_version_names_release():
    assert ews.describe_version("15.2.1544.4") == (
        "Microsoft Exchange Server 2019 (build 15.2.1544.4)"
    )
    assert ews.describe_version("") == ""
    assert ews.describe_version("99.9") == "Exchange build 99.9"


def test_outbound_guard_applies_on_worker_thread(exchange, settings):
    def refuse(host, port, ip):
        raise destinations.refusal(host, str(ip), port, "not listed", "Ask.")

    with destinations.guarded(refuse):
        error = failure_of(lambda: ews.send_message(settings, message()))

    assert error.step == Step.CONNECT
    assert error.summary == (
        f"Connecting to 127.0.0.1 port {exchange.port} is not allowed: not listed."
    )
    assert exchange.received == []


def test_outbound_guard_applies_to_delivery(exchange, settings):
    def refuse(host, port, ip):
        raise destinations.refusal(host, str(ip), port, "not listed", "Ask.")

    async def deliver():
        destinations.set_guard(refuse)
        async with ews.EwsConnection(settings) as connection:
            await connection.send(message())

    with pytest.raises(TransportError) as caught:
        asyncio.run(deliver())

    assert "is not allowed: not listed" in caught.value.summary
    assert exchange.received == []


def test_metadata_address_is_always_refused(settings):
    settings = replace(settings, ews_url="https://169.254.169.254/EWS/Exchange.asmx")

    error = failure_of(lambda: ews.count_inbox(settings))

    assert error.step == Step.CONNECT
    assert "link-local, metadata or reserved range" in error.summary
