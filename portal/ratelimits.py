"""Rate limits on sign-in and on test sends and reads.

Limits are strings in the ``limits`` notation ("5/minute;20/hour") from the
configuration, counted in Flask-Limiter's storage: in memory for one process,
or a shared store named by ``PORTAL_RATELIMIT_STORAGE_URI``.
"""

import logging
import math
import time

from flask import current_app
from limits import parse_many

from .extensions import limiter

log = logging.getLogger(__name__)


class RateLimited(Exception):
    """A limit is reached; ``retry_after`` is in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def _items(config_key: str):
    return parse_many(current_app.config[config_key])


def seconds_until_allowed(config_key: str, *identifiers: str) -> int:
    """Seconds until another hit is allowed under every limit; 0 when allowed now."""
    wait = 0
    for item in _items(config_key):
        if not limiter.limiter.test(item, *identifiers):
            reset_at, _ = limiter.limiter.get_window_stats(item, *identifiers)
            wait = max(wait, math.ceil(reset_at - time.time()))
    return max(wait, 0)


def hit(config_key: str, *identifiers: str) -> None:
    for item in _items(config_key):
        limiter.limiter.hit(item, *identifiers)


def consume(config_key: str, message: str, *identifiers: str) -> None:
    """Count one use, or raise ``RateLimited`` when a limit is already reached."""
    wait = seconds_until_allowed(config_key, *identifiers)
    if wait:
        log.warning("Rate limit %s reached for %s", config_key, identifiers)
        raise RateLimited(f"{message} Try again in {describe_wait(wait)}.", wait)
    hit(config_key, *identifiers)


def describe_wait(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def consume_test(staff_id: int, account_key: str) -> None:
    """Count one test send or read by a staff member on an account.

    ``account_key`` is the account id, or for an unsaved account a key built
    from its address, so one account cannot be hammered from several forms.
    Raises ``RateLimited``.
    """
    message = "Too many tests in a short time."
    consume("TEST_LIMIT", message, "test-user", str(staff_id))
    consume("TEST_LIMIT", message, "test-account", account_key)
