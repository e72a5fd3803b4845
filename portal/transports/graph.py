"""Microsoft Graph: mailbox search, sendMail and the inbox count.

This module does not use Flask. A ``GraphClient`` takes its access tokens
from a token provider, a callable that returns a valid token and, when given
the token that Graph has just rejected, returns a fresh one. Every Graph
failure becomes a ``TransportError`` that names the cause and the fix.

Limits kept here, from Microsoft's throttling guidance for Outlook resources:
at most four requests run at once against one mailbox (more are answered with
429 "MailboxConcurrency"), and a 429 or 503 answer is retried after the
``Retry-After`` seconds, a bounded number of times.
"""

import asyncio
import base64
import contextlib
import copy
import logging
import threading
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from typing import Protocol
from urllib.parse import quote, urlencode, urlsplit

import requests

from .base import SendResult, Step, TransportError

log = logging.getLogger(__name__)

API_VERSION = "v1.0"
# Outlook rejects a fifth concurrent request to one mailbox from one app with
# 429 ApplicationThrottled, "Application is over its MailboxConcurrency limit".
MAILBOX_CONCURRENCY = 4
USER_FIELDS = "id,displayName,mail,userPrincipalName,accountEnabled"
SEARCH_PAGE_SIZE = 10
RETRY_STATUSES = frozenset({429, 503, 504})


class TokenProvider(Protocol):
    def __call__(self, stale: str | None = None) -> str:
        """Return an access token; with ``stale``, one other than that token.

        Raises ``TransportError`` when no token can be obtained.
        """


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    # The longest Retry-After, in seconds, that a request waits for. Graph
    # asking for more fails the request as temporary, so the outbox retries
    # it later instead of holding a page or a worker thread.
    max_wait: float = 30.0
    # The first wait when Graph sends no Retry-After; it doubles each retry.
    first_backoff: float = 1.0


@dataclass(frozen=True)
class Mailbox:
    """The mailbox that requests act on.

    ``path`` is ``users/{id}`` with application permissions, or ``me`` with a
    delegated token; ``address`` names the mailbox in messages.
    """

    path: str
    address: str
    # Identifies the mailbox for the concurrency limit; ``path`` when empty.
    key: str = ""

    @classmethod
    def of_user(cls, user_id: str, address: str) -> "Mailbox":
        segment = quote(user_id, safe="@")
        if set(segment) <= {"."}:
            # quote leaves dots alone, and "." or ".." would name another path.
            segment = "%2E" * len(segment)
        return cls(f"users/{segment}", address)


@dataclass(frozen=True)
class GraphUser:
    id: str
    display_name: str
    mail: str
    user_principal_name: str
    account_enabled: bool

    @property
    def shared_mailbox(self) -> bool:
        # Graph has no mailbox type on the user object. Exchange Online
        # creates the user of a shared mailbox with sign-in blocked, so a user
        # with an address whose account is disabled is taken as shared. A
        # regular user whose sign-in was blocked looks the same.
        return bool(self.mail) and not self.account_enabled

    @classmethod
    def from_json(cls, data: dict) -> "GraphUser":
        return cls(
            id=str(data.get("id") or ""),
            display_name=str(data.get("displayName") or ""),
            mail=str(data.get("mail") or ""),
            user_principal_name=str(data.get("userPrincipalName") or ""),
            account_enabled=data.get("accountEnabled") is not False,
        )


@dataclass(frozen=True)
class UserPage:
    users: list[GraphUser]
    next_link: str = ""  # Graph's @odata.nextLink; empty on the last page


@dataclass(frozen=True)
class InboxCount:
    total: int
    unread: int
    folder: str = "Inbox"


# -- concurrency per mailbox --------------------------------------------------

_slots_lock = threading.Lock()
_slots: dict[str, threading.BoundedSemaphore] = {}


def _mailbox_slot(key: str) -> threading.BoundedSemaphore:
    """Return the semaphore that every client in this process shares for one mailbox."""
    with _slots_lock:
        slot = _slots.get(key)
        if slot is None:
            slot = _slots[key] = threading.BoundedSemaphore(MAILBOX_CONCURRENCY)
        return slot


# -- the client ---------------------------------------------------------------


class GraphClient:
    """Blocking Microsoft Graph requests for one token provider.

    ``base_url`` is Graph's root such as ``https://graph.microsoft.com``; the
    API version is added here. One client may be used from several threads.
    """

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        label: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_url = f"{self.base_url}/{API_VERSION}"
        self.token_provider = token_provider
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.label = label  # such as "account 7", for log lines
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    # -- operations -----------------------------------------------------------

    def search_users(self, text: str, next_link: str = "") -> UserPage:
        """Return users whose address, user principal name or display name
        starts with ``text``; ``next_link`` continues an earlier search."""
        if next_link:
            url = self._checked_next_link(next_link)
        else:
            literal = text.replace("'", "''")  # OData doubles a quote in a string
            condition = " or ".join(
                f"startswith({name},'{literal}')"
                for name in ("mail", "userPrincipalName", "displayName")
            )
            query = {
                "$filter": condition,
                "$select": USER_FIELDS,
                "$top": str(SEARCH_PAGE_SIZE),
            }
            url = f"{self.api_url}/users?" + urlencode(
                query, quote_via=quote, safe="$,'()"
            )

        response = self._request("GET", url, context="search")
        body = _json(response)
        users = [GraphUser.from_json(item) for item in body.get("value") or []]
        return UserPage(users, str(body.get("@odata.nextLink") or ""))

    def get_user(self, user_id: str) -> GraphUser:
        mailbox = Mailbox.of_user(user_id, user_id)
        url = f"{self.api_url}/{mailbox.path}?$select={USER_FIELDS}"
        response = self._request("GET", url, context="lookup", mailbox_address=user_id)
        return GraphUser.from_json(_json(response))

    def find_user(self, address: str) -> GraphUser | None:
        """Return the user whose address or user principal name is ``address``."""
        literal = address.replace("'", "''")
        query = {
            "$filter": f"mail eq '{literal}' or userPrincipalName eq '{literal}'",
            "$select": USER_FIELDS,
        }
        url = f"{self.api_url}/users?" + urlencode(query, quote_via=quote, safe="$,'()")
        body = _json(
            self._request("GET", url, context="lookup", mailbox_address=address)
        )
        users = body.get("value") or []
        return GraphUser.from_json(users[0]) if users else None

    def get_me(self) -> dict:
        """Read the signed-in user of a delegated token, with every address it has."""
        url = (
            f"{self.api_url}/me?$select=id,displayName,mail,userPrincipalName,"
            "proxyAddresses"
        )
        return _json(self._request("GET", url, context="me"))

    def send_message(
        self, mailbox: Mailbox, message: EmailMessage, *, recipients: list[str]
    ) -> SendResult:
        """Send ``message`` from ``mailbox`` with sendMail in its MIME form.

        Graph takes the recipients from the MIME headers, so envelope
        recipients missing from To and Cc are added as Bcc, which Exchange
        removes before delivery. A From address other than the mailbox makes
        Exchange check the mailbox's Send As or Send on Behalf right.
        """
        mime = _graph_mime(message, recipients)
        from_address = _from_address(message)
        response = self._request(
            "POST",
            f"{self.api_url}/{mailbox.path}/sendMail",
            mailbox=mailbox,
            context="send",
            from_address=from_address,
            data=base64.b64encode(mime),
            headers={"Content-Type": "text/plain"},
        )
        request_id = response.headers.get("request-id", "")
        reply = f"{response.status_code} Accepted"
        if request_id:
            reply += f" (request-id {request_id})"
        return SendResult(reply=reply)

    def inbox_count(self, mailbox: Mailbox) -> InboxCount:
        url = (
            f"{self.api_url}/{mailbox.path}/mailFolders/inbox"
            "?$select=displayName,totalItemCount,unreadItemCount"
        )
        body = _json(self._request("GET", url, mailbox=mailbox, context="read"))
        return InboxCount(
            total=int(body.get("totalItemCount") or 0),
            unread=int(body.get("unreadItemCount") or 0),
            folder=str(body.get("displayName") or "Inbox"),
        )

    # -- the request loop -----------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        *,
        context: str,
        mailbox: Mailbox | None = None,
        mailbox_address: str = "",
        from_address: str = "",
        data: bytes | None = None,
        headers: dict | None = None,
    ) -> requests.Response:
        """Send one request with a token, retry as Graph requests, and raise on failure."""
        slot = (
            _mailbox_slot(f"{self.base_url}|{mailbox.key or mailbox.path}")
            if mailbox
            else contextlib.nullcontext()
        )
        with slot:
            response = self._send_with_retries(method, url, data, headers or {})
        if response.status_code >= 400:
            raise graph_failure(
                response,
                context=context,
                mailbox=mailbox.address if mailbox else mailbox_address,
                from_address=from_address,
                delegated=bool(mailbox and mailbox.path == "me"),
            )
        return response

    def _send_with_retries(
        self, method: str, url: str, data: bytes | None, headers: dict
    ) -> requests.Response:
        token = self.token_provider()
        refreshed = False
        retries = 0
        while True:
            response = self._send_once(method, url, data, headers, token)

            # An expired or revoked token: take a fresh one, once.
            if response.status_code == 401 and not refreshed:
                log.info("Graph rejected the token for %s; refreshing it", self.label)
                response.close()
                token = self.token_provider(stale=token)
                refreshed = True
                continue

            if (
                response.status_code in RETRY_STATUSES
                and retries < self.retry.max_retries
            ):
                wait = self._retry_wait(response, retries)
                if wait is not None:
                    retries += 1
                    log.info(
                        "Graph responded %s for %s; retry %d of %d in %.2f s",
                        response.status_code,
                        self.label,
                        retries,
                        self.retry.max_retries,
                        wait,
                    )
                    response.close()
                    _sleep(wait)
                    continue
            return response

    def _send_once(
        self, method: str, url: str, data: bytes | None, headers: dict, token: str
    ) -> requests.Response:
        host = urlsplit(url).netloc
        try:
            return self.session.request(
                method,
                url,
                data=data,
                headers={**headers, "Authorization": f"Bearer {token}"},
                timeout=self.timeout,
            )
        except requests.Timeout:
            raise TransportError(
                Step.TIMEOUT,
                f"Microsoft Graph at {host} did not respond within {self.timeout:g} s.",
                "Try again later. If it keeps happening, check that this portal's "
                "network and proxy let it reach Microsoft Graph.",
                temporary=True,
            ) from None
        except requests.ConnectionError as error:
            log.info(
                "Connecting to Graph at %s failed for %s: %s", host, self.label, error
            )
            raise TransportError(
                Step.CONNECT,
                f"The connection to Microsoft Graph at {host} failed.",
                "Check that this portal's network, DNS and proxy let it reach "
                "Microsoft Graph, and that the cloud chosen on the Microsoft 365 "
                "integration page is right.",
                temporary=True,
            ) from None

    def _retry_wait(self, response: requests.Response, retries: int) -> float | None:
        """Return the seconds to wait before the next try, or None when Graph requests too long a wait."""
        told = _retry_after_seconds(response.headers.get("Retry-After", ""))
        if told is None:
            return min(self.retry.first_backoff * 2**retries, self.retry.max_wait)
        if told > self.retry.max_wait:
            return None
        return told

    def _checked_next_link(self, next_link: str) -> str:
        """Return ``next_link`` if it continues a user search on this Graph.

        The link comes back from the browser, and the request carries the
        tenant's token, so it must not point anywhere else.
        """
        link, expected = urlsplit(next_link), urlsplit(f"{self.api_url}/users")
        same = (link.scheme, link.netloc, link.path) == (
            expected.scheme,
            expected.netloc,
            expected.path,
        )
        if not same or link.fragment:
            raise TransportError(
                Step.PROTOCOL,
                "The link to the next page of results is not a Microsoft Graph user search.",
                "Search again.",
            )
        return next_link


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _retry_after_seconds(value: str) -> float | None:
    """Parse Retry-After: delay-seconds or an HTTP date (RFC 9110, 10.2.3)."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _json(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TransportError(
            Step.PROTOCOL,
            f"Microsoft Graph answered {response.status_code} without the expected JSON.",
            "Try again later; if a proxy sits between this portal and Microsoft "
            "Graph, check that it passes the answers through unchanged.",
            temporary=True,
        )
    return body


def _from_address(message: EmailMessage) -> str:
    addresses = getaddresses([str(value) for value in message.get_all("From", [])])
    return addresses[0][1] if addresses else ""


def _graph_mime(message: EmailMessage, recipients: list[str]) -> bytes:
    """Serialise the message for Graph's MIME sendMail, with missing recipients as Bcc."""
    listed = {
        address.lower()
        for _, address in getaddresses(
            [
                str(value)
                for name in ("To", "Cc", "Bcc")
                for value in message.get_all(name, [])
            ]
        )
    }
    hidden = [address for address in recipients if address.lower() not in listed]
    if hidden:
        message = copy.deepcopy(message)
        message["Bcc"] = ", ".join(hidden)

    # A non-ASCII local part has no 7-bit form; SMTPUTF8 keeps it as UTF-8.
    addresses = recipients + [_from_address(message)]
    needs_utf8 = any(not address.split("@")[0].isascii() for address in addresses)
    return message.as_bytes(policy=policy.SMTPUTF8 if needs_utf8 else policy.SMTP)


# -- failures -----------------------------------------------------------------

# Error codes that mean "no such mailbox", from Outlook (mail endpoints) and
# from the directory (user endpoints).
_NOT_FOUND = {
    "ErrorInvalidUser",
    "Request_ResourceNotFound",
    "ResourceNotFound",
    "ErrorNonExistentMailbox",
}
_ACCESS_DENIED = {
    "ErrorAccessDenied",
    "Authorization_RequestDenied",
    "NoPermissionsInAccessToken",
    "AccessDenied",
    "Forbidden",
}
_PERMISSION_FOR = {
    "search": "User.Read.All",
    "lookup": "User.Read.All",
    "send": "Mail.Send",
    "read": "Mail.ReadWrite",
    "me": "User.Read (delegated)",
}


def _error_body(response: requests.Response) -> tuple[str, str]:
    try:
        error = (response.json() or {}).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or "")
    message = str(error.get("message") or response.reason or "")
    return code, message


def graph_failure(
    response: requests.Response,
    *,
    context: str,
    mailbox: str = "",
    from_address: str = "",
    delegated: bool = False,
) -> TransportError:
    """Turn a Graph error response into a failure that names the cause and the fix.

    ``context`` is the operation: search, lookup, send, read or me.
    """
    status = response.status_code
    code, message = _error_body(response)
    reply = f"{status} {code}: {message}" if code else f"{status} {message}"
    step = {"send": Step.SENDER, "read": Step.FOLDER}.get(context, Step.PROTOCOL)
    who = mailbox or "the mailbox"

    if code == "MailboxNotEnabledForRESTAPI":
        return TransportError(
            step,
            f"{who} has no Exchange Online mailbox that Microsoft Graph can reach: "
            "it is unlicensed, inactive, soft-deleted or hosted on an on-premises "
            "Exchange server.",
            "Assign the user an Exchange Online licence (shared mailboxes need "
            "none) or restore the mailbox, then test again. For a mailbox on an "
            "on-premises server, create a Microsoft Exchange (on-premises) account "
            "instead.",
            reply=reply,
        )

    if code == "ErrorSendAsDenied":
        return TransportError(
            Step.SENDER,
            f"Exchange refused to send as {from_address or 'the From address'} from "
            f"the mailbox {who}: the mailbox has neither the Send As nor the Send "
            f"on Behalf right on {from_address or 'that address'}.",
            f"In the Exchange admin center, open {from_address or 'the From address'}"
            f" › Delegation and give {who} Send As (or Send on Behalf), wait for the "
            "change to reach Exchange Online (up to an hour), and test again. Or "
            "clear the Send as address so messages go out as the mailbox itself.",
            reply=reply,
        )

    if status == 404 or code in _NOT_FOUND:
        return TransportError(
            step,
            f"The mailbox {who} was not found in the Microsoft 365 tenant.",
            "It may have been deleted or renamed. Choose the mailbox again with "
            "Search, then test again.",
            reply=reply,
        )

    if status == 401:
        if delegated:
            return TransportError(
                Step.AUTHENTICATION,
                f"Microsoft Graph rejected the sign-in of {who} even after a fresh token.",
                "Press Reconnect on the account and sign in to Microsoft again.",
                reply=reply,
            )
        return TransportError(
            Step.AUTHENTICATION,
            "Microsoft Graph rejected the portal's token even after a fresh one "
            "was obtained.",
            "Check the cloud chosen on the Microsoft 365 integration page: a token "
            "from one cloud is not valid for another cloud's Graph. Then press "
            "Check connection there.",
            reply=reply,
        )

    if status == 403 or code in _ACCESS_DENIED:
        permission = _PERMISSION_FOR.get(context, "")
        if delegated:
            advice = (
                "The consent for this mailbox was revoked or lacks Mail.Send. "
                "Press Reconnect on the account and accept the permissions."
            )
        else:
            advice = (
                f"On the Microsoft 365 integration page press Check connection: if "
                f"{permission} is missing, add it as an application permission and "
                "press Grant consent. If it is granted, an Exchange application "
                "access policy or RBAC for Applications may exclude this mailbox; "
                "ask your Exchange administrator to include it."
            )
        return TransportError(
            Step.AUTHENTICATION,
            f"Microsoft Graph denied access to {who}: the permission "
            f"{permission} is missing, was revoked, or does not cover this mailbox.",
            advice,
            reply=reply,
        )

    if status in RETRY_STATUSES:
        told = response.headers.get("Retry-After", "")
        waited = f" and asked to wait {told} s more" if told else ""
        reason = (
            "throttled the requests" if status == 429 else "was temporarily unavailable"
        )
        return TransportError(
            Step.PROTOCOL,
            f"Microsoft Graph {reason} for {who}{waited}; the retries were used up.",
            "Messages in the outbox are retried later on their own. If this keeps "
            "happening, fewer modules should send through this mailbox at once.",
            reply=reply,
            temporary=True,
        )

    if status == 413 or code in ("ErrorMessageSizeExceeded", "RequestEntityTooLarge"):
        return TransportError(
            Step.MESSAGE,
            "The message is too large for Microsoft Graph's sendMail.",
            "Graph accepts requests of up to 4 MB; send large attachments as links.",
            reply=reply,
        )

    if code.startswith("ErrorMimeContent") or code == "ErrorInvalidRecipients":
        invalid_recipients = code == "ErrorInvalidRecipients"
        return TransportError(
            Step.RECIPIENT if invalid_recipients else Step.MESSAGE,
            "Microsoft Graph rejected the message: " + message,
            "Check the recipient addresses."
            if invalid_recipients
            else "This is a fault in the portal's message; report it with the reply below.",
            reply=reply,
        )

    return TransportError(
        step,
        f"Microsoft Graph answered {status} {code or message}.",
        "Try again later. If it persists, search for the error code in "
        "Microsoft's Graph documentation.",
        reply=reply,
        temporary=status >= 500,
    )


# -- delivery -------------------------------------------------------------------


class GraphConnection:
    """A delivery worker's connection: sends run in a thread, one at a time.

    Either ``client`` and ``mailbox`` are given, or ``failure``, which every
    use raises (for an account whose tenant connection is not usable).
    """

    def __init__(
        self,
        client: GraphClient | None = None,
        mailbox: Mailbox | None = None,
        failure: TransportError | None = None,
    ) -> None:
        self.client = client
        self.mailbox = mailbox
        self.failure = failure

    async def __aenter__(self) -> "GraphConnection":
        if self.failure is not None:
            raise self.failure
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self.client is not None:
            self.client.close()

    async def send(
        self, message: EmailMessage, *, sender: str, recipients: list[str]
    ) -> SendResult:
        # asyncio.to_thread copies the context, so the Flask app context of the
        # worker stays visible to a token provider that stores a rotated token.
        return await asyncio.to_thread(
            self.client.send_message, self.mailbox, message, recipients=recipients
        )
