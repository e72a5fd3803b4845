"""The Gmail transport on its own: tokens, retries, error shapes, raw messages."""

import asyncio
import base64
import email
from datetime import UTC, datetime, timedelta
from email import policy
from email.utils import format_datetime

import pytest
import requests

from portal.services.messages import build_message
from portal.transports import gmail
from portal.transports.base import Step, TransportError


@pytest.fixture(scope="module")
def database_url(tmp_path_factory):
    """Tokens and HTTP do not depend on the database, so SQLite alone serves."""
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'google.sqlite3'}"


class StaticTokens:
    """Hands out ``tokens`` in turn; a forced refresh moves to the next one."""

    def __init__(self, *tokens):
        self.tokens = list(tokens)
        self.refreshes = 0

    def access_token(self, *, force_refresh=False):
        if force_refresh:
            self.refreshes += 1
        return self.tokens[min(self.refreshes, len(self.tokens) - 1)]

    def missing_scope_advice(self, scope):
        return f"grant {scope}"


@pytest.fixture
def mailbox_token(google):
    """A valid access token of helpdesk@example.com from the fake."""
    response = google._issue(
        "helpdesk@example.com", frozenset({gmail._SEND.scope, gmail._INBOX.scope})
    )
    return (
        response.get_json()["access_token"] if hasattr(response, "get_json") else None
    )


def client_for(google, tokens, **settings):
    values = {"base_url": google.url, "mailbox": "helpdesk@example.com", "timeout": 5.0}
    values.update(settings)
    waits = []
    client = gmail.GmailClient(
        gmail.GmailSettings(**values), tokens, sleep=waits.append
    )
    return client, waits


def message(**fields):
    values = {
        "from_address": "helpdesk@example.com",
        "from_name": "",
        "to": ["to@example.net"],
        "subject": "Hello",
        "body": "Hi",
    }
    values.update(fields)
    return build_message(**values)


def test_expired_token_is_refreshed_once(google, mailbox_token):
    tokens = StaticTokens("ya29.expired", mailbox_token)
    client, _ = client_for(google, tokens)

    client.send_message(message())

    assert tokens.refreshes == 1
    assert len(google.sent) == 1


def test_token_rejected_twice_is_authentication_failure(google):
    client, _ = client_for(google, StaticTokens("ya29.bad", "ya29.worse"))
    with pytest.raises(TransportError) as caught:
        client.count_inbox()
    assert caught.value.step == Step.AUTHENTICATION
    assert caught.value.reply.startswith("401 authError")


def test_waits_grow_and_stay_under_cap(google, mailbox_token):
    google.fail_next("gmail.users.messages.send", 503, "backendError", times=3)
    client, waits = client_for(
        google, StaticTokens(mailbox_token), max_retries=3, max_retry_wait=1.5
    )
    client.send_message(message())
    assert len(waits) == 3
    assert 0.5 <= waits[0] <= 1.0
    assert 0.75 <= waits[1] <= 1.5  # the cap halves the range: uniform(0.75, 1.5)
    assert waits[2] <= 1.5


def test_retry_after_header_is_honoured(google, mailbox_token):
    google.fail_next(
        "gmail.users.messages.send",
        429,
        "rateLimitExceeded",
        headers={"Retry-After": "2"},
    )
    client, waits = client_for(google, StaticTokens(mailbox_token), max_retry_wait=5)
    client.send_message(message())
    assert waits == [2.0]


def test_retry_after_from_date_and_message():
    response = requests.Response()
    response.status_code = 429
    later = datetime.now(UTC) + timedelta(seconds=30)
    response.headers["Retry-After"] = format_datetime(later, usegmt=True)
    error = gmail.ApiError(429, "rateLimitExceeded", "")
    assert 25 <= gmail.retry_after_seconds(response, error) <= 30

    response.headers.clear()
    stamp = (datetime.now(UTC) + timedelta(seconds=60)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )
    error = gmail.ApiError(
        429, "rateLimitExceeded", f"User-rate limit exceeded.  Retry after {stamp}"
    )
    assert 55 <= gmail.retry_after_seconds(response, error) <= 60


def test_error_body_that_is_not_json(google):
    response = requests.Response()
    response.status_code = 502
    response._content = b"<html><title>502 Bad Gateway</title></html>\n<p>proxy</p>"
    error = gmail.parse_api_error(response)
    assert error.status == 502
    assert error.reason == ""
    assert error.message == "<html><title>502 Bad Gateway</title></html>"


def test_unreachable_api_is_temporary(closed_port):
    client = gmail.GmailClient(
        gmail.GmailSettings(
            base_url=f"http://127.0.0.1:{closed_port}",
            mailbox="a@example.com",
            timeout=2,
        ),
        StaticTokens("ya29.x"),
    )
    with pytest.raises(TransportError) as caught:
        client.count_inbox()
    assert caught.value.step == Step.CONNECT
    assert caught.value.temporary


def test_raw_message_adds_bcc_for_unnamed_recipients():
    raw = gmail._raw_message(
        message(cc=["cc@example.net"]),
        ["to@example.net", "CC@example.net", "hidden@example.net"],
    )
    parsed = email.message_from_bytes(
        base64.urlsafe_b64decode(raw), policy=policy.default
    )
    assert parsed["Bcc"] == "hidden@example.net"
    assert "+" not in raw  # base64url, as Gmail's raw field requires
    assert "/" not in raw


def test_raw_message_leaves_named_recipients():
    original = message()
    raw = gmail._raw_message(original, ["to@example.net"])
    parsed = email.message_from_bytes(
        base64.urlsafe_b64decode(raw), policy=policy.default
    )
    assert parsed["Bcc"] is None
    assert original["Bcc"] is None


def test_connection_with_error_raises_on_enter():
    failure = TransportError(Step.AUTHENTICATION, "no token")

    async def enter():
        async with gmail.GmailConnection(None, failure):
            pass

    with pytest.raises(TransportError) as caught:
        asyncio.run(enter())
    assert caught.value is failure
