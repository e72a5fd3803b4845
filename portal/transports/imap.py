"""IMAP transport on imapclient: sign in, list the folders, count messages.

Folder names arrive in modified UTF-7 and are returned decoded, such as
"Entwürfe". Every failure raises TransportError with the step that failed and
what to do. Timeouts, lost connections and [UNAVAILABLE] replies are temporary.
"""

import ast
import contextlib
import dataclasses
import imaplib
import logging
import socket
import ssl
from collections.abc import Iterator

import imapclient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from . import tls, xoauth2
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

IMAP_PORTS = tls.WellKnownPorts("IMAP", implicit_tls=993, starttls=143)

# Folders that cannot be opened, per RFC 3501 and RFC 5258.
_UNSELECTABLE = {b"\\Noselect", b"\\NonExistent"}
_FOLDERS_IN_ADVICE = 20

# Microsoft 365 turned off password sign-in for IMAP, and its IMAP replies
# do not say so, unlike its SMTP reply 535 5.7.139.
_MICROSOFT_365_DOMAINS = ("office365.com", "outlook.com")

# Activities of the session, worded to complete "did not respond within N s
# while ...".
CONNECTING = "connecting"
TLS_HANDSHAKE = "performing the TLS handshake"
WAITING_FOR_GREETING = "waiting for the greeting"
STARTING_TLS = "starting TLS"
SIGNING_IN = "signing in"
LISTING_FOLDERS = "listing the folders"
OPENING_FOLDER = "opening the folder"


def check_folder(settings: ReadSettings, *, cafile: str | None = None) -> ReadResult:
    """Sign in, open ``settings.folder`` read-only and count its messages.

    Returns the count with the names of every folder that can be opened,
    INBOX first. ``cafile`` replaces the system's certificate authorities.
    Raises TransportError.
    """
    folder = settings.folder or "INBOX"
    with _Session(settings, cafile).signed_in() as session:
        folders = session.list_folders()
        count = session.count_messages(folder, folders)
    log.info("IMAP %s: folder %r has %d messages", settings.host, folder, count)
    return ReadResult(message_count=count, folder=folder, folders=folders)


def list_folders(settings: ReadSettings, *, cafile: str | None = None) -> list[str]:
    """Sign in and return the names of the folders that can be opened, INBOX first.

    Raises TransportError.
    """
    with _Session(settings, cafile).signed_in() as session:
        return session.list_folders()


class _Imap4(imaplib.IMAP4):
    """imaplib's client on a socket from open_connection().

    open_connection() classifies DNS failures, refusals and connect timeouts,
    and the session records when the client starts to wait for the greeting.
    """

    def __init__(self, host: str, port: int, timeout: float, session: "_Session"):
        self._session = session
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        self._session.activity = CONNECTING
        connection = open_connection(self.host, self.port, self._session.timeout)
        self._session.activity = WAITING_FOR_GREETING
        return connection


class _TlsImap4(_Imap4):
    """_Imap4 for implicit TLS, where the handshake precedes the greeting."""

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        self._session.activity = CONNECTING
        connection = open_connection(self.host, self.port, self._session.timeout)
        self._session.activity = TLS_HANDSHAKE
        # wrap_socket takes over the socket and closes it if the handshake fails.
        tls_socket = self._session.context.wrap_socket(
            connection, server_hostname=self.host
        )
        self._session.activity = WAITING_FOR_GREETING
        return tls_socket


class _IMAPClient(imapclient.IMAPClient):
    """IMAPClient that connects through _Imap4 or _TlsImap4.

    NOTE: overrides IMAPClient._create_IMAP4, a private method of imapclient
    4.1.0. Check it when upgrading imapclient.
    """

    def __init__(self, session: "_Session") -> None:
        self._session = session
        settings = session.settings
        super().__init__(
            settings.host,
            settings.port,
            ssl=settings.security is Security.SSL,
            ssl_context=session.context,
            timeout=settings.timeout,
        )

    def _create_IMAP4(self) -> imaplib.IMAP4:  # noqa: N802 (imapclient's name)
        settings = self._session.settings
        imap_class = _TlsImap4 if self.ssl else _Imap4
        return imap_class(settings.host, settings.port, settings.timeout, self._session)


class _Session:
    """One signed-in IMAP connection, and the classification of its failures."""

    def __init__(self, settings: ReadSettings, cafile: str | None) -> None:
        self.settings = settings
        self.timeout = settings.timeout
        self.activity = CONNECTING
        self._cafile = cafile
        self._client: _IMAPClient | None = None
        self.context: ssl.SSLContext | None = None

    @contextlib.contextmanager
    def signed_in(self) -> Iterator["_Session"]:
        """Connect and sign in, yield the session, then log out.

        Turns every failure inside the block into TransportError.
        """
        settings = self.settings
        log.info(
            "connecting to IMAP server %s port %d with security %s",
            settings.host,
            settings.port,
            settings.security,
        )
        try:
            self._open()
            yield self
        except TransportError as error:
            raise self._report(error) from None
        except (IMAPClientError, OSError) as error:
            self._close()
            raise self._report(self._classify(error), error) from None
        finally:
            self._close()

    def list_folders(self) -> list[str]:
        self.activity = LISTING_FOLDERS
        names = [
            name
            for flags, _, name in self._checked_client().list_folders()
            if not _UNSELECTABLE.intersection(flags)
        ]
        return sorted(
            names, key=lambda name: (name.upper() != "INBOX", name.casefold())
        )

    def count_messages(self, folder: str, folders: list[str]) -> int:
        """Open ``folder`` read-only and return its message count."""
        self.activity = OPENING_FOLDER
        try:
            response = self._checked_client().select_folder(folder, readonly=True)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as error:
            raise self._folder_error(folder, folders, _server_text(error)) from None
        return int(response[b"EXISTS"])

    def _open(self) -> None:
        settings = self.settings
        self.context = tls.create_ssl_context(
            settings.trusted_fingerprint, cafile=self._cafile
        )
        client = _IMAPClient(self)
        self._client = client
        if settings.security is Security.SSL:
            self._check_pinned_certificate()

        if settings.security is Security.STARTTLS:
            if not client.has_capability("STARTTLS"):
                # Never fall back to plain text: the account asked for encryption.
                raise TransportError(
                    Step.TLS,
                    f"STARTTLS is unavailable: {settings.host} port {settings.port} "
                    "does not offer it.",
                    "The portal does not send passwords unencrypted when STARTTLS "
                    "is chosen. Choose SSL/TLS security with port "
                    f"{IMAP_PORTS.implicit_tls} if the server offers it, or ask its "
                    "administrator to enable STARTTLS.",
                )
            self.activity = STARTING_TLS
            client.starttls(self.context)
            self._check_pinned_certificate()

        self.activity = SIGNING_IN
        self._sign_in(client)
        log.info("signed in to IMAP server %s as %s", settings.host, settings.username)

    def _sign_in(self, client: _IMAPClient) -> None:
        """Sign in with LOGIN, or with AUTHENTICATE PLAIN where LOGIN cannot work.

        LOGIN sends its arguments as ASCII, so a non-ASCII user name or password
        needs AUTHENTICATE PLAIN, which carries UTF-8 (RFC 4616).
        """
        settings = self.settings
        capabilities = client.capabilities()
        if settings.oauth_token:
            self._sign_in_with_token(client, capabilities)
            return
        login_allowed = b"LOGINDISABLED" not in capabilities
        ascii_credentials = settings.username.isascii() and settings.password.isascii()

        if login_allowed and ascii_credentials:
            client.login(settings.username, settings.password)
        elif b"AUTH=PLAIN" in capabilities:
            client.plain_login(settings.username, settings.password)
        elif not login_allowed and settings.security is Security.NONE:
            raise TransportError(
                Step.AUTHENTICATION,
                f"{settings.host} does not offer sign-in on an unencrypted connection.",
                f"Choose STARTTLS security (usually port {IMAP_PORTS.starttls}) "
                f"or SSL/TLS (usually port {IMAP_PORTS.implicit_tls}).",
            )
        else:
            raise TransportError(
                Step.AUTHENTICATION,
                f"{settings.host} offers no sign-in method for this user name and "
                "password.",
                "A user name or password with non-ASCII characters needs a server "
                "that offers AUTH=PLAIN. Use an ASCII password, or ask the mail "
                "administrator to enable AUTH=PLAIN.",
            )

    def _sign_in_with_token(self, client: _IMAPClient, capabilities) -> None:
        """Sign in with AUTHENTICATE XOAUTH2.

        IMAPClient's oauth2_login replies to the error challenge of a rejected
        token with the token again instead of the empty line, so the exchange
        goes through imaplib's authenticate with a callable that does both.
        A rejected token is replaced once through ``oauth_refresh``.
        NOTE: uses IMAPClient._imap, the imaplib connection inside the client.
        """
        settings = self.settings
        if b"AUTH=XOAUTH2" not in capabilities:
            raise xoauth2.not_offered(settings.host, settings.port, "IMAP")
        refresh = settings.oauth_refresh
        while True:
            failure = self._try_token(client)
            if failure is None:
                return
            if failure.temporary or refresh is None:
                raise failure
            log.info(
                "%s rejected the access token of %s; fetching a new one",
                settings.host,
                settings.username,
            )
            token = refresh()
            refresh = None
            self.settings = settings = dataclasses.replace(settings, oauth_token=token)

    def _try_token(self, client: _IMAPClient) -> TransportError | None:
        """Send AUTHENTICATE XOAUTH2 once; return None on success, else the failure."""
        settings = self.settings
        exchange = xoauth2.ImapExchange(settings.username, settings.oauth_token)
        try:
            client._imap.authenticate(xoauth2.MECHANISM, exchange)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as error:
            text = str(error)
            return xoauth2.token_rejected(
                settings.host,
                settings.username,
                exchange.challenge or {},
                reply=text,
                temporary="[UNAVAILABLE]" in text,
            )
        return None

    def _check_pinned_certificate(self) -> None:
        tls_socket = self._checked_client().socket()
        tls.check_pinned_certificate(
            tls.peer_certificate(tls_socket)
            if isinstance(tls_socket, ssl.SSLSocket)
            else None,
            self.settings.trusted_fingerprint,
        )

    def _checked_client(self) -> _IMAPClient:
        if self._client is None:
            raise IMAPClientAbortError("not connected")
        return self._client

    def _close(self) -> None:
        """Log out and close the connection, logging errors instead of raising."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except (IMAPClientError, OSError) as error:
            log.info(
                "IMAP logout from %s failed, closing anyway: %s",
                self.settings.host,
                type(error).__name__,
            )
            with contextlib.suppress(OSError):
                client.shutdown()

    def _report(
        self, failure: TransportError, cause: BaseException | None = None
    ) -> TransportError:
        """Strip the password or token from ``failure`` and log it."""
        return reported(log, "IMAP", failure, self.settings, cause)

    def _classify(self, error: IMAPClientError | OSError) -> TransportError:
        """Turn an imapclient or socket error into the failure shown to the user."""
        settings = self.settings
        host, port = settings.host, settings.port

        failure = tls.tls_failure(
            error, host, port, settings.security, IMAP_PORTS, self._fetch_certificate
        )
        if failure is not None:
            return failure

        if isinstance(error, TimeoutError):
            return tls.silence_failure(
                settings,
                IMAP_PORTS,
                self.activity,
                waiting_for_greeting=self.activity == WAITING_FOR_GREETING,
            )

        if isinstance(error, LoginError):
            return self._authentication_error(_server_text(error))
        if isinstance(error, IMAPClientAbortError | ConnectionError):
            return TransportError(
                Step.CONNECT,
                f"{host} closed the connection while {self.activity}.",
                "Try again later, and check the port and security setting if it "
                "keeps happening.",
                temporary=True,
            )
        if isinstance(error, IMAPClientError):
            text = _server_text(error)
            temporary = "[UNAVAILABLE]" in text
            return TransportError(
                Step.PROTOCOL,
                f"{host} rejected a command while {self.activity}.",
                "Try again later."
                if temporary
                else "Check the port and security setting. If they are right, ask "
                "the mail administrator what the reply means.",
                reply=text,
                temporary=temporary,
            )
        return connection_failed(host, port, error)

    def _authentication_error(self, text: str) -> TransportError:
        settings = self.settings
        host = settings.host.lower()
        temporary = "[UNAVAILABLE]" in text
        if temporary:
            summary = "The server could not check the sign-in right now."
            advice = "Try again later."
        elif "application-specific password" in text.lower():
            summary = "Google requires an app password for this account."
            advice = (
                "Create an app password in the Google account's security settings "
                "and enter it instead of the account password, or use the Google "
                "account type, which signs in with OAuth."
            )
        elif any(
            host == domain or host.endswith("." + domain)
            for domain in _MICROSOFT_365_DOMAINS
        ):
            summary = f"Microsoft 365 rejected the sign-in for {settings.username}."
            advice = (
                "Microsoft 365 no longer accepts passwords over IMAP. Convert this "
                "account to a Microsoft 365 account, which signs in with OAuth."
            )
        else:
            summary = f"The server rejected the sign-in for {settings.username}."
            advice = (
                "Check the user name and password. Some providers also require "
                "IMAP access to be enabled for the mailbox, or an app password."
            )
        return TransportError(
            Step.AUTHENTICATION, summary, advice, reply=text, temporary=temporary
        )

    def _folder_error(
        self, folder: str, folders: list[str], text: str
    ) -> TransportError:
        known = any(
            name == folder or (name.upper() == "INBOX" and folder.upper() == "INBOX")
            for name in folders
        )
        shown = ", ".join(folders[:_FOLDERS_IN_ADVICE])
        if len(folders) > _FOLDERS_IN_ADVICE:
            shown += f" and {len(folders) - _FOLDERS_IN_ADVICE} more"
        if known:
            summary = (
                f'The folder "{folder}" could not be opened on {self.settings.host}.'
            )
            advice = (
                "The server's reply gives the reason. Check that this login may read "
                f"the folder, or choose another one: {shown}."
            )
        else:
            summary = f'The folder "{folder}" was not found on {self.settings.host}.'
            advice = f"Choose one of the server's folders: {shown}."
        return TransportError(
            Step.FOLDER,
            summary,
            advice,
            reply=text,
            temporary="[UNAVAILABLE]" in text,
        )

    def _fetch_certificate(self) -> bytes | None:
        """Return the server's certificate from a second, unverified handshake.

        For STARTTLS this repeats the greeting and STARTTLS. Returns None if
        that fails, since the certificate is only shown to the user.
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
            connection = imaplib.IMAP4(settings.host, settings.port, settings.timeout)
            try:
                connection.starttls(tls.create_unverified_context())
                return tls.peer_certificate(connection.sock)
            finally:
                connection.shutdown()
        except (imaplib.IMAP4.error, OSError) as error:
            log.info("could not fetch the certificate: %s", type(error).__name__)
            return None


def _server_text(error: IMAPClientError) -> str:
    """Return the server's words from an imapclient error.

    imapclient formats failed commands as "<command> failed: <server text>",
    and a failed LOGIN as the repr of imaplib's bytes, such as "b'[...] ...'".
    """
    text = str(error)
    _, separator, server_text = text.partition(" failed: ")
    if separator:
        text = server_text
    if text[:2] in ("b'", 'b"'):
        with contextlib.suppress(ValueError, SyntaxError):
            text = ast.literal_eval(text).decode("utf-8", errors="replace")
    return text
