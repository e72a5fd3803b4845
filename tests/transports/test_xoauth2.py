"""XOAUTH2 in the transports: the pieces alone, then against Dovecot and aiosmtpd."""

import base64
import json
import secrets
import time
from email.message import EmailMessage

import pytest

from portal.transports import imap, smtp, xoauth2
from portal.transports.base import (
    ReadSettings,
    Security,
    SmtpSettings,
    Step,
    TransportError,
    hide_secret,
)
from tests.fakes.google import AccessToken
from tests.servers.dovecot import GMAIL_SCOPE, OAUTH2_USERNAME
from tests.servers.smtp import Authenticator

TOKEN = "ya29.a0-secret-token"


def test_initial_response_follows_the_published_format():
    encoded = xoauth2.initial_response("agent@example.com", TOKEN)
    assert base64.b64decode(encoded) == (
        b"user=agent@example.com\x01auth=Bearer ya29.a0-secret-token\x01\x01"
    )


def test_challenge_base64_or_json():
    body = {"status": "400", "schemes": "Bearer", "scope": "https://mail.google.com/"}
    encoded = base64.b64encode(json.dumps(body).encode()).decode()
    assert xoauth2.parse_challenge(encoded) == body
    assert xoauth2.parse_challenge(json.dumps(body).encode()) == body


def test_unreadable_challenge_gives_an_empty_mapping():
    assert xoauth2.parse_challenge("bm90IGpzb24=") == {}  # "not json"
    assert xoauth2.parse_challenge(b"") == {}
    assert xoauth2.parse_challenge("[1, 2]") == {}


def test_rejection_names_scope():
    error = xoauth2.token_rejected(
        "imap.gmail.com",
        "agent@example.com",
        {"status": "400", "scope": "https://mail.google.com/"},
        reply="NO [AUTHENTICATIONFAILED] Invalid credentials",
    )
    assert error.step is Step.AUTHENTICATION
    assert "https://mail.google.com/" in error.summary
    assert error.sign_in_again
    assert not error.temporary
    assert "Sign in again" in error.advice


def test_temporary_rejection_keeps_sign_in():
    error = xoauth2.token_rejected(
        "smtp.gmail.com", "agent@example.com", {}, reply="454 4.7.0", temporary=True
    )
    assert error.temporary
    assert not error.sign_in_again


def test_imap_exchange_sends_empty_line():
    exchange = xoauth2.ImapExchange("agent@example.com", TOKEN)
    assert exchange(b"") == xoauth2.xoauth2_string("agent@example.com", TOKEN)
    challenge = json.dumps({"status": "401", "scope": "s"}).encode()
    assert exchange(challenge) == b""
    assert exchange.challenge == {"status": "401", "scope": "s"}


def test_hide_secret_removes_token():
    settings = ReadSettings(
        host="imap.example.com",
        port=993,
        security=Security.SSL,
        username="agent@example.com",
        oauth_token=TOKEN,
    )
    encoded = xoauth2.initial_response("agent@example.com", TOKEN).decode()
    error = TransportError(
        Step.AUTHENTICATION,
        f"refused {TOKEN}",
        f"echo {encoded}",
        reply=f"NO {TOKEN}",
        sign_in_again=True,
    )
    hidden = hide_secret(error, settings)
    for text in (hidden.summary, hidden.advice, hidden.reply):
        assert TOKEN not in text
        assert encoded not in text
    assert hidden.sign_in_again


# Against real servers: Dovecot's oauth2 passdb and aiosmtpd.


def google_token(google_fake, scopes=(GMAIL_SCOPE,)) -> str:
    """Put an access token for the token login straight into the fake."""
    token = "ya29.transport-" + secrets.token_urlsafe(16)
    google_fake.access_tokens[token] = AccessToken(
        OAUTH2_USERNAME, frozenset(scopes), time.time() + 600
    )
    return token


def imap_settings(port: int, token: str, **options) -> ReadSettings:
    return ReadSettings(
        host="127.0.0.1",
        port=port,
        security=Security.SSL,
        username=OAUTH2_USERNAME,
        oauth_token=token,
        timeout=5.0,
        **options,
    )


def test_imap_signs_in_with_a_token(dovecot_oauth2, google_fake, certificates):
    settings = imap_settings(dovecot_oauth2.imaps_port, google_token(google_fake))
    result = imap.check_folder(settings, cafile=str(certificates.ca_path))
    assert result.message_count == 3


def test_imap_rejection_names_scope(dovecot_oauth2, google_fake, certificates):
    token = google_token(google_fake, scopes=("openid",))
    settings = imap_settings(dovecot_oauth2.imaps_port, token)
    with pytest.raises(TransportError) as caught:
        imap.check_folder(settings, cafile=str(certificates.ca_path))
    error = caught.value
    assert error.step is Step.AUTHENTICATION
    assert error.sign_in_again
    assert "asks for the scope mail" in error.summary  # Dovecot 2.3's wording
    assert "AUTHENTICATIONFAILED" in error.reply
    assert token not in f"{error.summary} {error.advice} {error.reply}"


def test_imap_server_without_xoauth2_says_so(dovecot, certificates):
    settings = imap_settings(dovecot.imaps_port, TOKEN)
    with pytest.raises(TransportError) as caught:
        imap.check_folder(settings, cafile=str(certificates.ca_path))
    assert "does not offer OAuth2 sign-in (XOAUTH2) for IMAP" in caught.value.summary


def test_smtp_server_without_xoauth2_says_so(smtp_server, certificates):
    server = smtp_server(
        tls="starttls", certificate=certificates.server, authenticator=Authenticator()
    )
    settings = SmtpSettings(
        host=server.host,
        port=server.port,
        security=Security.STARTTLS,
        username=OAUTH2_USERNAME,
        oauth_token=TOKEN,
        use_auth=True,
        timeout=5.0,
    )
    message = EmailMessage()
    message["From"] = OAUTH2_USERNAME
    message["To"] = "someone@example.com"
    message["Subject"] = "x"
    message.set_content("x")
    with pytest.raises(TransportError) as caught:
        smtp.send_message(settings, message, cafile=str(certificates.ca_path))
    assert "does not offer OAuth2 sign-in (XOAUTH2) for SMTP" in caught.value.summary
    assert server.messages == []


def test_hide_secret_split_echo():
    settings = ReadSettings(
        host="smtp.example.com",
        port=587,
        security=Security.STARTTLS,
        username="agent@example.com",
        oauth_token=TOKEN,
    )
    encoded = xoauth2.initial_response("agent@example.com", TOKEN).decode()
    middle = len(encoded) // 2
    error = TransportError(
        Step.AUTHENTICATION,
        "refused",
        reply=f"5.7.8 {encoded[:middle]}\n{encoded[middle:]} not accepted",
    )
    hidden = hide_secret(error, settings)
    assert encoded[:middle] not in hidden.reply
    assert "not shown" in hidden.reply
    assert hidden.summary == "refused"
