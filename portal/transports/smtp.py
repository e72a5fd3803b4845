"""SMTP transport on aiosmtplib: connect, secure, sign in and send messages.

SmtpConnection keeps one connection for several messages, as the delivery
worker needs for a batch. send_message() sends one message over its own
connection and event loop, for Flask request threads.

Every failure raises TransportError with the step that failed, the server's
reply and what to do. Replies 4xx, timeouts and lost connections are
temporary; 5xx replies and configuration errors are permanent.
"""

import asyncio
import copy
import dataclasses
import functools
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.errors import HeaderParseError, NonASCIILocalPartDefect
from email.headerregistry import Address, Group
from email.message import EmailMessage
from types import TracebackType

import aiosmtplib
import idna
from aiosmtplib.email import flatten_message

from . import destinations, tls, xoauth2
from .base import (
    Security,
    SendResult,
    SmtpSettings,
    Step,
    TransportError,
    connection_failed,
    host_not_found,
    reported,
    timed_out,
)

log = logging.getLogger(__name__)

SMTP_PORTS = tls.WellKnownPorts("SMTP", implicit_tls=465, starttls=587)

# Headers whose domains become A-labels when the message goes out without
# SMTPUTF8, because RFC 2047 encoded words are not allowed inside an address.
_ADDRESS_HEADERS = ("From", "Sender", "Reply-To", "To", "Cc")

# Activities of the connection, worded to complete "did not respond within
# N s while ..." and "closed the connection while ...".
CONNECTING = "connecting"
WAITING_FOR_GREETING = "waiting for the greeting"
SENDING_EHLO = "sending EHLO"
STARTING_TLS = "starting TLS"
SIGNING_IN = "signing in"
SENDING_SENDER = "sending the sender address"
SENDING_RECIPIENTS = "sending the recipient addresses"
SENDING_MESSAGE = "sending the message"


class _SMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, but closing aborts the transport.

    A graceful close of a TLS transport waits for the server's close_notify,
    and asyncio.run() may end before that arrives, which leaks the socket. An
    SMTP session that is over needs no TLS goodbye.
    """

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        super().close()


@dataclass(frozen=True)
class Envelope:
    """The addresses of MAIL FROM and RCPT TO, with A-label domains."""

    sender: str
    recipients: tuple[str, ...]
    # True when some address, in the envelope or in an address header, has a
    # non-ASCII local part. Only SMTPUTF8 can carry such an address.
    smtputf8: bool


class SmtpConnection:
    """One SMTP connection that sends one or more messages.

    open() resolves the host, connects, secures the connection as the
    settings specify, checks a pinned certificate and signs in. A failed send()
    leaves the connection open when the server rejected only that message,
    and the next send() opens a new connection when the old one was lost::

        async with SmtpConnection(settings) as connection:
            for message in batch:
                await connection.send(message)

    ``cafile`` replaces the system's certificate authorities (tests use it).
    """

    def __init__(self, settings: SmtpSettings, *, cafile: str | None = None) -> None:
        self.settings = settings
        self._cafile = cafile
        self._client: _SMTP | None = None
        self._socket: socket.socket | None = None
        self._activity = CONNECTING

    async def __aenter__(self) -> "SmtpConnection":
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def is_connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    @property
    def max_message_size(self) -> int | None:
        """The SIZE limit in bytes from the server's EHLO reply, if it sent one."""
        if self._client is None:
            return None
        value = self._client.esmtp_extensions.get("size", "")
        return int(value) if value.isdigit() and int(value) > 0 else None

    async def open(self) -> None:
        """Connect, secure the connection and sign in. Raises TransportError."""
        if self.is_connected:
            return

        settings = self.settings
        log.info(
            "connecting to SMTP server %s port %d with security %s",
            settings.host,
            settings.port,
            settings.security,
        )
        try:
            await self._open()
        except TransportError as error:
            self._drop()
            raise self._report(error) from None
        except (aiosmtplib.SMTPException, OSError) as error:
            self._drop()
            failure = await self._classify(error)
            raise self._report(failure, error) from None

    async def send(
        self,
        message: EmailMessage,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
    ) -> SendResult:
        """Send ``message`` and return the server's final reply.

        The envelope comes from the Sender or From header and from To, Cc and
        Bcc unless ``sender`` or ``recipients`` are given. Bcc is never sent.
        Recipients that the server rejects while it accepts others are listed
        in the result. Raises TransportError, and ValueError for a message
        without sender or recipients.
        """
        envelope = build_envelope(message, sender=sender, recipients=recipients)
        await self.open()

        try:
            return await self._send(message, envelope)
        except TransportError as error:
            raise self._report(error) from None
        except (aiosmtplib.SMTPException, OSError) as error:
            failure = await self._classify(error)
            await self._reset()
            raise self._report(failure, error) from None

    async def close(self) -> None:
        """Send QUIT and close the connection, logging errors instead of raising."""
        client = self._client
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError) as error:
                log.info(
                    "QUIT to %s failed, closing anyway: %s",
                    self.settings.host,
                    type(error).__name__,
                )
        self._drop()

    async def _open(self) -> None:
        settings = self.settings
        context = None
        if settings.security is not Security.NONE:
            context = tls.create_ssl_context(
                settings.trusted_fingerprint, cafile=self._cafile
            )
        implicit_tls = settings.security is Security.SSL
        client = _SMTP(
            hostname=settings.host,
            timeout=settings.timeout,
            use_tls=implicit_tls,
            start_tls=False,
            tls_context=context,
            local_hostname=await asyncio.to_thread(_local_hostname),
        )

        self._activity = CONNECTING
        self._socket = await _connect_socket(
            settings.host, settings.port, settings.timeout
        )
        self._client = client
        self._activity = WAITING_FOR_GREETING
        await client.connect(sock=self._socket)
        if implicit_tls:
            self._check_pinned_certificate()

        if settings.security is Security.STARTTLS:
            await self._start_tls()
        if settings.use_auth:
            await self._sign_in()
        log.info("connected to SMTP server %s port %d", settings.host, settings.port)

    async def _greet(self) -> None:
        """Send EHLO, or HELO to a server that rejects EHLO, unless done already."""
        client = self._checked_client()
        if not client.is_ehlo_or_helo_needed:
            return

        self._activity = SENDING_EHLO
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError as error:
            if not client.is_connected:
                raise
            log.info(
                "%s rejected EHLO (%d), trying HELO", self.settings.host, error.code
            )
            await client.helo()

    async def _start_tls(self) -> None:
        settings = self.settings
        client = self._checked_client()
        await self._greet()
        if not client.supports_extension("starttls"):
            # Never fall back to plain text: the account asked for encryption.
            raise TransportError(
                Step.TLS,
                f"STARTTLS is unavailable: {settings.host} port {settings.port} "
                "does not offer it.",
                "The portal sends neither mail nor passwords unencrypted when "
                "STARTTLS is chosen. Choose SSL/TLS security with port "
                f"{SMTP_PORTS.implicit_tls} if the server offers it, or ask its "
                "administrator to enable STARTTLS.",
            )

        self._activity = STARTING_TLS
        await client.starttls()
        self._check_pinned_certificate()

    async def _sign_in(self) -> None:
        settings = self.settings
        client = self._checked_client()
        await self._greet()
        encrypted = client.get_transport_info("sslcontext") is not None
        if not client.supports_extension("auth"):
            raise _sign_in_not_offered(settings, encrypted)
        if settings.oauth_token:
            await self._sign_in_with_token(client)
            return
        if not client.supported_auth_methods:
            offered = ", ".join(method.upper() for method in client.server_auth_methods)
            raise TransportError(
                Step.AUTHENTICATION,
                f"The server offers only sign-in methods that the portal does not "
                f"support: {offered}.",
                "A Microsoft 365 or Google server needs the matching account type, "
                "which signs in with OAuth. Other servers need PLAIN, LOGIN or "
                "CRAM-MD5 enabled.",
            )

        self._activity = SIGNING_IN
        await client.login(settings.username, settings.password)
        log.info("signed in to %s as %s", settings.host, settings.username)

    async def _sign_in_with_token(self, client: _SMTP) -> None:
        """Sign in with AUTH XOAUTH2, reading the error challenge of a rejected token.

        aiosmtplib's own auth_xoauth2 discards that challenge, and with it the
        scope the server requested, so the exchange is done here. A rejected
        token is replaced once through ``oauth_refresh``, and AUTH is tried
        again on the same connection, as RFC 4954 allows.
        """
        settings = self.settings
        if "xoauth2" not in client.server_auth_methods:
            raise xoauth2.not_offered(settings.host, settings.port, "SMTP")
        self._activity = SIGNING_IN
        refresh = settings.oauth_refresh
        while True:
            failure = await self._try_token(client)
            if failure is None:
                log.info(
                    "signed in to %s with OAuth2 as %s",
                    settings.host,
                    settings.username,
                )
                return
            if failure.temporary or refresh is None:
                raise failure
            log.info(
                "%s rejected the access token of %s; fetching a new one",
                settings.host,
                settings.username,
            )
            token = await asyncio.to_thread(refresh)
            refresh = None
            self.settings = settings = dataclasses.replace(settings, oauth_token=token)

    async def _try_token(self, client: _SMTP) -> TransportError | None:
        """Send AUTH XOAUTH2 once; return None on success, else the failure."""
        settings = self.settings
        response = await client.execute_command(
            b"AUTH",
            xoauth2.MECHANISM.encode("ascii"),
            xoauth2.initial_response(settings.username, settings.oauth_token),
        )
        challenge: dict = {}
        if response.code == aiosmtplib.SMTPStatus.auth_continue:
            challenge = xoauth2.parse_challenge(response.message)
            response = await client.execute_command(b"")
        if response.code == aiosmtplib.SMTPStatus.auth_successful:
            return None
        return xoauth2.token_rejected(
            settings.host,
            settings.username,
            challenge,
            reply=f"{response.code} {response.message}".strip(),
            temporary=400 <= response.code < 500,
        )

    def _check_pinned_certificate(self) -> None:
        ssl_object = self._checked_client().get_transport_info("ssl_object")
        tls.check_pinned_certificate(
            tls.peer_certificate(ssl_object), self.settings.trusted_fingerprint
        )

    async def send_bytes(
        self, data: bytes, *, sender: str, recipients: Sequence[str]
    ) -> SendResult | None:
        """Send a message already serialised with CRLF line endings, as is.

        For messages that the portal built and stored: their address headers
        already use A-label domains and they carry no Bcc header. Returns
        None, sending nothing, when the server cannot take the bytes unchanged
        (8-bit content without 8BITMIME, or UTF-8 addresses without SMTPUTF8);
        the caller then sends the parsed message with send(), which re-encodes
        it. Raises TransportError like send().
        """
        envelope = _raw_envelope(sender, recipients)
        await self.open()
        client = self._checked_client()
        try:
            await self._greet()
            if not data.isascii() and not client.supports_extension("8bitmime"):
                return None
            if envelope.smtputf8 and not client.supports_extension("smtputf8"):
                return None
            return await self._transmit(data, envelope, eight_bit=not data.isascii())
        except TransportError as error:
            raise self._report(error) from None
        except (aiosmtplib.SMTPException, OSError) as error:
            failure = await self._classify(error)
            await self._reset()
            raise self._report(failure, error) from None

    async def _send(self, message: EmailMessage, envelope: Envelope) -> SendResult:
        client = self._checked_client()
        await self._greet()
        if envelope.smtputf8 and not client.supports_extension("smtputf8"):
            raise _smtputf8_unsupported(envelope, self.settings.host)

        outgoing = message if envelope.smtputf8 else _with_ascii_domains(message)
        eight_bit = client.supports_extension("8bitmime")
        data = flatten_message(
            outgoing, utf8=envelope.smtputf8, cte_type="8bit" if eight_bit else "7bit"
        )
        return await self._transmit(data, envelope, eight_bit=eight_bit)

    async def _transmit(
        self, data: bytes, envelope: Envelope, *, eight_bit: bool
    ) -> SendResult:
        client = self._checked_client()
        # RFC 1870 counts the octets as sent, CRLF line endings included. The
        # SMTP policies of the email package already write CRLF.
        size = len(data)
        limit = self.max_message_size
        if limit is not None and size > limit:
            raise TransportError(
                Step.MESSAGE,
                f"The message is {size} bytes, more than the {limit} bytes that "
                f"{self.settings.host} accepts.",
                _TOO_LARGE_ADVICE,
            )

        options = []
        if client.supports_extension("size"):
            options.append(f"SIZE={size}")
        if eight_bit:
            options.append("BODY=8BITMIME")
        if envelope.smtputf8:
            options.append("SMTPUTF8")
        encoding = "utf-8" if envelope.smtputf8 else "ascii"

        self._activity = SENDING_SENDER
        await client.mail(envelope.sender, options=options, encoding=encoding)

        self._activity = SENDING_RECIPIENTS
        refusals: list[aiosmtplib.SMTPRecipientRefused] = []
        for recipient in envelope.recipients:
            try:
                await client.rcpt(recipient, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as refusal:
                log.info(
                    "%s rejected recipient %s: %d %s",
                    self.settings.host,
                    recipient,
                    refusal.code,
                    refusal.message,
                )
                refusals.append(refusal)
        if len(refusals) == len(envelope.recipients):
            raise aiosmtplib.SMTPRecipientsRefused(refusals)

        self._activity = SENDING_MESSAGE
        response = await client.data(data)
        log.info(
            "%s accepted a message from %s for %d recipients",
            self.settings.host,
            envelope.sender,
            len(envelope.recipients) - len(refusals),
        )
        return SendResult(
            reply=f"{response.code} {response.message}",
            refused_recipients={
                refusal.recipient: f"{refusal.code} {refusal.message}"
                for refusal in refusals
            },
        )

    async def _reset(self) -> None:
        """Send RSET after a rejected message, so that the next one can follow."""
        client = self._client
        if client is None or not client.is_connected:
            self._drop()
            return
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError) as error:
            log.info(
                "RSET to %s failed, closing the connection: %s",
                self.settings.host,
                type(error).__name__,
            )
            self._drop()

    def _drop(self) -> None:
        """Close the connection without sending QUIT."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _checked_client(self) -> _SMTP:
        if self._client is None:
            raise aiosmtplib.SMTPServerDisconnected("not connected")
        return self._client

    def _report(
        self, failure: TransportError, cause: BaseException | None = None
    ) -> TransportError:
        """Strip the password or token from ``failure`` and log it."""
        return reported(log, "SMTP", failure, self.settings, cause)

    async def _classify(self, error: Exception) -> TransportError:
        """Turn an aiosmtplib or socket error into the failure shown to the user."""
        settings = self.settings
        host, port = settings.host, settings.port

        ssl_error = tls.find_ssl_error(error)
        if isinstance(ssl_error, ssl.SSLCertVerificationError):
            return tls.certificate_error(
                ssl_error, host, await self._fetch_certificate()
            )
        if ssl_error is not None:
            if settings.security is Security.SSL and tls.is_plaintext_reply(ssl_error):
                return tls.plaintext_port_error(host, port, SMTP_PORTS)
            return tls.handshake_error(ssl_error, host, port)

        # asyncio aborts a TLS handshake that outlasts ssl_handshake_timeout
        # with ConnectionAbortedError.
        if isinstance(error, TimeoutError) or isinstance(
            error.__cause__, ConnectionAbortedError
        ):
            return await asyncio.to_thread(
                tls.silence_failure,
                settings,
                SMTP_PORTS,
                self._activity,
                waiting_for_greeting=self._activity == WAITING_FOR_GREETING,
            )

        if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
            return _recipients_error(error.recipients, settings.use_auth)
        if isinstance(error, aiosmtplib.SMTPResponseException):
            return self._reply_error(error)
        if isinstance(error, aiosmtplib.SMTPConnectError | ConnectionError):
            return TransportError(
                Step.CONNECT,
                f"{host} closed the connection while {self._activity}.",
                "The server may limit connections or reject this portal's address. "
                "Try again later, and check the port and security setting if it "
                "keeps happening.",
                temporary=True,
            )
        if isinstance(error, OSError):
            return connection_failed(host, port, error)
        return TransportError(
            Step.PROTOCOL,
            f"The SMTP conversation with {host} failed while {self._activity}: {error}",
            "Check the port and security setting. If they are right, the server "
            "does not behave as the SMTP standard says; ask its administrator.",
        )

    def _reply_error(self, error: aiosmtplib.SMTPResponseException) -> TransportError:
        """Turn a rejected SMTP command into a failure, by command and reply code."""
        settings = self.settings
        code, text = error.code, error.message
        reply = f"{code} {text}".strip()
        temporary = 400 <= code < 500
        later = "The server asked to try again later."

        if isinstance(error, aiosmtplib.SMTPAuthenticationError):
            return _authentication_error(settings.username, code, text, reply)
        if isinstance(error, aiosmtplib.SMTPSenderRefused | aiosmtplib.SMTPDataError):
            if code == 552 or "5.3.4" in text:
                limit = self.max_message_size
                at_most = f" It accepts at most {limit} bytes." if limit else ""
                return TransportError(
                    Step.MESSAGE,
                    "The server rejected the message because it is too large."
                    + at_most,
                    _TOO_LARGE_ADVICE,
                    reply=reply,
                )
        if isinstance(error, aiosmtplib.SMTPSenderRefused):
            return _sender_error(error.sender, reply, temporary, settings.use_auth)
        if isinstance(error, aiosmtplib.SMTPRecipientRefused):
            return _recipients_error([error], settings.use_auth)
        if isinstance(error, aiosmtplib.SMTPDataError):
            return TransportError(
                Step.MESSAGE,
                "The server rejected the message.",
                later
                if temporary
                else "The server's reply gives the reason, such as a spam or "
                "content policy. Change the message or ask the mail administrator.",
                reply=reply,
                temporary=temporary,
            )
        if isinstance(error, aiosmtplib.SMTPConnectResponseError):
            return TransportError(
                Step.CONNECT,
                f"{settings.host} rejected the connection.",
                later
                if temporary
                else "The server does not accept mail from this portal's address. "
                "Ask its administrator.",
                reply=reply,
                temporary=temporary,
            )
        if self._activity == STARTING_TLS:
            return TransportError(
                Step.TLS,
                f"{settings.host} rejected STARTTLS.",
                later
                if temporary
                else "Choose SSL/TLS security if the server offers it, or ask its "
                "administrator to fix STARTTLS.",
                reply=reply,
                temporary=temporary,
            )
        return TransportError(
            Step.PROTOCOL,
            f"{settings.host} rejected a command while {self._activity}.",
            later
            if temporary
            else "Ask the mail server's administrator what the reply means.",
            reply=reply,
            temporary=temporary,
        )

    async def _fetch_certificate(self) -> bytes | None:
        """Return the server's certificate from a second, unverified handshake.

        For STARTTLS this repeats the greeting, EHLO and STARTTLS. Returns None
        if the handshake fails, since the certificate is only shown to the user.
        """
        settings = self.settings
        log.info(
            "fetching the certificate of %s port %d without verification",
            settings.host,
            settings.port,
        )
        try:
            if settings.security is Security.SSL:
                return await asyncio.to_thread(
                    tls.fetch_certificate,
                    settings.host,
                    settings.port,
                    settings.timeout,
                )
            return await _fetch_starttls_certificate(settings)
        except (TransportError, aiosmtplib.SMTPException, OSError) as error:
            log.info("could not fetch the certificate: %s", type(error).__name__)
            return None


def send_message(
    settings: SmtpSettings, message: EmailMessage, *, cafile: str | None = None
) -> SendResult:
    """Connect, send ``message`` and disconnect. Raises TransportError.

    Runs a new event loop, so call it from a thread without a running loop,
    such as a Flask request thread.
    """

    async def send_once() -> SendResult:
        async with SmtpConnection(settings, cafile=cafile) as connection:
            return await connection.send(message)

    return asyncio.run(send_once())


def build_envelope(
    message: EmailMessage,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
) -> Envelope:
    """Return the envelope of ``message``, with domains converted to A-labels.

    Raises ValueError when there is no sender or recipient, and
    TransportError for an address whose domain is not a valid IDNA name.
    """
    if sender is not None:
        sender_addresses = [_parse_address(sender, Step.SENDER)]
    else:
        header = message["Sender"] or message["From"]
        sender_addresses = list(header.addresses) if header else []
    if not sender_addresses:
        raise ValueError("The message has no From header and no sender was given.")

    if recipients is not None:
        recipient_addresses = [_parse_address(r, Step.RECIPIENT) for r in recipients]
    else:
        recipient_addresses = [
            address
            for name in ("To", "Cc", "Bcc")
            for header in message.get_all(name, [])
            for address in header.addresses
        ]
    if not recipient_addresses:
        raise ValueError("The message has no To, Cc or Bcc address.")

    header_addresses = [
        address
        for name in _ADDRESS_HEADERS
        for header in message.get_all(name, [])
        for address in header.addresses
    ]
    smtputf8 = not all(
        address.username.isascii()
        for address in [*sender_addresses, *recipient_addresses, *header_addresses]
    )
    return Envelope(
        sender=_envelope_address(sender_addresses[0], Step.SENDER),
        recipients=tuple(
            _envelope_address(address, Step.RECIPIENT)
            for address in recipient_addresses
        ),
        smtputf8=smtputf8,
    )


async def _connect_socket(host: str, port: int, timeout: float) -> socket.socket:
    """Resolve ``host`` and return a connected non-blocking TCP socket.

    Tries each address that DNS returns, with ``timeout`` seconds for each.
    """
    loop = asyncio.get_running_loop()
    try:
        addresses = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
    except socket.gaierror as error:
        raise host_not_found(host, error) from None
    except TimeoutError:
        raise timed_out(host, port, timeout, "looking up the host name") from None

    last_error: OSError | None = None
    for family, kind, protocol, _, address in addresses:
        # Checked here and connected to right below: the same address.
        destinations.check(host, port, address[0])
        connection = socket.socket(family, kind, protocol)
        connection.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(connection, address), timeout)
        except OSError as error:
            connection.close()
            log.info("connecting to %s failed: %s", address[0], error)
            last_error = error
            continue
        except BaseException:
            connection.close()
            raise
        return connection

    if isinstance(last_error, TimeoutError) or last_error is None:
        raise timed_out(host, port, timeout, CONNECTING)
    raise connection_failed(host, port, last_error)


async def _fetch_starttls_certificate(settings: SmtpSettings) -> bytes | None:
    """Repeat the greeting, EHLO and STARTTLS without verification."""
    client = _SMTP(
        hostname=settings.host,
        timeout=settings.timeout,
        start_tls=False,
        tls_context=tls.create_unverified_context(),
        local_hostname=await asyncio.to_thread(_local_hostname),
    )
    connection = await _connect_socket(settings.host, settings.port, settings.timeout)
    try:
        await client.connect(sock=connection)
        await client.ehlo()
        await client.starttls()
        return tls.peer_certificate(client.get_transport_info("ssl_object"))
    finally:
        client.close()
        connection.close()


@functools.cache
def _local_hostname() -> str:
    """Return the name for EHLO: this host's FQDN, or "localhost" if unusable."""
    name = socket.getfqdn()
    if not name or not name.isascii() or any(char.isspace() for char in name):
        return "localhost"
    return name


def _ascii_domain(domain: str, step: Step) -> str:
    """Return ``domain`` in its ASCII form (A-labels) for the envelope."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise TransportError(
            step,
            f"The domain {domain} is not a valid internationalised domain name.",
            "Correct the address.",
        ) from None


def _envelope_address(address: Address, step: Step) -> str:
    return Address(
        username=address.username, domain=_ascii_domain(address.domain, step)
    ).addr_spec


def _raw_envelope(sender: str, recipients: Sequence[str]) -> Envelope:
    """Return the envelope of a stored message, whose addresses are already checked."""
    addresses = [sender, *recipients]
    return Envelope(
        sender=sender,
        recipients=tuple(recipients),
        smtputf8=any(not address.rpartition("@")[0].isascii() for address in addresses),
    )


def _parse_address(text: str, step: Step) -> Address:
    try:
        return Address(addr_spec=text)
    except NonASCIILocalPartDefect:
        # The email package's parser rejects UTF-8 local parts, which SMTPUTF8
        # (RFC 6531) allows; the address was validated when it was entered.
        local, _, domain = text.rpartition("@")
        if local and domain:
            return Address(username=local, domain=domain)
        raise TransportError(
            step, f"{text!r} is not a valid email address.", "Correct the address."
        ) from None
    except (HeaderParseError, ValueError, IndexError):
        raise TransportError(
            step, f"{text!r} is not a valid email address.", "Correct the address."
        ) from None


def _with_ascii_domains(message: EmailMessage) -> EmailMessage:
    """Return a copy of ``message`` whose address headers use A-label domains.

    The copy shares the body. ``message`` is unchanged because deleting a
    header gives the copy a new header list.
    """
    result = copy.copy(message)
    for name in _ADDRESS_HEADERS:
        headers = message.get_all(name, [])
        if all(address.domain.isascii() for h in headers for address in h.addresses):
            continue

        del result[name]
        for header in headers:
            result[name] = [
                Group(
                    group.display_name,
                    [
                        Address(
                            address.display_name,
                            address.username,
                            _ascii_domain(address.domain, Step.MESSAGE),
                        )
                        for address in group.addresses
                    ],
                )
                for group in header.groups
            ]
    return result


_TOO_LARGE_ADVICE = (
    "Send a smaller message, for example with fewer or smaller attachments, or "
    "ask the mail administrator to raise the limit."
)


def _sign_in_not_offered(settings: SmtpSettings, encrypted: bool) -> TransportError:
    if not encrypted:
        return TransportError(
            Step.AUTHENTICATION,
            f"{settings.host} does not offer sign-in on an unencrypted connection.",
            f"Choose STARTTLS security (usually port {SMTP_PORTS.starttls}) or "
            f"SSL/TLS (usually port {SMTP_PORTS.implicit_tls}). Servers offer "
            "sign-in only after encryption, so that the password is not sent in "
            "plain text.",
        )
    return TransportError(
        Step.AUTHENTICATION,
        f"{settings.host} does not offer sign-in on port {settings.port}.",
        "Turn off sign-in if the server accepts mail from this portal without it, "
        f"or use the server's submission port ({SMTP_PORTS.starttls} or "
        f"{SMTP_PORTS.implicit_tls}).",
    )


def _authentication_error(
    username: str, code: int, text: str, reply: str
) -> TransportError:
    temporary = 400 <= code < 500
    if code == 535 and "5.7.139" in text:
        summary = (
            "Microsoft 365 rejected the password because basic authentication "
            "is disabled."
        )
        advice = (
            "Microsoft 365 no longer accepts passwords over SMTP. Convert this "
            "account to a Microsoft 365 account, which signs in with OAuth."
        )
    elif code == 534 and "5.7.9" in text:
        summary = "Google requires an app password for this account."
        advice = (
            "Create an app password in the Google account's security settings and "
            "enter it instead of the account password, or use the Google account "
            "type, which signs in with OAuth."
        )
    elif code == 538:
        summary = "The server requires an encrypted connection for sign-in."
        advice = "Choose STARTTLS or SSL/TLS security."
    elif temporary:
        summary = "The server could not check the sign-in right now."
        advice = "Try again later."
    else:
        summary = f"The server rejected the sign-in for {username}."
        advice = (
            "Check the user name and password. Some providers also require SMTP "
            "sign-in to be enabled for the mailbox, or an app password."
        )
    return TransportError(
        Step.AUTHENTICATION, summary, advice, reply=reply, temporary=temporary
    )


def _sender_error(
    sender: str, reply: str, temporary: bool, use_auth: bool
) -> TransportError:
    if temporary:
        advice = "The server asked to try again later."
    elif use_auth:
        advice = (
            f"Sign-in worked, but this login may not send as {sender}. Use the "
            "login's own address as the From address, or ask the mail "
            f"administrator to let this login send as {sender}."
        )
    else:
        advice = (
            "The server may accept this sender only after sign-in. Turn on "
            "sign-in for this account."
        )
    return TransportError(
        Step.SENDER,
        f"The server refused the sender address {sender}.",
        advice,
        reply=reply,
        temporary=temporary,
    )


def _recipients_error(
    refusals: Sequence[aiosmtplib.SMTPRecipientRefused], use_auth: bool
) -> TransportError:
    addresses = ", ".join(refusal.recipient for refusal in refusals)
    noun = "recipient" if len(refusals) == 1 else "recipients"
    temporary = all(400 <= refusal.code < 500 for refusal in refusals)
    if temporary:
        advice = (
            "The server asked to try again later, for example because of "
            "greylisting or a full mailbox."
        )
    elif use_auth:
        advice = (
            "Check the address for typing errors. If it is outside your "
            "organisation, ask the mail administrator whether this login may "
            "send to other domains."
        )
    else:
        advice = (
            "Check the address for typing errors. If it is outside your "
            "organisation, the server may relay only for signed-in users: turn "
            "on sign-in."
        )
    reply = "\n".join(f"{refusal.code} {refusal.message}" for refusal in refusals)
    return TransportError(
        Step.RECIPIENT,
        f"The server refused the {noun} {addresses}.",
        advice,
        reply=reply,
        temporary=temporary,
    )


def _smtputf8_unsupported(envelope: Envelope, host: str) -> TransportError:
    recipients = [address for address in envelope.recipients if not address.isascii()]
    if not envelope.sender.isascii():
        step, addresses = Step.SENDER, [envelope.sender, *recipients]
    elif recipients:
        step, addresses = Step.RECIPIENT, recipients
    else:
        step, addresses = Step.MESSAGE, []
    what = (
        f"the address {', '.join(addresses)}"
        if addresses
        else "the non-ASCII addresses in the message headers"
    )
    return TransportError(
        step,
        f"{host} does not support SMTPUTF8, so it cannot carry {what}.",
        "Use addresses whose part before the @ is ASCII, or a mail server that "
        "supports internationalised email (SMTPUTF8).",
    )
