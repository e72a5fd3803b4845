"""The XOAUTH2 test servers and their token sources behave as Gmail and Dovecot do.

smtplib and imaplib drive the servers, so that these tests check the servers
and not the portal's client code. Access tokens come from the Google and
Microsoft fakes through their authorization code grants.
"""

import base64
import imaplib
import json
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.fakes import microsoft as tenant
from tests.fakes.google import GMAIL_FULL, GMAIL_SEND, FakeGoogle
from tests.fakes.microsoft import MicrosoftFake
from tests.fakes.microsoft_fixtures import *  # noqa: F403 (microsoft_fake)
from tests.servers.smtp import (
    OUTLOOK_SMTP_SCOPE,
    SMTP_USERNAME,
    Authenticator,
    google_token_check,
    microsoft_token_check,
    xoauth2_client_response,
)

TIMEOUT = 5.0  # seconds for every client operation
REDIRECT_URI = "http://localhost/callback"
GMAIL_USER = "xoauth2-sender@example.com"
OTHER_GMAIL_USER = "someone-else@example.com"
OUTLOOK_USER = "alice@contoso.com"
OUTLOOK_SCOPES = (
    "openid profile email offline_access "
    "https://outlook.office.com/SMTP.Send "
    "https://outlook.office.com/IMAP.AccessAsUser.All"
)
GMAIL_CHALLENGE = {"status": "400", "schemes": "Bearer", "scope": GMAIL_FULL}
# What Dovecot 2.3.19 sends for every rejected token. It names the scope "mail",
# not the scope in its oauth2 settings.
DOVECOT_CHALLENGE = {"status": "401", "schemes": "bearer", "scope": "mail"}
ASCII_PASSWORD = "ascii-Secret-9"
REJECTED_REPLY = b"5.7.8 Username and access token not accepted."


class XOAuth2Conversation:
    """An auth callback for smtplib and imaplib that records the challenges.

    The first call returns the client response. Every later call records the
    server's decoded challenge and returns an empty string, so the client
    sends an empty line, as XOAUTH2 requires after an error challenge.
    """

    def __init__(self, user: str, token: str) -> None:
        self.response = xoauth2_client_response(user, token)
        self.challenges: list[bytes] = []
        self.sent = False

    def __call__(self, challenge: bytes | None = None) -> str:
        if not self.sent:
            self.sent = True
            return self.response
        self.challenges.append(challenge or b"")
        return ""


def google_access_token(fake: FakeGoogle, address: str, scopes: list[str]) -> str:
    """Return an access token for ``address`` from the fake's consent flow."""
    client = fake.add_oauth_client(REDIRECT_URI)
    consent = requests.get(
        fake.auth_url,
        params={
            "client_id": client.client_id,
            "redirect_uri": REDIRECT_URI,
            "response_type": "code",
            "scope": " ".join(scopes),
            "login_hint": address,
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert consent.status_code == 302, consent.text
    code = parse_qs(urlsplit(consent.headers["Location"]).query)["code"][0]
    token = requests.post(
        fake.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
        },
        timeout=TIMEOUT,
    )
    assert token.status_code == 200, token.text
    return token.json()["access_token"]


def microsoft_tokens(fake: MicrosoftFake, upn: str, scope: str) -> dict:
    """Return the token response of the fake's authorization code grant."""
    authority = f"{fake.url}/{tenant.TENANT_ID}/oauth2/v2.0"
    sign_in = requests.get(
        f"{authority}/authorize",
        params={
            "client_id": tenant.CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "response_type": "code",
            "scope": scope,
            "login_hint": upn,
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert sign_in.status_code == 302, sign_in.text
    code = parse_qs(urlsplit(sign_in.headers["Location"]).query)["code"][0]
    token = requests.post(
        f"{authority}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": tenant.CLIENT_ID,
            "client_secret": tenant.CLIENT_SECRET,
            "scope": scope,
        },
        timeout=TIMEOUT,
    )
    assert token.status_code == 200, token.text
    return token.json()


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def sample_message(sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "recipient@portal.test"
    message["Subject"] = "XOAUTH2 test"
    message.set_content("Sent after signing in with an access token.\n")
    return message


@pytest.fixture(scope="module")
def gmail_users(google_fake: FakeGoogle) -> None:
    google_fake.add_user(GMAIL_USER, "Xavier Oauth")
    google_fake.add_user(OTHER_GMAIL_USER, "Sam Else")


@pytest.fixture
def gmail_smtp(smtp_server, google_fake, gmail_users):
    """An SMTP server that checks tokens as Gmail does, without TLS."""
    return smtp_server(
        token_check=google_token_check(google_fake), auth_require_tls=False
    )


def connect_smtp(server) -> smtplib.SMTP:
    client = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT)
    client.ehlo("client.portal.test")
    return client


# -- the Google fake's tokeninfo endpoint ------------------------------------------


def test_tokeninfo_describes_valid_token(google_fake, gmail_users):
    token = google_access_token(google_fake, GMAIL_USER, [GMAIL_FULL, GMAIL_SEND])

    response = requests.get(
        google_fake.tokeninfo_url, params={"access_token": token}, timeout=TIMEOUT
    )

    assert response.status_code == 200
    info = response.json()
    record = google_fake.check_access_token(token)
    assert record is not None
    assert info["aud"] == record.client_id
    assert info["azp"] == record.client_id
    assert info["sub"] == google_fake.users[GMAIL_USER].id
    assert info["scope"].split() == sorted([GMAIL_FULL, GMAIL_SEND])
    assert info["email"] == GMAIL_USER
    assert info["email_verified"] == "true"
    assert info["exp"] == str(int(record.expires))
    assert 3500 < int(info["expires_in"]) <= 3599
    # The consent request above did not ask for offline access.
    assert info["access_type"] == "online"


@pytest.mark.parametrize("token", ["", "ya29.unknown"])
def test_tokeninfo_rejects_unknown_token(google_fake, token):
    response = requests.get(
        google_fake.tokeninfo_url, params={"access_token": token}, timeout=TIMEOUT
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_token",
        "error_description": "Invalid Value",
    }


def test_tokeninfo_rejects_expired_token(google_fake, gmail_users):
    token = google_access_token(google_fake, GMAIL_USER, [GMAIL_FULL])
    google_fake.expire_access_tokens()

    response = requests.get(
        google_fake.tokeninfo_url, params={"access_token": token}, timeout=TIMEOUT
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_token"
    assert google_fake.check_access_token(token) is None


# -- the Microsoft fake's Exchange Online tokens -------------------------------------


def test_outlook_token_has_outlook_audience(microsoft_fake):
    tokens = microsoft_tokens(microsoft_fake, OUTLOOK_USER, OUTLOOK_SCOPES)

    claims = microsoft_fake.check_access_token(tokens["access_token"])
    assert claims is not None
    assert claims["aud"] == "https://outlook.office.com"
    assert claims["scp"] == "SMTP.Send IMAP.AccessAsUser.All"
    assert claims["upn"] == OUTLOOK_USER
    assert tokens["scope"] == "SMTP.Send IMAP.AccessAsUser.All"
    assert "refresh_token" in tokens


def test_outlook_token_rejected_by_graph(microsoft_fake):
    tokens = microsoft_tokens(microsoft_fake, OUTLOOK_USER, OUTLOOK_SCOPES)

    response = requests.get(
        f"{microsoft_fake.url}/v1.0/me",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=TIMEOUT,
    )

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_openid_scope_adds_id_token(microsoft_fake):
    tokens = microsoft_tokens(microsoft_fake, OUTLOOK_USER, OUTLOOK_SCOPES)

    claims = jwt_claims(tokens["id_token"])
    user = microsoft_fake.user(OUTLOOK_USER)
    assert claims["aud"] == tenant.CLIENT_ID
    assert claims["iss"] == f"https://login.microsoftonline.com/{tenant.TENANT_ID}/v2.0"
    assert claims["tid"] == tenant.TENANT_ID
    assert claims["oid"] == user.id
    assert claims["preferred_username"] == OUTLOOK_USER
    assert claims["name"] == user.display_name
    assert claims["email"] == user.mail
    assert claims["nbf"] <= claims["iat"] < claims["exp"]
    # An ID token is not an access token.
    assert microsoft_fake.check_access_token(tokens["id_token"]) is None


def test_id_token_without_profile_or_email(microsoft_fake):
    tokens = microsoft_tokens(
        microsoft_fake, OUTLOOK_USER, "openid https://outlook.office.com/SMTP.Send"
    )

    claims = jwt_claims(tokens["id_token"])
    assert claims["preferred_username"] == OUTLOOK_USER
    assert "name" not in claims
    assert "email" not in claims


def test_no_id_token_without_openid(microsoft_fake):
    tokens = microsoft_tokens(
        microsoft_fake, OUTLOOK_USER, "https://outlook.office.com/SMTP.Send"
    )

    assert "id_token" not in tokens


def test_refresh_grant_returns_id_token(microsoft_fake):
    first = microsoft_tokens(microsoft_fake, OUTLOOK_USER, OUTLOOK_SCOPES)
    microsoft_fake.grant_consent()

    response = requests.post(
        f"{microsoft_fake.url}/{tenant.TENANT_ID}/oauth2/v2.0/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": tenant.CLIENT_ID,
            "client_secret": tenant.CLIENT_SECRET,
            "scope": OUTLOOK_SCOPES,
        },
        timeout=TIMEOUT,
    )

    assert response.status_code == 200, response.text
    assert jwt_claims(response.json()["id_token"])["aud"] == tenant.CLIENT_ID


def test_microsoft_check_rejects_invalid_tokens(microsoft_fake):
    tokens = microsoft_tokens(microsoft_fake, OUTLOOK_USER, OUTLOOK_SCOPES)
    forged = tokens["access_token"][:-4] + "AAAA"

    assert microsoft_fake.check_access_token(forged) is None
    assert microsoft_fake.check_access_token("not-a-jwt") is None
    microsoft_fake.expire_tokens()
    assert microsoft_fake.check_access_token(tokens["access_token"]) is None


# -- SMTP -------------------------------------------------------------------------------


def test_smtp_offers_xoauth2_alone(gmail_smtp):
    with connect_smtp(gmail_smtp) as client:
        assert client.esmtp_features["auth"].split() == ["XOAUTH2"]


def test_smtp_offers_plain_with_authenticator(smtp_server, google_fake, gmail_users):
    server = smtp_server(
        token_check=google_token_check(google_fake),
        # smtplib sends only ASCII passwords.
        authenticator=Authenticator(users={SMTP_USERNAME: ASCII_PASSWORD}),
        auth_require_tls=False,
    )

    with connect_smtp(server) as client:
        assert sorted(client.esmtp_features["auth"].split()) == [
            "LOGIN",
            "PLAIN",
            "XOAUTH2",
        ]
        code, _ = client.login(SMTP_USERNAME, ASCII_PASSWORD)
        assert code == 235


def test_smtp_accepts_gmail_token(gmail_smtp, google_fake):
    token = google_access_token(google_fake, GMAIL_USER, [GMAIL_FULL])
    conversation = XOAuth2Conversation(GMAIL_USER, token)

    with connect_smtp(gmail_smtp) as client:
        code, reply = client.auth("XOAUTH2", conversation)
        client.send_message(sample_message(GMAIL_USER))

    assert (code, reply) == (235, b"2.7.0 Accepted")
    assert conversation.challenges == []
    assert len(gmail_smtp.messages) == 1
    assert gmail_smtp.messages[0].login == GMAIL_USER


def test_smtp_offers_xoauth2_after_starttls(smtp_server, certificates, google_fake):
    server = smtp_server(
        tls="starttls",
        certificate=certificates.server,
        token_check=google_token_check(google_fake),
    )
    token = google_access_token(google_fake, GMAIL_USER, [GMAIL_FULL])
    context = ssl.create_default_context(cafile=str(certificates.ca_path))

    with connect_smtp(server) as client:
        assert "auth" not in client.esmtp_features
        client.starttls(context=context)
        client.ehlo("client.portal.test")
        code, _ = client.auth("XOAUTH2", XOAuth2Conversation(GMAIL_USER, token))

    assert code == 235


def test_smtp_accepts_token_after_empty_challenge(gmail_smtp, google_fake):
    token = google_access_token(google_fake, GMAIL_USER, [GMAIL_FULL])
    conversation = XOAuth2Conversation(GMAIL_USER, token)

    with connect_smtp(gmail_smtp) as client:
        # Without an initial response the server requests it with an empty 334.
        code, _ = client.auth("XOAUTH2", conversation, initial_response_ok=False)

    assert code == 235


@pytest.mark.parametrize(
    "case", ["missing scope", "unknown token", "expired token", "other user"]
)
def test_smtp_rejects_token_with_challenge(gmail_smtp, google_fake, case):
    if case == "missing scope":
        token = google_access_token(google_fake, GMAIL_USER, [GMAIL_SEND])
    elif case == "unknown token":
        token = "ya29.unknown"
    elif case == "expired token":
        token = google_access_token(google_fake, GMAIL_USER, [GMAIL_FULL])
        google_fake.expire_access_tokens()
    else:
        token = google_access_token(google_fake, OTHER_GMAIL_USER, [GMAIL_FULL])
    conversation = XOAuth2Conversation(GMAIL_USER, token)

    with connect_smtp(gmail_smtp) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.auth("XOAUTH2", conversation)

    assert len(conversation.challenges) == 1
    assert json.loads(conversation.challenges[0]) == GMAIL_CHALLENGE
    assert caught.value.smtp_code == 535
    assert caught.value.smtp_error == REJECTED_REPLY
    assert gmail_smtp.messages == []


def test_smtp_final_reply_waits_for_empty_line(gmail_smtp):
    response = base64.b64encode(
        xoauth2_client_response(GMAIL_USER, "ya29.unknown").encode()
    )

    with socket.create_connection(
        (gmail_smtp.host, gmail_smtp.port), timeout=TIMEOUT
    ) as connection:
        replies = connection.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        connection.sendall(b"EHLO client.portal.test\r\n")
        while not replies.readline().startswith(b"250 "):
            pass
        connection.sendall(b"AUTH XOAUTH2 " + response + b"\r\n")
        challenge = replies.readline()
        assert challenge.startswith(b"334 ")
        assert json.loads(base64.b64decode(challenge[4:])) == GMAIL_CHALLENGE

        # Nothing follows the challenge until the client responds.
        connection.settimeout(0.3)
        with pytest.raises(TimeoutError):
            connection.recv(1)
        connection.settimeout(TIMEOUT)
        connection.sendall(b"\r\n")
        assert replies.readline().startswith(b"535 5.7.8 ")


def test_smtp_rejects_malformed_response(gmail_smtp):
    with connect_smtp(gmail_smtp) as client:
        malformed = base64.b64encode(b"user=someone\x01auth=Basic abc\x01\x01")
        code, reply = client.docmd("AUTH", "XOAUTH2 " + malformed.decode())

    assert code == 501
    assert b"XOAUTH2" in reply


def test_smtp_keeps_data_line_limit(gmail_smtp, google_fake):
    # The server reads long AUTH lines, but message lines keep RFC 5321's
    # limit of 1000 octets.
    token = google_access_token(google_fake, GMAIL_USER, [GMAIL_FULL])
    content = (
        f"From: {GMAIL_USER}\r\nTo: recipient@portal.test\r\n\r\n" + "x" * 2000 + "\r\n"
    ).encode()

    with connect_smtp(gmail_smtp) as client:
        client.auth("XOAUTH2", XOAuth2Conversation(GMAIL_USER, token))
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail(GMAIL_USER, ["recipient@portal.test"], content)

    assert caught.value.smtp_code == 500
    assert gmail_smtp.messages == []


def test_smtp_accepts_microsoft_token(smtp_server, microsoft_fake):
    server = smtp_server(
        token_check=microsoft_token_check(microsoft_fake), auth_require_tls=False
    )
    tokens = microsoft_tokens(microsoft_fake, OUTLOOK_USER, OUTLOOK_SCOPES)
    conversation = XOAuth2Conversation(OUTLOOK_USER, tokens["access_token"])
    # The token makes the AUTH line longer than the 512 octets that RFC 5321
    # allows other commands.
    assert len(conversation.response) > 512

    with connect_smtp(server) as client:
        code, _ = client.auth("XOAUTH2", conversation)
        client.send_message(sample_message(OUTLOOK_USER))

    assert code == 235
    assert server.messages[0].login == OUTLOOK_USER


@pytest.mark.parametrize("case", ["graph token", "other user"])
def test_smtp_rejects_wrong_microsoft_token(smtp_server, microsoft_fake, case):
    server = smtp_server(
        token_check=microsoft_token_check(microsoft_fake), auth_require_tls=False
    )
    if case == "graph token":
        scope = "offline_access https://graph.microsoft.com/Mail.Send"
        user = OUTLOOK_USER
    else:
        scope = OUTLOOK_SCOPES
        user = "bob@contoso.com"
    tokens = microsoft_tokens(microsoft_fake, OUTLOOK_USER, scope)
    conversation = XOAuth2Conversation(user, tokens["access_token"])

    with connect_smtp(server) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.auth("XOAUTH2", conversation)

    assert json.loads(conversation.challenges[0])["scope"] == OUTLOOK_SMTP_SCOPE
    assert caught.value.smtp_code == 535


# -- IMAP with Dovecot ----------------------------------------------------------------


def connect_imap(dovecot) -> imaplib.IMAP4:
    return imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=TIMEOUT)


def test_dovecot_offers_token_mechanisms(dovecot_oauth2):
    with connect_imap(dovecot_oauth2) as client:
        capabilities = client.capabilities

    assert "AUTH=XOAUTH2" in capabilities
    assert "AUTH=OAUTHBEARER" in capabilities
    assert "AUTH=PLAIN" in capabilities


def test_dovecot_accepts_gmail_token(dovecot_oauth2, google_fake):
    user = dovecot_oauth2.oauth2_username
    token = google_access_token(google_fake, user, [GMAIL_FULL])
    conversation = XOAuth2Conversation(user, token)

    with connect_imap(dovecot_oauth2) as client:
        status, _ = client.authenticate("XOAUTH2", conversation)
        selected, count = client.select("INBOX")

    assert status == "OK"
    assert conversation.challenges == []
    assert selected == "OK"
    assert int(count[0]) == dovecot_oauth2.folders["INBOX"]


def test_dovecot_accepts_oauthbearer(dovecot_oauth2, google_fake):
    user = dovecot_oauth2.oauth2_username
    token = google_access_token(google_fake, user, [GMAIL_FULL])
    # RFC 7628: a GS2 header naming the user, then key=value pairs.
    response = f"n,a={user},\x01auth=Bearer {token}\x01\x01"

    with connect_imap(dovecot_oauth2) as client:
        status, _ = client.authenticate("OAUTHBEARER", lambda challenge: response)

    assert status == "OK"


@pytest.mark.parametrize(
    "case", ["missing scope", "unknown token", "expired token", "other user"]
)
def test_dovecot_rejects_token_with_challenge(
    dovecot_oauth2, google_fake, gmail_users, case
):
    user = dovecot_oauth2.oauth2_username
    if case == "missing scope":
        token = google_access_token(google_fake, user, [GMAIL_SEND])
    elif case == "unknown token":
        token = "ya29.unknown"
    elif case == "expired token":
        token = google_access_token(google_fake, user, [GMAIL_FULL])
        google_fake.expire_access_tokens()
    else:
        token = google_access_token(google_fake, OTHER_GMAIL_USER, [GMAIL_FULL])
    conversation = XOAuth2Conversation(user, token)

    with connect_imap(dovecot_oauth2) as client:
        with pytest.raises(imaplib.IMAP4.error) as caught:
            client.authenticate("XOAUTH2", conversation)

    assert len(conversation.challenges) == 1
    assert json.loads(conversation.challenges[0]) == DOVECOT_CHALLENGE
    assert "[AUTHENTICATIONFAILED]" in str(caught.value)


def test_dovecot_rejects_missing_scope_by_scope_check(dovecot_oauth2, google_fake):
    user = dovecot_oauth2.oauth2_username
    token = google_access_token(google_fake, user, [GMAIL_SEND])
    log_start = dovecot_oauth2.log_path.stat().st_size

    with connect_imap(dovecot_oauth2) as client:
        with pytest.raises(imaplib.IMAP4.error):
            client.authenticate("XOAUTH2", XOAuth2Conversation(user, token))

    reason = f"Token is not valid for scope '{GMAIL_FULL}'"
    assert wait_for_log(dovecot_oauth2, reason, log_start)


def test_dovecot_password_login_still_works(dovecot_oauth2):
    with connect_imap(dovecot_oauth2) as client:
        status, _ = client.login(
            dovecot_oauth2.ascii_username, dovecot_oauth2.ascii_password
        )

    assert status == "OK"


def wait_for_log(dovecot, text: str, start: int) -> bool:
    """Return whether Dovecot logs ``text`` after byte ``start`` within two seconds."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        with open(dovecot.log_path, "rb") as log:
            log.seek(start)
            if text.encode() in log.read():
                return True
        time.sleep(0.05)
    return False
