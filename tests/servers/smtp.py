"""SMTP servers for the transport tests, built on aiosmtpd 1.4.6.

Each server runs in its own thread on 127.0.0.1 with a free port. The handler
records what arrives and can reject MAIL, RCPT or DATA with a fixed reply, so
that a test can simulate any server failure.
"""

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.servers.certs import CertificateFiles
from tests.servers.ports import free_port

SMTP_USERNAME = "agent@portal.test"
SMTP_PASSWORD = "Gëheim-passwört-ß€"  # non-ASCII on purpose: sent as UTF-8

TlsMode = Literal["none", "starttls", "implicit"]


@dataclass
class ReceivedMessage:
    """One message as the server received it."""

    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    content: bytes
    smtputf8: bool
    encrypted: bool
    login: str | None  # the signed-in user name, or None


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that records messages and can reject commands.

    ``mail_reply`` is the reply to every MAIL FROM, ``rcpt_replies`` maps RCPT
    TO addresses to replies, and ``data_reply`` is the reply at the end of
    DATA. None accepts the command.
    """

    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    messages: list[ReceivedMessage] = field(default_factory=list)

    async def handle_MAIL(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                mail_options=list(envelope.mail_options),
                content=bytes(envelope.original_content or b""),
                smtputf8=envelope.smtp_utf8,
                # session.ssl covers STARTTLS only, so ask the transport.
                encrypted=server.transport.get_extra_info("sslcontext") is not None,
                login=session.auth_data,
            )
        )
        return f"250 2.0.0 Ok: queued as TEST{len(self.messages)}"


@dataclass
class Authenticator:
    """An aiosmtpd authenticator for PLAIN and LOGIN.

    ``users`` maps user names to passwords. A user name in ``failures`` gets
    that reply instead, whatever the password, to simulate provider errors such
    as Microsoft 365's 535 5.7.139.
    """

    users: dict[str, str] = field(
        default_factory=lambda: {SMTP_USERNAME: SMTP_PASSWORD}
    )
    failures: dict[str, str] = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)  # user names only

    def __call__(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)

        login = auth_data.login.decode("utf-8")
        password = auth_data.password.decode("utf-8")
        self.attempts.append(login)
        if login in self.failures:
            return AuthResult(
                success=False, handled=False, message=self.failures[login]
            )
        if self.users.get(login) == password:
            return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)


class LoopbackController(Controller):
    """An aiosmtpd Controller on 127.0.0.1 that lets the kernel pick the port."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=0, **kwargs)

    def _trigger_server(self) -> None:
        # The server is bound by now, so its real port is known.
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class SmtpServer:
    """A running test SMTP server and what it records."""

    host: str
    port: int
    handler: RecordingHandler
    authenticator: Authenticator | None
    controller: LoopbackController

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.handler.messages

    def stop(self) -> None:
        self.controller.stop()


def start_smtp_server(
    *,
    tls: TlsMode = "none",
    certificate: CertificateFiles | None = None,
    handler: RecordingHandler | None = None,
    authenticator: Authenticator | None = None,
    **smtp_options: Any,
) -> SmtpServer:
    """Start an aiosmtpd server; ``smtp_options`` go to aiosmtpd.smtp.SMTP.

    ``tls`` "starttls" offers STARTTLS and "implicit" wraps the listening
    socket in TLS; both need ``certificate``.
    """
    handler = handler or RecordingHandler()
    options: dict[str, Any] = {"server_hostname": "localhost", **smtp_options}
    if authenticator is not None:
        options["authenticator"] = authenticator
    if tls != "none":
        if certificate is None:
            raise ValueError(f"tls={tls!r} needs a certificate")
        context = certificate.server_context()
        if tls == "starttls":
            options["tls_context"] = context
        else:
            options["ssl_context"] = context

    controller = LoopbackController(handler, **options)
    controller.start()
    return SmtpServer(
        host="127.0.0.1",
        port=controller.port,
        handler=handler,
        authenticator=authenticator,
        controller=controller,
    )


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """Yield a port that accepts TCP connections and never sends a byte.

    The kernel completes connections into the listen backlog, and nothing
    ever accepts them.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """Yield a port whose TCP handshake never completes.

    Linux drops a SYN when the listener's accept queue is full, so the client
    waits for its connect timeout. On Linux the queue of ``listen(0)`` has room
    for one connection, and the first client here fills it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            yield port


def closed_port() -> int:
    """Return a port on 127.0.0.1 that refuses connections."""
    return free_port()
