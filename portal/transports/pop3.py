"""POP3 transport on the standard library's poplib: sign in and count messages.

POP3 has one mailbox per login, so the result names only INBOX. Every failure
raises TransportError with the step that failed and what to do. Timeouts, lost
connections and the response codes [IN-USE], [LOGIN-DELAY] and [SYS/TEMP]
(RFC 2449 and RFC 3206) are temporary.
"""

import contextlib
import logging
import poplib
import socket
import ssl

from . import tls
from .base import (
    ReadResult,
    ReadSettings,
    Security,
    Step,
    TransportError,
    connection_failed,
    open_connection,
    reported,
)

log = logging.getLogger(__name__)

POP3_PORTS = tls.WellKnownPorts("POP3", implicit_tls=995, starttls=110)

_TEMPORARY_CODES = ("[IN-USE]", "[LOGIN-DELAY]", "[SYS/TEMP]")

# Activities of the session, worded to complete "did not respond within N s
# while ...".
CONNECTING = "connecting"
TLS_HANDSHAKE = "performing the TLS handshake"
WAITING_FOR_GREETING = "waiting for the greeting"
STARTING_TLS = "starting TLS"
SIGNING_IN = "signing in"
COUNTING = "counting the messages"


def check_mailbox(settings: ReadSettings, *, cafile: str | None = None) -> ReadResult:
    """Sign in and count the messages in the mailbox with STAT.

    ``cafile`` replaces the system's certificate authorities. Raises
    TransportError.
    """
    session = _Session(settings, cafile)
    log.info(
        "connecting to POP3 server %s port %d with security %s",
        settings.host,
        settings.port,
        settings.security,
    )
    try:
        count = session.count_messages()
    except TransportError as error:
        raise session.report(error) from None
    except (poplib.error_proto, OSError) as error:
        session.close()
        raise session.report(session.classify(error), error) from None
    finally:
        session.close()

    log.info("POP3 %s: the mailbox has %d messages", settings.host, count)
    return ReadResult(message_count=count, folder="INBOX", folders=["INBOX"])


class _POP3(poplib.POP3):
    """poplib's client on a socket from open_connection().

    Unlike poplib.POP3 it closes the socket when the greeting fails, and the
    session records when the client starts to wait for the greeting.
    """

    def __init__(self, host: str, port: int, session: "_Session") -> None:
        self._session = session
        self.sock = None
        self.file = None
        try:
            super().__init__(host, port, session.settings.timeout)
        except BaseException:
            with contextlib.suppress(OSError):
                self.close()
            raise

    def _create_socket(self, timeout: float | None) -> socket.socket:
        self._session.activity = CONNECTING
        connection = open_connection(
            self.host, self.port, self._session.settings.timeout
        )
        self._session.activity = WAITING_FOR_GREETING
        return connection


class _TlsPOP3(_POP3):
    """_POP3 for implicit TLS, where the handshake precedes the greeting."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        session = self._session
        session.activity = CONNECTING
        connection = open_connection(self.host, self.port, session.settings.timeout)
        session.activity = TLS_HANDSHAKE
        # wrap_socket takes over the socket and closes it if the handshake fails.
        tls_socket = session.context.wrap_socket(connection, server_hostname=self.host)
        session.activity = WAITING_FOR_GREETING
        return tls_socket


class _Session:
    """One POP3 connection, and the classification of its failures."""

    def __init__(self, settings: ReadSettings, cafile: str | None) -> None:
        self.settings = settings
        self.activity = CONNECTING
        self.context = tls.create_ssl_context(
            settings.trusted_fingerprint, cafile=cafile
        )
        self._client: _POP3 | None = None

    def count_messages(self) -> int:
        """Connect, secure the connection, sign in and return the STAT count."""
        settings = self.settings
        client_class = _TlsPOP3 if settings.security is Security.SSL else _POP3
        client = client_class(settings.host, settings.port, self)
        self._client = client
        if settings.security is Security.SSL:
            self._check_pinned_certificate()

        capabilities = self._capabilities()
        if settings.security is Security.STARTTLS:
            self._start_tls(capabilities)
            capabilities = self._capabilities()

        self.activity = SIGNING_IN
        self._sign_in(capabilities)
        log.info("signed in to POP3 server %s as %s", settings.host, settings.username)

        self.activity = COUNTING
        count, _ = client.stat()
        return count

    def _capabilities(self) -> dict[str, list[str]] | None:
        """Return the CAPA reply, or None for a server without CAPA (RFC 2449)."""
        try:
            return self._checked_client().capa()
        except poplib.error_proto:
            log.info("%s does not support CAPA", self.settings.host)
            return None

    def _start_tls(self, capabilities: dict[str, list[str]] | None) -> None:
        settings = self.settings
        if capabilities is None or "STLS" not in capabilities:
            # Never fall back to plain text: the account asked for encryption.
            raise TransportError(
                Step.TLS,
                f"STARTTLS is unavailable: {settings.host} port {settings.port} "
                "does not offer STLS.",
                "The portal does not send passwords unencrypted when STARTTLS is "
                f"chosen. Choose SSL/TLS security with port {POP3_PORTS.implicit_tls} "
                "if the server offers it, or ask its administrator to enable STLS.",
            )
        self.activity = STARTING_TLS
        self._checked_client().stls(self.context)
        self._check_pinned_certificate()

    def _sign_in(self, capabilities: dict[str, list[str]] | None) -> None:
        settings = self.settings
        client = self._checked_client()
        # By RFC 2449 a server that lists capabilities without USER does not
        # accept USER and PASS. Servers omit it before TLS when they forbid
        # cleartext passwords on unencrypted connections.
        if capabilities is not None and "USER" not in capabilities:
            if settings.security is Security.NONE:
                raise TransportError(
                    Step.AUTHENTICATION,
                    f"{settings.host} does not offer sign-in on an unencrypted "
                    "connection.",
                    f"Choose STARTTLS security (usually port {POP3_PORTS.starttls}) "
                    f"or SSL/TLS (usually port {POP3_PORTS.implicit_tls}).",
                )
            raise TransportError(
                Step.AUTHENTICATION,
                f"{settings.host} does not offer sign-in with a user name and "
                "password (USER and PASS).",
                "Use IMAP for this mailbox, or ask the mail administrator to enable "
                "USER and PASS for POP3.",
            )

        client.user(settings.username)
        client.pass_(settings.password)

    def _check_pinned_certificate(self) -> None:
        connection = self._checked_client().sock
        tls.check_pinned_certificate(
            tls.peer_certificate(connection)
            if isinstance(connection, ssl.SSLSocket)
            else None,
            self.settings.trusted_fingerprint,
        )

    def _checked_client(self) -> _POP3:
        if self._client is None:
            raise poplib.error_proto("-ERR not connected")
        return self._client

    def close(self) -> None:
        """Send QUIT and close the connection, logging errors instead of raising."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.quit()
        except (poplib.error_proto, OSError) as error:
            log.info(
                "POP3 QUIT to %s failed, closing anyway: %s",
                self.settings.host,
                type(error).__name__,
            )
            try:
                client.close()
            except OSError as close_error:
                log.info("closing the POP3 socket failed: %s", close_error)

    def report(
        self, failure: TransportError, cause: BaseException | None = None
    ) -> TransportError:
        """Strip the password or token from ``failure`` and log it."""
        return reported(log, "POP3", failure, self.settings, cause)

    def classify(self, error: poplib.error_proto | OSError) -> TransportError:
        """Turn a poplib or socket error into the failure shown to the user."""
        settings = self.settings
        host, port = settings.host, settings.port

        failure = tls.tls_failure(
            error, host, port, settings.security, POP3_PORTS, self._fetch_certificate
        )
        if failure is not None:
            return failure

        if isinstance(error, TimeoutError):
            return tls.silence_failure(
                settings,
                POP3_PORTS,
                self.activity,
                waiting_for_greeting=self.activity == WAITING_FOR_GREETING,
            )

        if isinstance(error, OSError):
            if isinstance(error, ConnectionError):
                return self._closed_error()
            return connection_failed(host, port, error)

        text = _server_text(error)
        if text == "-ERR EOF":
            return self._closed_error()
        temporary = any(code in text for code in _TEMPORARY_CODES)
        if self.activity == SIGNING_IN:
            return self._authentication_error(text, temporary)
        return TransportError(
            Step.PROTOCOL,
            f"{host} rejected a command while {self.activity}.",
            "Try again later."
            if temporary
            else "Check the port and security setting. If they are right, ask the "
            "mail administrator what the reply means.",
            reply=text,
            temporary=temporary,
        )

    def _authentication_error(self, text: str, temporary: bool) -> TransportError:
        settings = self.settings
        if "[IN-USE]" in text:
            summary = "Another client is using the mailbox, so the server locked it."
            advice = "Try again later, when the other client has disconnected."
        elif temporary:
            summary = "The server could not check the sign-in right now."
            advice = "Try again later."
        else:
            summary = f"The server rejected the sign-in for {settings.username}."
            advice = (
                "Check the user name and password. Some providers also require "
                "POP3 access to be enabled for the mailbox, or an app password."
            )
        return TransportError(
            Step.AUTHENTICATION, summary, advice, reply=text, temporary=temporary
        )

    def _closed_error(self) -> TransportError:
        return TransportError(
            Step.CONNECT,
            f"{self.settings.host} closed the connection while {self.activity}.",
            "Try again later, and check the port and security setting if it keeps "
            "happening.",
            temporary=True,
        )

    def _fetch_certificate(self) -> bytes | None:
        """Return the server's certificate from a second, unverified handshake.

        For STARTTLS this repeats the greeting and STLS. Returns None if that
        fails, since the certificate is only shown to the user.
        """
        settings = self.settings
        log.info(
            "fetching the certificate of %s port %d without verification",
            settings.host,
            settings.port,
        )
        try:
            if settings.security is Security.SSL:
                return tls.fetch_certificate(
                    settings.host, settings.port, settings.timeout
                )
            client = _POP3(settings.host, settings.port, _Session(settings, None))
            try:
                client.stls(tls.create_unverified_context())
                return tls.peer_certificate(client.sock)
            finally:
                client.close()
        except (TransportError, poplib.error_proto, OSError) as error:
            log.info("could not fetch the certificate: %s", type(error).__name__)
            return None


def _server_text(error: poplib.error_proto) -> str:
    """Return the server's reply from a poplib error, such as "-ERR [AUTH] ..."."""
    text = error.args[0] if error.args else ""
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    return str(text)
