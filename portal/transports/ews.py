"""Exchange Web Services transport on exchangelib: send with CreateItem, count the inbox.

exchangelib is synchronous and may wait on the network for a long time, so
every call here runs on a worker thread of a small pool with a deadline.
``send_message`` and ``count_inbox`` block their caller until the deadline at
most. ``EwsConnection``, the delivery worker's opener, awaits the pool
without blocking the event loop. ``close_connections`` ends the pool and
exchangelib's kept-alive connections; it runs when the process exits.

TLS is set per account: verification against the system's certificate
authorities (or ``cafile``), or one pinned SHA-256 fingerprint, which urllib3
checks on each connection before any credentials are sent.

Every failure raises TransportError with the step, the server's words and
what to do. No text that reaches a page, a log line or the outbox contains
the password or an ``Authorization`` value.
"""

import asyncio
import atexit
import base64
import concurrent.futures
import contextvars
import copy
import functools
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from enum import StrEnum
from types import TracebackType
from typing import TypeVar
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from exchangelib import DELEGATE, Account, Configuration, Credentials, Message
from exchangelib import errors as ews_errors
from exchangelib.autodiscover import AutodiscoverProtocol
from exchangelib.properties import Mailbox
from exchangelib.protocol import CachingProtocol, FailFast, Protocol
from exchangelib.transport import BASIC, DEFAULT_HEADERS, NTLM
from exchangelib.version import Build, Version

from . import destinations, tls
from .base import (
    ReadResult,
    SendResult,
    Step,
    TransportError,
    host_not_found,
    timed_out,
)

log = logging.getLogger(__name__)

USER_AGENT = "email-account-portal (exchangelib)"

# Worker threads shared by every Exchange call of this process.
MAX_THREADS = 8

T = TypeVar("T")


class Authentication(StrEnum):
    NTLM = "ntlm"
    BASIC = "basic"


class FromMode(StrEnum):
    """The way Exchange shows a From override: only the address, or both names."""

    SEND_AS = "send_as"
    ON_BEHALF = "on_behalf"


_AUTH_TYPES = {Authentication.NTLM: NTLM, Authentication.BASIC: BASIC}
AUTHENTICATION_LABELS = {Authentication.NTLM: "NTLM", Authentication.BASIC: "Basic"}


@dataclass(frozen=True)
class TlsPolicy:
    """The certificate check of an account; hashable, so it keys the connection cache."""

    trusted_fingerprint: str = ""  # empty: verify against certificate authorities
    cafile: str | None = None  # PEM file replacing the system's authorities


@dataclass(frozen=True)
class ExchangeSettings:
    ews_url: str  # https://mail.example.com/EWS/Exchange.asmx
    mailbox: str  # the primary SMTP address of the signed-in mailbox
    username: str  # DOMAIN\user or a user principal name
    password: str = field(repr=False)
    authentication: Authentication = Authentication.NTLM
    # The server's build, such as "15.2.1544.4", when known from Autodiscover;
    # empty makes exchangelib ask the server first.
    server_version: str = ""
    from_address: str = ""  # the From override; empty sends as the mailbox
    from_mode: FromMode = FromMode.SEND_AS
    tls: TlsPolicy = TlsPolicy()
    timeout: float = 30.0  # seconds for each HTTP request
    # Retries after "server busy", each after the wait that the server
    # requests, if that wait is at most max_back_off seconds.
    busy_retries: int = 2
    max_back_off: float = 10.0

    @property
    def deadline(self) -> float:
        """Seconds a caller waits for one operation, retries included.

        One operation is up to four HTTP requests (version, root folder, inbox
        or message), each bounded by ``timeout``.
        """
        attempts = self.busy_retries + 1
        return attempts * 4 * self.timeout + self.busy_retries * self.max_back_off

    @property
    def host(self) -> str:
        return urlsplit(self.ews_url).hostname or self.ews_url

    @property
    def port(self) -> int:
        parts = urlsplit(self.ews_url)
        return parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class InboxCount(ReadResult):
    unread_count: int = 0


# -- running exchangelib off the caller's thread ------------------------------------

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=MAX_THREADS, thread_name_prefix="ews"
            )
        return _pool


def run_with_deadline(
    function: Callable[[], T],
    settings: ExchangeSettings,
    activity: str = "answering EWS requests",
) -> T:
    """Run ``function`` on the pool and wait for it, at most ``settings.deadline`` s.

    The worker thread goes on after the deadline until exchangelib's own
    request timeouts end it; its result is then dropped. ``activity``
    completes the timeout message "... did not respond within N s while ...".
    """
    # The worker thread runs in a copy of this context, so the outbound
    # connection guard of the caller applies there too.
    context = contextvars.copy_context()
    future = _executor().submit(context.run, function)
    try:
        return future.result(timeout=settings.deadline)
    except concurrent.futures.TimeoutError:
        raise timed_out(
            settings.host, settings.port, settings.deadline, activity
        ) from None


async def run_async(function: Callable[[], T], settings: ExchangeSettings) -> T:
    """Like run_with_deadline(), for a coroutine: the event loop is not blocked."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()  # this task's outbound guard
    future = loop.run_in_executor(_executor(), functools.partial(context.run, function))
    try:
        return await asyncio.wait_for(future, settings.deadline)
    except TimeoutError:
        raise timed_out(
            settings.host, settings.port, settings.deadline, "answering EWS requests"
        ) from None


def close_connections() -> None:
    """Close exchangelib's kept-alive connections and stop the worker threads."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
    CachingProtocol.clear_cache()
    log.info("Closed the Exchange connections")


atexit.register(close_connections)


# -- exchangelib with per-account TLS -------------------------------------------------


class OutboundRefused(OSError):
    """The outbound connection policy refused an address; ``failure`` says why."""

    def __init__(self, failure: TransportError) -> None:
        super().__init__(failure.summary)
        self.failure = failure


def _connect_checked(connection: urllib3.connection.HTTPConnection) -> socket.socket:
    """Resolve the host, check each address with the outbound policy, connect to it.

    The address that was checked is the one connected to, as in
    base.open_connection(). Raises OutboundRefused, socket.gaierror or OSError.
    """
    host, port = connection._dns_host, connection.port
    timeout = (
        connection.timeout if isinstance(connection.timeout, int | float) else None
    )
    addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last_error: OSError | None = None
    for family, kind, protocol, _, address in addresses:
        try:
            destinations.check(host, port, address[0])
        except TransportError as refusal:
            raise OutboundRefused(refusal) from None
        sock = socket.socket(family, kind, protocol)
        for option in connection.socket_options or ():
            sock.setsockopt(*option)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError as error:
            sock.close()
            last_error = error
            continue
        return sock
    raise last_error or OSError(f"{host} has no address")


class _CheckedConnectionMixin:
    def _new_conn(self) -> socket.socket:
        # urllib3's own mapping of connection errors, around a checked connect.
        try:
            return _connect_checked(self)
        except socket.gaierror as error:
            raise urllib3.exceptions.NameResolutionError(
                self.host, self, error
            ) from error
        except TimeoutError as error:
            raise urllib3.exceptions.ConnectTimeoutError(
                self, f"Connection to {self.host} timed out."
            ) from error
        except OSError as error:
            raise urllib3.exceptions.NewConnectionError(
                self, f"Failed to establish a new connection: {error}"
            ) from error


class _CheckedHTTPConnection(
    _CheckedConnectionMixin, urllib3.connection.HTTPConnection
):
    pass


class _CheckedHTTPSConnection(
    _CheckedConnectionMixin, urllib3.connection.HTTPSConnection
):
    pass


class _CheckedHTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _TlsAdapter(requests.adapters.HTTPAdapter):
    """An HTTP adapter whose certificate checks come from a TlsPolicy.

    It replaces what requests derives from ``verify``, so neither certifi's
    bundle nor REQUESTS_CA_BUNDLE changes what an account trusts.
    """

    def __init__(self, policy_: TlsPolicy) -> None:
        self._policy = policy_
        if policy_.trusted_fingerprint:
            self._context = tls.create_unverified_context()
        else:
            self._context = ssl.create_default_context(cafile=policy_.cafile)
        # One connection, no retries: exchangelib pools sessions and retries.
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        # Every connection goes through the outbound connection policy.
        self.poolmanager.pool_classes_by_scheme = {
            "http": _CheckedHTTPConnectionPool,
            "https": _CheckedHTTPSConnectionPool,
        }

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, _ = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        pool_kwargs = {"ssl_context": self._context, "cert_reqs": "CERT_REQUIRED"}
        if self._policy.trusted_fingerprint:
            # urllib3 compares the peer certificate's digest after the
            # handshake and before it sends the request.
            pool_kwargs["cert_reqs"] = "CERT_NONE"
            pool_kwargs["assert_fingerprint"] = self._policy.trusted_fingerprint
        return host_params, pool_kwargs

    def cert_verify(self, conn, url, verify, cert):
        """Do nothing: build_connection_pool_key_attributes() set the checks."""


def http_session(policy_: TlsPolicy) -> requests.Session:
    """Return a requests session with the account's TLS policy and the outbound checks."""
    session = requests.Session()
    session.headers.update(DEFAULT_HEADERS)
    session.headers["User-Agent"] = USER_AGENT
    adapter = _TlsAdapter(policy_)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class _PortalConfiguration(Configuration):
    """exchangelib's Configuration with the account's TLS policy and timeout."""

    def __init__(self, *, tls_policy: TlsPolicy, timeout: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tls_policy = tls_policy
        self.timeout = timeout


class _BusyAware(FailFast):
    """Fail at once, but keep the server's Retry-After on a 503 or busy response."""

    def raise_response_errors(self, response):
        try:
            return super().raise_response_errors(response)
        except (
            ews_errors.ErrorInternalServerTransientError,
            ews_errors.ErrorServerBusy,
        ) as error:
            retry_after = response.headers.get("Retry-After", "")
            back_off = None
            if retry_after.isdigit():
                # exchangelib replaces a zero wait with its default one, but
                # Retry-After: 0 means at once.
                back_off = max(float(retry_after), 0.001)
            raise ews_errors.ErrorServerBusy(str(error), back_off=back_off) from None


class _ProtocolCache(CachingProtocol):
    """exchangelib's protocol cache, also keyed by authentication, TLS and timeout.

    exchangelib keys cached protocols by URL and credentials only, so a second
    account on the same server with another TLS policy would reuse the first
    one's connections.

    NOTE: a kept-alive connection was checked by the outbound policy in force
    when it opened. Two accounts with the same URL, credentials and TLS policy,
    one personal and one global, share connections.
    """

    @staticmethod
    def _cache_key(config):
        return (
            config.service_endpoint,
            config.credentials,
            config.auth_type,
            getattr(config, "tls_policy", None),
            getattr(config, "timeout", None),
        )


class _Protocol(Protocol, metaclass=_ProtocolCache):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.TIMEOUT = self.config.timeout
        # The wait in seconds before retrying a busy server that named none;
        # exchangelib's default is 10.
        self.RETRY_WAIT = 1

    def raw_session(self, prefix, oauth2_client=None, **kwargs):
        return http_session(self.config.tls_policy)


class PortalAutodiscoverProtocol(AutodiscoverProtocol):
    """exchangelib's SOAP Autodiscover client with the account's TLS policy."""

    def __init__(self, config: _PortalConfiguration) -> None:
        super().__init__(config=config)
        self.TIMEOUT = config.timeout

    def raw_session(self, prefix, oauth2_client=None, **kwargs):
        return http_session(self.config.tls_policy)


def credentials(
    username: str, password: str, authentication: Authentication
) -> Credentials:
    """Return exchangelib's credentials, with a Basic password in UTF-8.

    requests encodes a str for Basic authentication as Latin-1, which fails for
    other characters. Bytes it sends as they are, and RFC 7617 allows UTF-8.
    NTLM encodes the password itself.
    """
    if authentication == Authentication.BASIC:
        return Credentials(username, password.encode("utf-8"))
    return Credentials(username, password)


def configuration(
    url: str,
    *,
    username: str,
    password: str,
    authentication: Authentication,
    tls_policy: TlsPolicy,
    timeout: float,
    version: Version | None = None,
) -> _PortalConfiguration:
    return _PortalConfiguration(
        service_endpoint=url,
        credentials=credentials(username, password, Authentication(authentication)),
        auth_type=_AUTH_TYPES[Authentication(authentication)],
        version=version,
        retry_policy=_BusyAware(),
        tls_policy=tls_policy,
        timeout=timeout,
    )


def parse_version(build: str) -> Version | None:
    """Return exchangelib's Version for a build such as "15.02.1544.004", or None."""
    try:
        numbers = [int(part) for part in build.split(".")]
    except ValueError:
        return None
    if len(numbers) < 2:
        return None
    try:
        return Version(build=Build(*numbers[:4]))
    except ValueError:  # a build that exchangelib has no API version for
        return None


def describe_version(build: str) -> str:
    """Return a readable server version, such as "Microsoft Exchange Server 2019"."""
    version = parse_version(build)
    if version is None:
        return f"Exchange build {build}" if build else ""
    name = version.fullname
    return f"{name} (build {version.build})" if name != "UNKNOWN" else str(build)


def _account(settings: ExchangeSettings) -> Account:
    config = configuration(
        settings.ews_url,
        username=settings.username,
        password=settings.password,
        authentication=settings.authentication,
        tls_policy=settings.tls,
        timeout=settings.timeout,
        version=parse_version(settings.server_version),
    )
    protocol = _Protocol(config=config)
    account = Account(
        settings.mailbox,
        config=config,
        autodiscover=False,
        access_type=DELEGATE,
        locale="en_US",
    )
    # Account() builds exchangelib's own Protocol, which would use requests'
    # default TLS checks; it opens no connection before its first request.
    account.protocol = protocol
    return account


# -- the operations -------------------------------------------------------------------


def send_message(
    settings: ExchangeSettings,
    message: EmailMessage,
    *,
    recipients: Sequence[str] | None = None,
) -> SendResult:
    """Send ``message`` through EWS, blocking at most ``settings.deadline`` s."""
    return run_with_deadline(lambda: _send(settings, message, recipients), settings)


def count_inbox(settings: ExchangeSettings) -> InboxCount:
    """Open the mailbox's inbox and return its message counts."""
    return run_with_deadline(lambda: _count(settings), settings)


class EwsConnection:
    """The delivery worker's opener: sends messages without blocking the event loop.

    EWS has no connection to open: exchangelib keeps HTTP connections per
    server and credentials, and the first send signs in.
    """

    def __init__(self, settings: ExchangeSettings) -> None:
        self.settings = settings

    async def __aenter__(self) -> "EwsConnection":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    async def send(
        self,
        message: EmailMessage,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
    ) -> SendResult:
        """Send ``message``; ``sender`` is unused, because EWS takes the From element."""
        return await run_async(
            lambda: _send(self.settings, message, recipients), self.settings
        )


def _send(
    settings: ExchangeSettings,
    message: EmailMessage,
    recipients: Sequence[str] | None,
) -> SendResult:
    outgoing = outgoing_message(message, settings, recipients)
    author = settings.from_address or settings.mailbox
    needs_utf8 = any(
        not address.addr_spec.split("@")[0].isascii()
        for name in ("From", "To", "Cc", "Bcc", "Sender")
        for address in (outgoing[name].addresses if outgoing[name] else ())
    )
    mime = outgoing.as_bytes(policy=policy.SMTPUTF8 if needs_utf8 else policy.SMTP)

    def create() -> None:
        # NOTE: tested against the fake only. Exchange is expected to apply the
        # From element over the MIME From, as it does for other properties.
        item = Message(
            account=_account(settings),
            mime_content=mime,
            author=Mailbox(email_address=author),
        )
        # SendOnly: no copy in Sent Items, as for the other transports.
        item.send(save_copy=False)

    log.info(
        "Sending through EWS %s from mailbox %s as %s",
        settings.ews_url,
        settings.mailbox,
        author,
    )
    _call(settings, create, what=_SENDING)
    log.info("EWS %s accepted a message from %s", settings.ews_url, author)
    return SendResult(reply="NoError (CreateItem, MessageDisposition SendOnly)")


def outgoing_message(
    message: EmailMessage,
    settings: ExchangeSettings,
    recipients: Sequence[str] | None = None,
) -> EmailMessage:
    """Return the message as Exchange receives it in MimeContent.

    A From override replaces the From address and keeps its display name;
    Send on Behalf also names the mailbox in Sender. Recipients that are not
    in To or Cc become Bcc, which Exchange delivers and removes.
    """
    outgoing = copy.deepcopy(message)
    if settings.from_address:
        current = outgoing["From"].addresses[0] if outgoing["From"] else None
        del outgoing["From"]
        outgoing["From"] = Address(
            display_name=current.display_name if current else "",
            addr_spec=settings.from_address,
        )
        del outgoing["Sender"]
        if settings.from_mode == FromMode.ON_BEHALF:
            outgoing["Sender"] = Address(addr_spec=settings.mailbox)

    if recipients is not None:
        shown = {
            address.addr_spec.lower()
            for name in ("To", "Cc")
            for address in (outgoing[name].addresses if outgoing[name] else ())
        }
        hidden = [address for address in recipients if address.lower() not in shown]
        del outgoing["Bcc"]
        if hidden:
            outgoing["Bcc"] = ", ".join(hidden)
    return outgoing


def _count(settings: ExchangeSettings) -> InboxCount:
    result: dict[str, int] = {}

    def read() -> None:
        inbox = _account(settings).inbox
        result["total"] = inbox.total_count or 0
        result["unread"] = inbox.unread_count or 0

    log.info(
        "Counting the inbox of %s through EWS %s", settings.mailbox, settings.ews_url
    )
    _call(settings, read, what=_READING)
    return InboxCount(
        message_count=result["total"],
        folder="Inbox",
        unread_count=result["unread"],
    )


def _call(settings: ExchangeSettings, operation: Callable[[], None], what: str) -> None:
    """Run ``operation``, retrying "server busy"; raise TransportError on failure."""
    attempt = 0
    while True:
        attempt += 1
        try:
            operation()
            return
        except (ews_errors.EWSError, requests.RequestException, OSError) as error:
            # exchangelib reports a busy response to its version request as a
            # plain TransportError, with ErrorServerBusy as its context.
            busy = next(
                (
                    item
                    for item in _exception_chain(error)
                    if isinstance(item, ews_errors.ErrorServerBusy)
                ),
                None,
            )
            if busy is None:
                raise _report(
                    settings, classify(error, settings, what), error
                ) from None
            wait = busy.back_off if busy.back_off is not None else 1.0
            if attempt > settings.busy_retries or wait > settings.max_back_off:
                raise _report(settings, _busy(settings, busy, attempt), busy) from None
            log.info(
                "EWS %s is busy (attempt %d of %d), retrying in %.2f s",
                settings.ews_url,
                attempt,
                settings.busy_retries + 1,
                wait,
            )
            time.sleep(wait)


# -- failures ---------------------------------------------------------------------------

_SENDING = "send"
_READING = "read"

_AUTHORIZATION = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n,}]+")
_STATUS = re.compile(r"Code: (\d{3})")


def scrub(text: str, username: str = "", password: str = "") -> str:
    """Remove Authorization values and every form of ``password`` from ``text``."""
    text = _AUTHORIZATION.sub(r"\1[removed]", text)
    if password:
        forms = [
            password,
            base64.b64encode(password.encode()).decode("ascii"),
            base64.b64encode(f"{username}:{password}".encode()).decode("ascii"),
        ]
        for form in forms:
            text = text.replace(form, "********")
    return text


class _RedactAuthorization(logging.Filter):
    """Remove Authorization values from exchangelib's debug output of request headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "uthorization" in message:
            record.msg = scrub(message)
            record.args = ()
        return True


def _protect_exchangelib_logs() -> None:
    redactor = _RedactAuthorization()
    names = ["exchangelib", "requests_ntlm", "urllib3"] + [
        name
        for name in logging.root.manager.loggerDict
        if name.startswith(("exchangelib.", "requests_ntlm."))
    ]
    for name in names:
        logging.getLogger(name).addFilter(redactor)


_protect_exchangelib_logs()


def _report(
    settings: ExchangeSettings, failure: TransportError, cause: BaseException
) -> TransportError:
    """Scrub secrets from ``failure`` and log it with the exchangelib error type."""
    failure = TransportError(
        failure.step,
        scrub(failure.summary, settings.username, settings.password),
        scrub(failure.advice, settings.username, settings.password),
        reply=scrub(failure.reply, settings.username, settings.password),
        temporary=failure.temporary,
        certificate=failure.certificate,
    )
    log.warning(
        "EWS %s failed at step %s (%s): %s",
        settings.ews_url,
        failure.step,
        type(cause).__name__,
        failure.summary,
    )
    return failure


def _busy(
    settings: ExchangeSettings, error: ews_errors.ErrorServerBusy, attempts: int
) -> TransportError:
    wait = error.back_off
    asked = f" and asked to wait {wait:g} s" if wait else ""
    return TransportError(
        Step.PROTOCOL,
        f"The Exchange server {settings.host} is busy{asked}: it refused the "
        f"request {attempts} time{'s' if attempts != 1 else ''}.",
        "Exchange limits how many requests one user may make (throttling). Try "
        "again in a few minutes; queued messages are retried automatically. If "
        "this happens often, ask the Exchange administrator about the "
        "throttling policy of this user.",
        reply=f"ErrorServerBusy: {error}",
        temporary=True,
    )


def classify(
    error: BaseException, settings: ExchangeSettings, what: str
) -> TransportError:
    """Turn an exchangelib, requests or socket error into the portal's failure."""
    mailbox_step = Step.SENDER if what == _SENDING else Step.FOLDER
    code = type(error).__name__
    text = str(error)

    if isinstance(error, ews_errors.UnauthorizedError):
        return unauthorized(settings, locked="locked out" in text)
    if isinstance(error, ews_errors.ErrorSendAsDenied):
        return _send_as_denied(settings, f"{code}: {text}")
    if isinstance(error, ews_errors.ErrorNonExistentMailbox):
        return TransportError(
            mailbox_step,
            f"Exchange has no mailbox with the address {settings.mailbox}.",
            "Check the mailbox address for typing errors. It must be the primary "
            "SMTP address of the mailbox that the user name signs in to.",
            reply=f"{code}: {text}",
        )
    if isinstance(error, ews_errors.ErrorAccessDenied):
        return TransportError(
            mailbox_step,
            f"{settings.username} signed in but may not open the mailbox "
            f"{settings.mailbox}.",
            "Use the mailbox's own user name, or ask the Exchange administrator to "
            "give this user Full Access to the mailbox.",
            reply=f"{code}: {text}",
        )
    if isinstance(
        error,
        (ews_errors.ErrorMailRecipientNotFound, ews_errors.ErrorInvalidRecipients),
    ):
        return TransportError(
            Step.RECIPIENT,
            "Exchange rejected a recipient of the message.",
            "Check the recipient addresses.",
            reply=f"{code}: {text}",
        )
    if isinstance(error, ews_errors.ErrorMessageSizeExceeded):
        return TransportError(
            Step.MESSAGE,
            "The message is larger than Exchange accepts from this mailbox.",
            "Send a smaller message, or ask the Exchange administrator to raise the "
            "mailbox's maximum send size.",
            reply=f"{code}: {text}",
        )
    if isinstance(error, ews_errors.ErrorQuotaExceeded):
        return TransportError(
            Step.MESSAGE,
            f"The mailbox {settings.mailbox} is full.",
            "Delete or archive mail in the mailbox, or ask the Exchange "
            "administrator to raise its quota.",
            reply=f"{code}: {text}",
        )
    if isinstance(error, ews_errors.RedirectError):
        return TransportError(
            Step.PROTOCOL,
            f"{settings.ews_url} redirected to {error.url} instead of answering "
            "as an EWS endpoint.",
            "The EWS URL usually ends in /EWS/Exchange.asmx. A redirect often leads "
            "to the Outlook on the web sign-in page; check the URL, or use Find "
            "automatically.",
        )
    if isinstance(error, ews_errors.CASError):
        return TransportError(
            Step.PROTOCOL,
            f"The Exchange front end could not pass the request on: {error.cas_error}.",
            "This is a problem on the Exchange server. Try again later, or give the "
            "error to the Exchange administrator.",
            reply=f"X-CasErrorCode: {error.cas_error}",
            temporary=True,
        )

    failure = network_failure(
        error,
        host=settings.host,
        port=settings.port,
        timeout=settings.timeout,
        trusted_fingerprint=settings.tls.trusted_fingerprint,
    )
    if failure is not None:
        return failure

    if isinstance(error, ews_errors.MalformedResponseError | ews_errors.SOAPError):
        status = _STATUS.search(text)
        answered = f"HTTP {status.group(1)}" if status else "a response that is not EWS"
        return TransportError(
            Step.PROTOCOL,
            f"{settings.ews_url} answered with {answered}, not as an EWS endpoint.",
            "Check the EWS URL: it usually ends in /EWS/Exchange.asmx. Find "
            "automatically looks it up from the mailbox address.",
        )
    if isinstance(error, ews_errors.ResponseMessageError):
        return TransportError(
            mailbox_step if what == _READING else Step.MESSAGE,
            f"Exchange refused the request: {code}.",
            "The server's answer is below. Give it to the Exchange administrator "
            "if it does not say what to change.",
            reply=f"{code}: {text}",
        )
    return TransportError(
        Step.PROTOCOL,
        f"The EWS request to {settings.host} failed: {code}.",
        "Check the EWS URL and try again.",
    )


def unauthorized(settings: ExchangeSettings, *, locked: bool = False) -> TransportError:
    if locked:
        return TransportError(
            Step.AUTHENTICATION,
            f"The Windows account {settings.username} is locked out.",
            "Ask the Exchange or Active Directory administrator to unlock it. Too "
            "many sign-ins with a wrong password lock an account.",
        )
    other = (
        Authentication.BASIC
        if settings.authentication == Authentication.NTLM
        else Authentication.NTLM
    )
    return TransportError(
        Step.AUTHENTICATION,
        f"Exchange rejected the user name {settings.username} or its password "
        f"(HTTP 401 with {AUTHENTICATION_LABELS[settings.authentication]}).",
        "Check the password, and write the user name as DOMAIN\\user or as the "
        "user principal name (user@domain). If both are right, the server may not "
        f"accept {AUTHENTICATION_LABELS[settings.authentication]} for EWS: try "
        f"{AUTHENTICATION_LABELS[other]}, or ask the Exchange administrator which "
        "authentication the EWS virtual directory allows.",
        reply="HTTP 401 Unauthorized",
    )


def _send_as_denied(settings: ExchangeSettings, reply: str) -> TransportError:
    address = settings.from_address or settings.mailbox
    if not settings.from_address:
        return TransportError(
            Step.SENDER,
            f"Exchange refused to send from {address} for the user "
            f"{settings.username}.",
            "The mailbox address must be the mailbox that this user signs in to. "
            "To send from another address, set it as the From override and give "
            "the mailbox the Send As or Send on Behalf right on it.",
            reply=reply,
        )
    right = "Send As" if settings.from_mode == FromMode.SEND_AS else "Send on Behalf"
    return TransportError(
        Step.SENDER,
        f"{right} permission denied by Exchange for {address}: the mailbox "
        f"{settings.mailbox} does not have the {right} right on it.",
        f"Ask the Exchange administrator to give {settings.mailbox} the {right} "
        f"right on {address} (Exchange admin center, recipients, {address}, "
        "mailbox delegation), or clear the From override. A new right can take "
        "a while to apply.",
        reply=reply,
    )


def _exception_chain(error: BaseException):
    """Yield ``error``, its causes and contexts, and the reasons urllib3 wraps."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
            *(arg for arg in current.args if isinstance(arg, BaseException)),
        ):
            if isinstance(linked, BaseException):
                pending.append(linked)


def network_failure(
    error: BaseException,
    *,
    host: str,
    port: int,
    timeout: float,
    trusted_fingerprint: str = "",
) -> TransportError | None:
    """Return the DNS, connect, TLS or timeout failure behind ``error``, if any.

    A certificate that failed its check is fetched again without checks, so
    that the failure can show it to the user.
    """
    chain = list(_exception_chain(error))

    for item in chain:
        if isinstance(item, OutboundRefused):
            return item.failure
    for item in chain:
        if isinstance(item, urllib3.exceptions.SSLError) and "ingerprints" in str(item):
            return _pinned_mismatch(host, port, timeout, trusted_fingerprint)
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            certificate = _fetch_certificate(host, port, timeout)
            return tls.certificate_error(item, host, certificate)
    for item in chain:
        if isinstance(item, ssl.SSLError):
            if tls.is_plaintext_reply(item):
                return TransportError(
                    Step.TLS,
                    f"{host} port {port} does not speak TLS: it answered in plain text.",
                    "Use the https:// address of the EWS endpoint, usually on port 443.",
                )
            return tls.handshake_error(item, host, port)
    for item in chain:
        if isinstance(item, socket.gaierror):
            return host_not_found(host, item)
        if isinstance(item, urllib3.exceptions.NameResolutionError):
            return host_not_found(host, socket.gaierror(socket.EAI_NONAME, str(item)))
    for item in chain:
        if isinstance(item, ConnectionRefusedError):
            return TransportError(
                Step.CONNECT,
                f"{host} refused the connection on port {port}.",
                "Check the EWS URL. If it is right, the web server is not running or "
                "a firewall rejects connections from this portal.",
                temporary=True,
            )
    for item in chain:
        if isinstance(
            item,
            requests.Timeout
            | TimeoutError
            | socket.timeout
            | urllib3.exceptions.TimeoutError,
        ):
            return timed_out(host, port, timeout, "waiting for the answer")
    for item in chain:
        if isinstance(item, requests.ConnectionError | ConnectionError):
            return TransportError(
                Step.CONNECT,
                f"The connection to {host} port {port} failed or was closed.",
                "Check the EWS URL and that this portal's network can reach the "
                "server, then try again.",
                temporary=True,
            )
    return None


def _fetch_certificate(host: str, port: int, timeout: float) -> bytes | None:
    try:
        return tls.fetch_certificate(host, port, timeout)
    except OSError:
        return None


def _pinned_mismatch(
    host: str, port: int, timeout: float, trusted_fingerprint: str
) -> TransportError:
    try:
        tls.check_pinned_certificate(
            _fetch_certificate(host, port, timeout), trusted_fingerprint
        )
    except TransportError as error:
        return error
    # The certificate matches now: it changed between the two handshakes.
    return TransportError(
        Step.TLS,
        f"The certificate of {host} did not match the trusted fingerprint.",
        "Try again. If this repeats, ask the Exchange administrator whether the "
        "server's certificate is being replaced. The password was not sent.",
    )
