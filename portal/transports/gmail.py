"""Gmail API transport: send a message, list send-as aliases, count the inbox.

It calls the Gmail REST API over HTTPS with ``requests``. The access token
comes from a ``TokenSource`` (see portal.integrations.google), so this module
depends neither on Flask and the database nor on how a token is obtained.

Every failure raises TransportError with the step that failed, Google's own
words as the reply, and what to do. Rate limits (429, or 403 with
``rateLimitExceeded`` or ``userRateLimitExceeded``) and server errors are
retried a bounded number of times with exponential backoff; when they
persist, the error is temporary so the outbox tries again later.
"""

import asyncio
import base64
import copy
import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from types import TracebackType
from typing import Protocol
from urllib.parse import quote

import requests

from .base import ReadResult, SendResult, Step, TransportError

log = logging.getLogger(__name__)

# Paths relative to the API's root URL, as the Gmail discovery document
# (gmail.v1) names them; a test compares them with that document.
SEND_PATH = "gmail/v1/users/{userId}/messages/send"
SEND_AS_LIST_PATH = "gmail/v1/users/{userId}/settings/sendAs"
LABEL_GET_PATH = "gmail/v1/users/{userId}/labels/{id}"

RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
FIRST_RETRY_SECONDS = 1.0

# Gmail writes the time a rate limit ends into the message of a 429, as in
# "User-rate limit exceeded.  Retry after 2026-01-01T10:00:00.000Z".
_RETRY_AFTER_IN_MESSAGE = re.compile(r"Retry after (\S+?Z)")


class TokenSource(Protocol):
    """A provider of OAuth access tokens for a GmailClient."""

    def access_token(self, *, force_refresh: bool = False) -> str:
        """Return a valid access token; raise TransportError when none is issued."""

    def missing_scope_advice(self, scope: str) -> str:
        """Return what to do when a call needs ``scope`` and the token lacks it."""


@dataclass(frozen=True)
class GmailSettings:
    base_url: str  # the API root, such as https://gmail.googleapis.com
    mailbox: str  # the mailbox's address, used in messages to the user
    user_id: str = "me"  # the path's userId: "me" is the token's own user
    timeout: float = 30.0
    max_retries: int = 3  # retries after a rate limit or a server error
    max_retry_wait: float = 30.0  # maximum wait before one retry, in seconds


@dataclass(frozen=True)
class SendAsAlias:
    address: str
    display_name: str = ""
    is_primary: bool = False
    # Gmail lists custom addresses before their owner confirms them; only
    # "accepted" ones (and the primary address) can be used as From.
    verification_status: str = ""

    @property
    def usable(self) -> bool:
        return self.is_primary or self.verification_status == "accepted"


@dataclass(frozen=True)
class ApiError:
    """The parts of a Google JSON error body that decide what to do."""

    status: int
    reason: str  # errors[0].reason, such as "userRateLimitExceeded"
    message: str
    details_reason: str = (
        ""  # error.details[].reason, such as ACCESS_TOKEN_SCOPE_INSUFFICIENT
    )

    @property
    def reply(self) -> str:
        parts = [str(self.status)]
        if self.reason:
            parts.append(self.reason)
        text = " ".join(parts)
        return f"{text}: {self.message}" if self.message else text


def parse_api_error(response: requests.Response) -> ApiError:
    """Read Google's error body; a body that is not JSON keeps its first line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        first_line = (response.text or response.reason or "").strip().splitlines()
        return ApiError(
            response.status_code, "", first_line[0][:300] if first_line else ""
        )

    errors = error.get("errors") or [{}]
    reason = str(errors[0].get("reason", "")) if isinstance(errors[0], dict) else ""
    details_reason = ""
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("reason"):
            details_reason = str(detail["reason"])
            break
    return ApiError(
        status=response.status_code,
        reason=reason,
        message=str(error.get("message", ""))[:500],
        details_reason=details_reason,
    )


def retry_after_seconds(response: requests.Response, error: ApiError) -> float | None:
    """Return how long Google asks to wait, from Retry-After or the message."""
    header = response.headers.get("Retry-After", "").strip()
    if header.isdigit():
        return float(header)
    if header:
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, (when - datetime.now(UTC)).total_seconds())

    match = _RETRY_AFTER_IN_MESSAGE.search(error.message)
    if match:
        try:
            when = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
        except ValueError:
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return None


@dataclass(frozen=True)
class _Call:
    """One API call: what it does, in words for messages, and its failure step."""

    activity: str  # completes "... while <activity>"
    step: Step
    scope: str  # the narrowest scope the call accepts, for advice


_SEND = _Call(
    "sending the message", Step.MESSAGE, "https://www.googleapis.com/auth/gmail.send"
)
_SEND_AS = _Call(
    "listing the send-as addresses",
    Step.SENDER,
    "https://www.googleapis.com/auth/gmail.settings.basic",
)
_INBOX = _Call(
    "opening the inbox", Step.FOLDER, "https://www.googleapis.com/auth/gmail.readonly"
)


class GmailClient:
    """Calls the Gmail API for one mailbox with tokens from ``tokens``.

    ``sleep`` waits between retries; tests replace it.
    """

    def __init__(
        self,
        settings: GmailSettings,
        tokens: TokenSource,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.session = session or requests.Session()
        self.sleep = sleep

    def close(self) -> None:
        self.session.close()

    # -- the calls ---------------------------------------------------------

    def send_message(
        self, message: EmailMessage, recipients: Sequence[str] = ()
    ) -> SendResult:
        """Send ``message`` as the mailbox with users.messages.send.

        Gmail takes the recipients from the To, Cc and Bcc headers, so
        ``recipients`` that the headers do not name are added as Bcc; Gmail
        removes Bcc before delivery.
        """
        return self.send_raw(_raw_message(message, recipients))

    def send_raw(self, raw: str) -> SendResult:
        """Send a message already encoded as base64url text."""
        body = self._request("POST", SEND_PATH, _SEND, json={"raw": raw})
        message_id = body.get("id", "")
        return SendResult(
            reply=f"Gmail accepted the message as {self.settings.mailbox}"
            + (f" (message id {message_id})." if message_id else ".")
        )

    def list_send_as(self) -> list[SendAsAlias]:
        """Return the mailbox's send-as addresses with settings.sendAs.list."""
        body = self._request("GET", SEND_AS_LIST_PATH, _SEND_AS)
        aliases = []
        for item in body.get("sendAs") or []:
            if not isinstance(item, dict) or not item.get("sendAsEmail"):
                continue
            aliases.append(
                SendAsAlias(
                    address=str(item["sendAsEmail"]),
                    display_name=str(item.get("displayName", "")),
                    is_primary=bool(item.get("isPrimary")),
                    verification_status=str(item.get("verificationStatus", "")),
                )
            )
        return aliases

    def count_inbox(self) -> ReadResult:
        """Count the messages in the inbox with labels.get on the INBOX label."""
        body = self._request("GET", LABEL_GET_PATH, _INBOX, label_id="INBOX")
        return ReadResult(
            message_count=int(body.get("messagesTotal", 0)), folder="INBOX"
        )

    # -- HTTP, retries and errors -------------------------------------------

    def _url(self, path: str, label_id: str = "") -> str:
        filled = path.replace("{userId}", quote(self.settings.user_id, safe="@"))
        filled = filled.replace("{id}", quote(label_id, safe=""))
        return f"{self.settings.base_url.rstrip('/')}/{filled}"

    def _request(
        self, method: str, path: str, call: _Call, *, json=None, label_id: str = ""
    ) -> dict:
        url = self._url(path, label_id)
        refreshed = False
        retries = 0
        while True:
            token = self.tokens.access_token(force_refresh=refreshed)
            response = self._send(method, url, call, token, json)
            if response.ok:
                try:
                    body = response.json()
                except ValueError:
                    body = {}
                return body if isinstance(body, dict) else {}

            error = parse_api_error(response)
            if response.status_code == 401 and not refreshed:
                # An access token can expire or be revoked between issue and use.
                log.info(
                    "Gmail rejected the token for %s while %s; fetching a new one",
                    self.settings.mailbox,
                    call.activity,
                )
                refreshed = True
                continue

            if _is_retried(error) and not _is_daily_limit(error):
                wait = self._retry_wait(response, error, retries)
                if wait is not None:
                    retries += 1
                    log.info(
                        "Gmail returned %s for %s while %s; retry %d of %d in %.2f s",
                        error.reply,
                        self.settings.mailbox,
                        call.activity,
                        retries,
                        self.settings.max_retries,
                        wait,
                    )
                    self.sleep(wait)
                    continue
            raise self._failure(
                call, error, retry_after=retry_after_seconds(response, error)
            )

    def _send(self, method: str, url: str, call: _Call, token: str, json):
        try:
            return self.session.request(
                method,
                url,
                json=json,
                headers={"Authorization": f"Bearer {token}"},
                timeout=self.settings.timeout,
            )
        except requests.Timeout:
            raise TransportError(
                Step.TIMEOUT,
                f"The Gmail API did not respond within {self.settings.timeout:g} s "
                f"while {call.activity}.",
                "Try again later. If it keeps happening, check that this portal "
                "can reach the Gmail API through its network and proxy.",
                temporary=True,
            ) from None
        except requests.ConnectionError as error:
            raise TransportError(
                Step.CONNECT,
                f"The connection to the Gmail API failed while {call.activity}.",
                "Check that this portal can reach the Gmail API through its "
                "network and proxy, then try again.",
                reply=_first_line(error),
                temporary=True,
            ) from None

    def _retry_wait(
        self, response: requests.Response, error: ApiError, retries: int
    ) -> float | None:
        """Return the seconds to wait before the next try, or None to give up."""
        if retries >= self.settings.max_retries:
            return None
        asked = retry_after_seconds(response, error)
        if asked is not None:
            # A wait longer than the cap is left to the outbox's later retry.
            return asked if asked <= self.settings.max_retry_wait else None
        ceiling = min(self.settings.max_retry_wait, FIRST_RETRY_SECONDS * 2**retries)
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not security)

    def _failure(
        self, call: _Call, error: ApiError, retry_after: float | None = None
    ) -> TransportError:
        mailbox = self.settings.mailbox
        reply = error.reply

        if _is_daily_limit(error):
            return TransportError(
                call.step,
                f"{mailbox} has reached Gmail's daily sending limit.",
                "Gmail accepts more messages after the daily limit resets, which "
                "can take hours. Queued messages are retried automatically; send "
                "urgent mail from another account.",
                reply=reply,
                temporary=True,
            )

        if _is_retried(error):
            wait = f" Google asked to wait {retry_after:.0f} s." if retry_after else ""
            if error.status >= 500:
                summary = (
                    f"The Gmail API failed with a server error while {call.activity}."
                )
                advice = "This is a fault on Google's side. Try again later."
            else:
                summary = (
                    f"Gmail's rate limit for {mailbox} was exceeded while "
                    f"{call.activity}, and retries did not get through.{wait}"
                )
                advice = (
                    "Wait and try again; queued messages are retried "
                    "automatically. If it keeps happening, the mailbox sends too "
                    "much at once: spread the sending over more accounts or ask "
                    "Google for a higher quota."
                )
            return TransportError(
                call.step, summary, advice, reply=reply, temporary=True
            )

        if error.status == 401:
            return TransportError(
                Step.AUTHENTICATION,
                f"Google rejected the access token for {mailbox} twice while "
                f"{call.activity}.",
                "Check the connection on the Google Workspace integration page, "
                "or reconnect this mailbox.",
                reply=reply,
            )

        if error.status == 403 and (
            error.reason
            in ("insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT")
            or error.details_reason == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
        ):
            return TransportError(
                Step.AUTHENTICATION,
                f"The access token for {mailbox} lacks the scope {call.scope}, "
                f"which Gmail requires for {call.activity}.",
                self.tokens.missing_scope_advice(call.scope),
                reply=reply,
            )

        if error.status == 403 and error.reason == "domainPolicy":
            return TransportError(
                Step.AUTHENTICATION,
                f"The administrators of {_domain(mailbox)} have blocked apps from "
                "using Gmail.",
                "Ask a Google Workspace administrator to allow this portal's "
                "client under Security › Access and data control › API controls.",
                reply=reply,
            )

        if error.status == 404 or (
            error.status == 400 and error.reason == "failedPrecondition"
        ):
            return TransportError(
                Step.SENDER,
                f"Gmail has no mailbox for {mailbox}.",
                "Check the address. A Google Workspace user needs a licence that "
                "includes Gmail, and a suspended or deleted user has no mailbox.",
                reply=reply,
            )

        if (
            call is _SEND
            and error.status == 400
            and "recipient" in error.message.lower()
        ):
            return TransportError(
                Step.RECIPIENT,
                "Gmail rejected the recipients of the message.",
                "Check the recipient addresses.",
                reply=reply,
            )

        return TransportError(
            call.step,
            f"The Gmail API rejected the request while {call.activity}.",
            "Read Google's reply below. If it names a setting, fix it on the "
            "account or on the Google Workspace integration page.",
            reply=reply,
        )


class GmailConnection:
    """An async context manager around a GmailClient, for the delivery worker.

    Each call runs in a thread, because ``requests`` blocks. An opener that
    could not get a token passes ``error``, which entering raises.
    """

    def __init__(
        self, client: GmailClient | None, error: TransportError | None = None
    ) -> None:
        self.client = client
        self.error = error

    async def __aenter__(self) -> "GmailConnection":
        if self.error is not None:
            raise self.error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.client is not None:
            self.client.close()

    async def send_bytes(
        self, data: bytes, *, sender: str, recipients: Sequence[str]
    ) -> SendResult | None:
        """Send the stored message bytes unchanged when its headers name every recipient.

        Returns None when a recipient is missing from To and Cc (a Bcc), so
        the caller passes the parsed message to ``send``, which adds Bcc.
        """
        assert self.client is not None  # noqa: S101 (entering raised otherwise)
        headers = BytesHeaderParser(policy=policy.default).parsebytes(data)
        if _unnamed_recipients(headers, recipients):
            return None
        raw = base64.urlsafe_b64encode(data).decode("ascii")
        return await asyncio.to_thread(self.client.send_raw, raw)

    async def send(
        self, message: EmailMessage, *, sender: str, recipients: Sequence[str]
    ) -> SendResult:
        """Send ``message``; Gmail sends as the mailbox, whatever ``sender`` is."""
        assert self.client is not None  # noqa: S101 (entering raised otherwise)
        return await asyncio.to_thread(self.client.send_message, message, recipients)


def _named_addresses(message) -> set[str]:
    named = set()
    for header in ("To", "Cc", "Bcc"):
        for _, address in email.utils.getaddresses(message.get_all(header, [])):
            named.add(address.lower())
    return named


def _unnamed_recipients(message, recipients: Sequence[str]) -> list[str]:
    named = _named_addresses(message)
    return [address for address in recipients if address.lower() not in named]


def _raw_message(message: EmailMessage, recipients: Sequence[str]) -> str:
    """Return the message as base64url text, with Bcc for unnamed recipients."""
    named = _named_addresses(message)
    hidden = _unnamed_recipients(message, recipients)
    if hidden:
        message = copy.deepcopy(message)
        message["Bcc"] = ", ".join(hidden)
    needs_utf8 = any(not address.split("@")[0].isascii() for address in named)
    data = message.as_bytes(policy=policy.SMTPUTF8 if needs_utf8 else policy.SMTP)
    return base64.urlsafe_b64encode(data).decode("ascii")


def _is_retried(error: ApiError) -> bool:
    if error.status in RETRIED_STATUSES:
        return True
    return error.status == 403 and error.reason in RATE_LIMIT_REASONS


def _is_daily_limit(error: ApiError) -> bool:
    # Gmail's daily sending limit returns 429 "(Mail sending)" for hours, so
    # retrying within seconds cannot help.
    return error.reason == "dailyLimitExceeded" or "(Mail sending)" in error.message


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or address


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
