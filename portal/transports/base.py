"""Types shared by every transport: settings, results and failures."""

import base64
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

log = logging.getLogger(__name__)


class Security(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    SSL = "ssl"  # implicit TLS from the first byte


class Step(StrEnum):
    """The step of a mail conversation that failed, as shown to the user."""

    DNS = "DNS"
    CONNECT = "connect"
    TLS = "TLS"
    AUTHENTICATION = "authentication"
    SENDER = "sender"
    RECIPIENT = "recipient"
    MESSAGE = "message"
    FOLDER = "folder"
    TIMEOUT = "timeout"
    PROTOCOL = "protocol"


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    issuer: str
    sha256: str  # upper-case hex pairs separated by colons
    not_after: str = ""  # expiry in ISO 8601, such as "2026-05-01T12:00:00+00:00"
    # DNS names and IP addresses from the subject alternative name extension.
    alt_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerEndpoint:
    """The server address and security settings shared by SMTP and read settings."""

    host: str  # ASCII (IDNA) form
    port: int
    security: Security
    username: str = ""
    password: str = field(default="", repr=False)
    # SHA-256 fingerprint of a self-signed certificate to trust instead of
    # the system's certificate authorities; empty means normal verification.
    trusted_fingerprint: str = ""
    timeout: float = 15.0
    # An OAuth2 access token: when set, sign-in uses SASL XOAUTH2 with
    # ``username`` and this token instead of the password.
    oauth_token: str = field(default="", repr=False)
    # Returns a new access token, for one more try after the server rejects
    # ``oauth_token`` (a cached token can be revoked before it expires).
    # It blocks, so async code calls it in a thread.
    oauth_refresh: Callable[[], str] | None = field(
        default=None, repr=False, compare=False
    )


@dataclass(frozen=True)
class SmtpSettings(ServerEndpoint):
    use_auth: bool = False


@dataclass(frozen=True)
class ReadSettings(ServerEndpoint):
    protocol: str = "imap"  # "imap" or "pop3"
    folder: str = "INBOX"


@dataclass(frozen=True)
class SendResult:
    reply: str  # the server's final reply, such as "250 2.0.0 Ok: queued"
    # Recipients that the server rejected while it accepted the others, each
    # with the server's reply. A message rejected for every recipient raises.
    refused_recipients: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadResult:
    message_count: int
    folder: str = ""
    folders: list[str] = field(default_factory=list)


class TransportError(Exception):
    """A mail operation failed at a named step.

    ``summary`` says what failed, ``advice`` what to do next; ``reply`` is the
    server's own words when it sent any. None of them may contain a secret.
    ``temporary`` marks failures worth retrying later (4xx, timeouts,
    connection errors).
    """

    def __init__(
        self,
        step: Step,
        summary: str,
        advice: str = "",
        *,
        reply: str = "",
        temporary: bool = False,
        certificate: CertificateInfo | None = None,
        sign_in_again: bool = False,
    ) -> None:
        super().__init__(summary)
        self.step = step
        self.summary = summary
        self.advice = advice
        self.reply = reply
        self.temporary = temporary
        self.certificate = certificate
        # True when signing in to the identity provider again is the fix,
        # because the stored OAuth2 grant was revoked or lacks a permission.
        self.sign_in_again = sign_in_again


def xoauth2_string(username: str, token: str) -> bytes:
    """Return the SASL XOAUTH2 initial response, before base64 encoding."""
    return f"user={username}\x01auth=Bearer {token}\x01\x01".encode()


# Secrets at least this long are also looked for across reply lines; a
# shorter one would match ordinary text by chance.
_SPLIT_ECHO_MIN = 12


def hide_secret(error: TransportError, settings: ServerEndpoint) -> TransportError:
    """Return ``error`` with every trace of the password or token replaced by asterisks.

    A server may echo what it received, so this also removes the base64 forms
    that AUTH PLAIN, AUTH LOGIN and AUTH XOAUTH2 send. A text that still
    contains a long secret once its line breaks and spaces are removed (an
    echo split over several reply lines) is replaced as a whole.
    """
    username, password, token = (
        settings.username,
        settings.password,
        settings.oauth_token,
    )
    forms = []
    if password:
        plain = f"\0{username}\0{password}".encode()
        forms += [
            password,
            base64.b64encode(password.encode()).decode("ascii"),
            base64.b64encode(plain).decode("ascii"),
        ]
    if token:
        forms += [
            token,
            base64.b64encode(xoauth2_string(username, token)).decode("ascii"),
        ]
    if not forms:
        return error

    def scrub(text: str) -> str:
        for form in forms:
            text = text.replace(form, "********")
        joined = "".join(text.split())
        if any(len(form) >= _SPLIT_ECHO_MIN and form in joined for form in forms):
            return "(not shown: it repeated the password or token)"
        return text

    return TransportError(
        error.step,
        scrub(error.summary),
        scrub(error.advice),
        reply=scrub(error.reply),
        temporary=error.temporary,
        certificate=error.certificate,
        sign_in_again=error.sign_in_again,
    )


def reported(
    logger: logging.Logger,
    protocol: str,
    failure: TransportError,
    settings: ServerEndpoint,
    cause: BaseException | None = None,
) -> TransportError:
    """Return ``failure`` without the password or token, after logging it once."""
    failure = hide_secret(failure, settings)
    logger.warning(
        "%s %s port %d failed at step %s: %s%s",
        protocol,
        settings.host,
        settings.port,
        failure.step,
        failure.summary,
        f" ({type(cause).__name__})" if cause else "",
    )
    return failure


def host_not_found(host: str, error: socket.gaierror) -> TransportError:
    """Return the failure for a host name that DNS cannot resolve."""
    # EAI_AGAIN is a temporary DNS failure, so a retry may succeed.
    temporary = error.errno == socket.EAI_AGAIN
    if temporary:
        advice = "The DNS server did not answer. Try again later."
    else:
        advice = (
            "Check the server name for typing errors. If it is right, ask your "
            "network administrator why this portal's DNS server cannot resolve it."
        )
    return TransportError(
        Step.DNS,
        f"The host name {host} was not found.",
        advice,
        temporary=temporary,
    )


def connection_failed(host: str, port: int, error: OSError) -> TransportError:
    """Return the failure for a TCP connection that was refused or failed."""
    if isinstance(error, ConnectionRefusedError):
        summary = f"{host} refused the connection on port {port}."
        advice = (
            "Check the port number. If it is right, the mail server is not "
            "running or a firewall rejects connections from this portal."
        )
    else:
        reason = error.strerror or str(error) or type(error).__name__
        summary = f"The connection to {host} port {port} failed: {reason}."
        advice = (
            "Check the host name and port, and that this portal's network can "
            "reach the server."
        )
    return TransportError(Step.CONNECT, summary, advice, temporary=True)


def timed_out(host: str, port: int, seconds: float, activity: str) -> TransportError:
    """Return the failure for a server that went silent.

    ``activity`` completes the sentence "... did not respond within N s
    while ...", for example "waiting for the greeting".
    """
    return TransportError(
        Step.TIMEOUT,
        f"{host} port {port} did not respond within {seconds:g} s while {activity}.",
        "Check the host name, port and security setting, because a firewall or "
        "the wrong port can leave the connection silent. If the server is only "
        "slow, try again later.",
        temporary=True,
    )


def open_connection(host: str, port: int, timeout: float) -> socket.socket:
    """Resolve ``host`` and return a blocking TCP socket connected to ``port``.

    Tries each address that DNS returns, with ``timeout`` seconds for each
    connection attempt; the returned socket keeps that timeout. Raises
    TransportError at step DNS, CONNECT or TIMEOUT. The DNS lookup itself is
    bounded only by the system resolver's own timeouts.
    """
    from . import destinations  # it imports this module for TransportError

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise host_not_found(host, error) from None

    last_error: OSError | None = None
    for family, kind, protocol, _, address in addresses:
        # Checked here and connected to right below: the same address.
        destinations.check(host, port, address[0])
        connection = socket.socket(family, kind, protocol)
        connection.settimeout(timeout)
        try:
            connection.connect(address)
        except OSError as error:
            connection.close()
            log.info("connecting to %s port %d failed: %s", address[0], port, error)
            last_error = error
            continue
        return connection

    if last_error is None or isinstance(last_error, TimeoutError):
        raise timed_out(host, port, timeout, "connecting")
    raise connection_failed(host, port, last_error)
