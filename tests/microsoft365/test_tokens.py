"""The token cache and the explanations of sign-in errors."""

import threading
import time
from email.utils import formatdate

import pytest

from portal.integrations.microsoft_tokens import TokenCache, explain, token_claims
from portal.transports.graph import _retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting_fetch(lifetime=3600.0):
    calls = []

    def fetch():
        calls.append(1)
        return f"token-{len(calls)}", lifetime

    return fetch, calls


def test_cache_keeps_token_until_shortly_before_expiry():
    clock = Clock()
    cache = TokenCache(clock=clock, margin=300)
    fetch, calls = counting_fetch()
    assert cache.get(("k",), fetch) == "token-1"
    clock.now += 3299
    assert cache.get(("k",), fetch) == "token-1"
    clock.now += 2  # within five minutes of expiry
    assert cache.get(("k",), fetch) == "token-2"
    assert len(calls) == 2


def test_short_lived_token_is_kept_for_half_its_life():
    clock = Clock()
    cache = TokenCache(clock=clock, margin=300)
    fetch, calls = counting_fetch(lifetime=60)
    cache.get(("k",), fetch)
    clock.now += 29
    cache.get(("k",), fetch)
    assert len(calls) == 1


def test_stale_token_is_replaced_once():
    cache = TokenCache()
    fetch, calls = counting_fetch()
    first = cache.get(("k",), fetch)
    second = cache.get(("k",), fetch, stale=first)
    # A caller that still holds the first token gets the second, not a third.
    assert cache.get(("k",), fetch, stale=first) == second
    assert len(calls) == 2


def test_concurrent_callers_share_one_fetch():
    cache = TokenCache()
    calls = []
    started = threading.Event()

    def slow_fetch():
        calls.append(1)
        started.set()
        time.sleep(0.1)
        return "token", 3600.0

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get(("k",), slow_fetch)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["token"] * 8
    assert len(calls) == 1


def test_claims_are_read_from_the_jwt_payload():
    token = "eyJhbGciOiJub25lIn0.eyJyb2xlcyI6WyJNYWlsLlNlbmQiXX0.sig"
    assert token_claims(token) == {"roles": ["Mail.Send"]}
    assert token_claims("not-a-jwt") == {}


@pytest.mark.parametrize(
    ("error", "code", "words", "grant_lost"),
    [
        ("invalid_client", 7000222, "client secret has expired", False),
        ("invalid_client", 7000215, "Value, not its Secret ID", False),
        (
            "unauthorized_client",
            700016,
            "No application with this application (client) ID",
            False,
        ),
        (
            "invalid_grant",
            65001,
            "Consent for the application's permissions has not been granted",
            True,
        ),
        ("invalid_grant", 50173, "was revoked", True),
        ("invalid_grant", 700082, "expired after a long time without use", True),
        ("invalid_request", 12345, "Microsoft sign-in failed (invalid_request)", False),
    ],
)
def test_sign_in_errors_are_explained(error, code, words, grant_lost):
    description = f"AADSTS{code}: Something internal. Trace ID: 0f1e2d3c-aaaa-bbbb-cccc-000000000000 Correlation ID: x"
    failure = explain(error, description, for_user=True)
    assert words in failure.summary + failure.advice
    assert (
        failure.reply
        == f"{error} AADSTS{code} (trace ID 0f1e2d3c-aaaa-bbbb-cccc-000000000000)"
    )
    assert "Something internal" not in failure.summary + failure.advice + failure.reply
    assert failure.grant_lost is grant_lost


def test_retry_after_as_seconds_or_date():
    assert _retry_after_seconds("7") == 7.0
    assert _retry_after_seconds("") is None
    assert _retry_after_seconds("soon") is None
    later = _retry_after_seconds(formatdate(time.time() + 30, usegmt=True))
    assert 25 <= later <= 31
