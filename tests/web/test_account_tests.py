"""Test send and test read through the account pages, against real servers."""

import email
import email.policy
import re

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import EmailAccount
from tests.conftest import HTMX
from tests.servers.smtp import (
    SMTP_PASSWORD,
    SMTP_USERNAME,
    Authenticator,
    RecordingHandler,
)
from tests.web.test_accounts import PERSONAL, account_form

NEW = f"{PERSONAL}/new/internet"


def smtp_form(server, **overrides):
    values = {
        "smtp_host": server.host,
        "smtp_port": str(server.port),
        "smtp_security": "none",
        "smtp_auth": "none",
        "smtp_username": "",
        "smtp_password": "",
        "test_to": "recipient@example.com",
        "from_name": "Hélpdesk Ünïcode",
        "action": "test-send",
    }
    values.update(overrides)
    return account_form(**values)


def run_test(client, form, url=NEW):
    response = client.post(url, data=form, headers=HTMX)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_send_succeeds_and_message_arrives(staff_client, plain_smtp):
    fragment = run_test(staff_client, smtp_form(plain_smtp))
    assert "Test send succeeded" in fragment
    assert "250 2.0.0 Ok: queued as TEST1" in fragment
    assert "<html" not in fragment

    (received,) = plain_smtp.messages
    assert received.rcpt_tos == ["recipient@example.com"]
    assert received.mail_from == "helpdesk@example.com"
    message = email.message_from_bytes(received.content, policy=email.policy.default)
    assert message["From"].addresses[0].display_name == "Hélpdesk Ünïcode"
    assert b"=?utf-8?" in received.content  # the display name is encoded, not raw
    assert message["Subject"] == "Test message from the email account portal"


def test_untrusted_certificate_then_trusted_fingerprint(
    staff_client, smtp_server, certificates
):
    authenticator = Authenticator()
    server = smtp_server(
        tls="starttls", certificate=certificates.server, authenticator=authenticator
    )
    form = smtp_form(
        server,
        smtp_security="starttls",
        smtp_auth="password",
        smtp_username=SMTP_USERNAME,
        smtp_password=SMTP_PASSWORD,
    )
    fragment = run_test(staff_client, form)
    assert "failed at the TLS step" in fragment
    assert certificates.server.sha256 in fragment
    assert authenticator.attempts == []  # no credentials went to an untrusted server

    form["trusted_fingerprint"] = certificates.server.sha256
    fragment = run_test(staff_client, form)
    assert "Test send succeeded" in fragment
    (received,) = server.messages
    assert received.encrypted
    assert received.login == SMTP_USERNAME


def test_changed_certificate_is_reported(staff_client, smtp_server, certificates):
    server = smtp_server(tls="implicit", certificate=certificates.self_signed)
    form = smtp_form(
        server, smtp_security="ssl", trusted_fingerprint=certificates.server.sha256
    )
    fragment = run_test(staff_client, form)
    assert "failed at the TLS step" in fragment
    assert "changed" in fragment
    assert certificates.self_signed.sha256 in fragment


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        ("535 5.7.8 Authentication credentials invalid", "535"),
        (
            "535 5.7.139 Authentication unsuccessful, basic authentication is disabled",
            "Microsoft 365",
        ),
        ("534 5.7.9 Application-specific password required", "app"),
    ],
)
def test_authentication_failures(
    staff_client, smtp_server, certificates, failure, expected
):
    authenticator = Authenticator(failures={SMTP_USERNAME: failure})
    server = smtp_server(
        tls="starttls", certificate=certificates.server, authenticator=authenticator
    )
    form = smtp_form(
        server,
        smtp_security="starttls",
        smtp_auth="password",
        smtp_username=SMTP_USERNAME,
        smtp_password=SMTP_PASSWORD,
        trusted_fingerprint=certificates.server.sha256,
    )
    fragment = run_test(staff_client, form)
    assert "failed at the authentication step" in fragment
    assert expected.lower() in fragment.lower()
    assert SMTP_PASSWORD not in fragment


def test_sender_refused(staff_client, smtp_server):
    server = smtp_server(
        handler=RecordingHandler(mail_reply="550 5.7.1 Sender not allowed")
    )
    fragment = run_test(staff_client, smtp_form(server))
    assert "failed at the sender step" in fragment
    assert "550 5.7.1 Sender not allowed" in fragment


def test_recipient_refused(staff_client, smtp_server):
    handler = RecordingHandler(
        rcpt_replies={"recipient@example.com": "550 5.1.1 No such user"}
    )
    fragment = run_test(staff_client, smtp_form(smtp_server(handler=handler)))
    assert "failed at the recipient step" in fragment
    assert "No such user" in fragment


def test_connection_refused(staff_client, closed_port):
    form = smtp_form(type("Server", (), {"host": "127.0.0.1", "port": closed_port}))
    fragment = run_test(staff_client, form)
    assert "failed at the connect step" in fragment
    assert "What to do:" in fragment


def test_host_not_found(staff_client):
    form = smtp_form(type("Server", (), {"host": "no-such-host.invalid", "port": 25}))
    fragment = run_test(staff_client, form)
    assert "failed at the DNS step" in fragment
    assert "no-such-host.invalid" in fragment


def test_server_that_never_greets(staff_client, silent_port):
    form = smtp_form(type("Server", (), {"host": "127.0.0.1", "port": silent_port}))
    fragment = run_test(staff_client, form)
    assert "failed at the timeout step" in fragment


def test_invalid_fields_swap_whole_form(staff_client):
    response = staff_client.post(
        NEW,
        data=account_form(smtp_port="99999", action="test-send", test_to="x"),
        headers=HTMX,
    )
    assert response.headers["HX-Retarget"] == "#account-form"
    assert response.headers["HX-Reswap"] == "outerHTML"
    fragment = response.get_data(as_text=True)
    assert 'id="smtp_port-error"' in fragment
    assert 'id="test_to-error"' in fragment
    assert "The test did not run" in fragment


def test_test_without_javascript_renders_page(staff_client, plain_smtp):
    form = smtp_form(plain_smtp)
    page = staff_client.post(NEW, data=form).get_data(as_text=True)
    assert "<html" in page
    assert "Test send succeeded" in page
    assert 'value="Hélpdesk Ünïcode"' in page  # what was typed stays


def test_saved_account_test_uses_stored_password_and_records_result(
    staff_client, smtp_server, certificates
):
    server = smtp_server(
        tls="starttls", certificate=certificates.server, authenticator=Authenticator()
    )
    form = smtp_form(
        server,
        smtp_security="starttls",
        smtp_auth="password",
        smtp_username=SMTP_USERNAME,
        smtp_password=SMTP_PASSWORD,
        trusted_fingerprint=certificates.server.sha256,
        action="save",
    )
    assert staff_client.post(NEW, data=form).status_code == 302
    (account,) = db.session.scalars(select(EmailAccount)).all()

    form.update(action="test-send", smtp_password="")
    fragment = run_test(staff_client, form, url=f"{PERSONAL}/{account.id}")
    assert "Test send succeeded" in fragment
    db.session.expire_all()
    assert account.last_send_test_ok is True
    assert account.last_send_test_at is not None
    grid = staff_client.get(PERSONAL).get_data(as_text=True)
    assert "Passed" in grid


def read_form(dovecot, certificates, **overrides):
    values = {
        "smtp_host": "127.0.0.1",
        "smtp_port": "25",
        "smtp_auth": "none",
        "read_protocol": "imap",
        "read_host": dovecot.host,
        "read_port": str(dovecot.imaps_port),
        "read_security": "ssl",
        "read_username": dovecot.username,
        "read_password": dovecot.password,
        "read_folder": "INBOX",
        "trusted_fingerprint": certificates.server.sha256,
        "action": "test-read",
    }
    values.update(overrides)
    return account_form(**values)


def test_imap_read_counts_and_lists_folders(staff_client, dovecot, certificates):
    fragment = run_test(staff_client, read_form(dovecot, certificates))
    assert "Test read succeeded" in fragment
    assert "3 messages" in fragment
    assert 'hx-swap-oob="true"' in fragment
    assert '<option value="Entwürfe">' in fragment
    assert '<option value="Отправленные">' in fragment
    assert dovecot.password not in fragment


def test_imap_read_opens_unicode_folder(staff_client, dovecot, certificates):
    fragment = run_test(
        staff_client, read_form(dovecot, certificates, read_folder="Отправленные")
    )
    assert "2 messages" in fragment


def test_imap_missing_folder_lists_real_ones(staff_client, dovecot, certificates):
    fragment = run_test(
        staff_client, read_form(dovecot, certificates, read_folder="Nope")
    )
    assert "failed at the folder step" in fragment
    assert "Entwürfe" in fragment


def test_imap_wrong_password(staff_client, dovecot, certificates):
    fragment = run_test(
        staff_client,
        read_form(dovecot, certificates, read_password="wrong-password-123"),
    )
    assert "failed at the authentication step" in fragment
    assert "wrong-password-123" not in fragment


def test_pop3_read_counts(staff_client, dovecot, certificates):
    form = read_form(
        dovecot, certificates, read_protocol="pop3", read_port=str(dovecot.pop3s_port)
    )
    fragment = run_test(staff_client, form)
    assert "Test read succeeded" in fragment
    assert re.search(r"\d+ messages?", fragment)


def test_read_without_protocol_is_explained(staff_client):
    response = staff_client.post(
        NEW, data=account_form(action="test-read"), headers=HTMX
    )
    assert "Choose IMAP or POP3" in response.get_data(as_text=True)
