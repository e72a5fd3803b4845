"""SMTP servers for the transport tests, built on aiosmtpd 1.4.6.

Each server runs in its own thread on 127.0.0.1 with a free port. The handler
records what arrives and can reject MAIL, RCPT or DATA with a fixed reply, so
that a test can simulate any server failure.

A server started with a ``token_check`` also offers SASL XOAUTH2 as Gmail and
Exchange Online do: a rejected token gets a 334 challenge carrying a JSON
error, and after the client's empty reply the final 535.
"""

import base64
import binascii
import collections
import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, Envelope, LoginPassword, Session
from aiosmtpd.smtp import SMTP as SMTPServer

from tests.fakes.google import GMAIL_FULL, FakeGoogle
from tests.fakes.microsoft import OUTLOOK_RESOURCE, MicrosoftFake
from tests.servers.certs import CertificateFiles
from tests.servers.ports import free_port

SMTP_USERNAME = "agent@portal.test"
SMTP_PASSWORD = "Gëheim-passwört-ß€"  # non-ASCII on purpose: sent as UTF-8

TlsMode = Literal["none", "starttls", "implicit"]

# An XOAUTH2 sign-in check. It takes the user name and the access token and
# returns None to accept them, or else the scope to name in the error challenge.
TokenCheck = Callable[[str, str], str | None]

# The scope Exchange Online needs for SMTP sign-in.
OUTLOOK_SMTP_SCOPE = f"{OUTLOOK_RESOURCE}/SMTP.Send"
XOAUTH2_ACCEPTED = "235 2.7.0 Accepted"
# Shaped like Gmail's reply, worded for these tests.
XOAUTH2_REJECTED = "535 5.7.8 Username and access token not accepted."
XOAUTH2_MALFORMED = "501 5.5.2 Cannot parse the XOAUTH2 client response"
# RFC 4954, section 4, calls 12288 octets a sufficient line length for SASL
# exchanges. smtplib sends the XOAUTH2 response on the AUTH line itself, and a
# Microsoft token alone is longer than the 512 octets of RFC 5321.
AUTH_LINE_LIMIT = 12288


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


def xoauth2_client_response(user: str, token: str) -> str:
    """Build the XOAUTH2 client response before base64 encoding.

    smtplib and imaplib encode what an auth callback returns, so tests pass
    this string unencoded.
    """
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def parse_xoauth2(response: bytes) -> tuple[str, str] | None:
    """Return the user and token of a decoded XOAUTH2 client response.

    Returns None when the response is not ``user=…^Aauth=Bearer …^A^A``.
    """
    try:
        text = response.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\x01\x01"):
        return None
    fields = {}
    for item in text[:-2].split("\x01"):
        name, found, value = item.partition("=")
        if not found:
            return None
        fields[name] = value
    user = fields.get("user", "")
    scheme, _, token = fields.get("auth", "").partition(" ")
    if not user or scheme.lower() != "bearer" or not token:
        return None
    return user, token


def xoauth2_challenge(scope: str) -> str:
    """Return the JSON of the challenge that rejects a token, as Gmail sends it."""
    body = {"status": "400", "schemes": "Bearer", "scope": scope}
    return json.dumps(body, separators=(",", ":"))


class XOAuth2Server(SMTPServer):
    """An aiosmtpd SMTP server that also offers AUTH XOAUTH2.

    aiosmtpd offers a mechanism for every ``auth_<NAME>`` method of the server
    or of its handler. Defining it here keeps the handler replaceable.
    """

    # aiosmtpd sizes its stream reader's buffer, and so the longest line it
    # can read, from this attribute when the server is created.
    line_length_limit = AUTH_LINE_LIMIT

    def __init__(self, handler: Any, *, token_check: TokenCheck, **kwargs: Any):
        self.token_check = token_check
        super().__init__(handler, **kwargs)
        # DATA lines keep the limit of RFC 5321.
        self.line_length_limit = SMTPServer.line_length_limit
        # aiosmtpd keeps command_size_limits in one dict for all servers, so
        # this server gets its own, with room for an AUTH line with a token.
        self.command_size_limits = collections.defaultdict(
            lambda: self.command_size_limit, {"AUTH": AUTH_LINE_LIMIT}
        )

    async def auth_XOAUTH2(  # noqa: N802 (aiosmtpd finds mechanisms by this name)
        self, server: SMTPServer, args: list[str]
    ) -> AuthResult:
        if len(args) == 1:
            # Without an initial response, an empty challenge requests it.
            response = await self.challenge_auth("")
            if response is MISSING:
                # challenge_auth has sent the 501 already.
                return AuthResult(success=False, handled=True)
        else:
            try:
                response = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)

        parsed = parse_xoauth2(response)
        if parsed is None:
            # handled=False makes aiosmtpd send the message, which it
            # otherwise assumes the mechanism has sent.
            return AuthResult(success=False, handled=False, message=XOAUTH2_MALFORMED)
        user, token = parsed
        required_scope = self.token_check(user, token)
        if required_scope is None:
            return AuthResult(success=True, auth_data=user, message=XOAUTH2_ACCEPTED)

        # The client responds to the error challenge with an empty line, and
        # only then gets the final failure.
        reply = await self.challenge_auth(xoauth2_challenge(required_scope))
        if reply is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=XOAUTH2_REJECTED)


def google_token_check(google: FakeGoogle) -> TokenCheck:
    """Check tokens as Gmail does, against ``google``.

    A token is accepted when ``google`` issued it, it has not expired, it has
    the https://mail.google.com/ scope and its subject is the user signing in.
    """

    def check(user: str, token: str) -> str | None:
        record = google.check_access_token(token)
        if record is None or GMAIL_FULL not in record.scopes:
            return GMAIL_FULL
        if record.subject.lower() != user.lower():
            return GMAIL_FULL
        return None

    return check


def microsoft_token_check(microsoft: MicrosoftFake) -> TokenCheck:
    """Check tokens as Exchange Online's SMTP sign-in does, against ``microsoft``.

    A token is accepted when ``microsoft`` signed it, it has not expired, its
    audience is https://outlook.office.com, its scp names SMTP.Send and its
    upn is the user signing in.
    """

    def check(user: str, token: str) -> str | None:
        claims = microsoft.check_access_token(token)
        if claims is None or claims.get("aud") != OUTLOOK_RESOURCE:
            return OUTLOOK_SMTP_SCOPE
        if "SMTP.Send" not in str(claims.get("scp", "")).split():
            return OUTLOOK_SMTP_SCOPE
        if str(claims.get("upn", "")).lower() != user.lower():
            return OUTLOOK_SMTP_SCOPE
        return None

    return check


class LoopbackController(Controller):
    """An aiosmtpd Controller on 127.0.0.1 that lets the kernel pick the port.

    Each connection gets an ``smtp_class`` server, built with the remaining
    keyword arguments.
    """

    def __init__(
        self,
        handler: Any,
        *,
        smtp_class: type[SMTPServer] = SMTPServer,
        **kwargs: Any,
    ) -> None:
        self.smtp_class = smtp_class
        super().__init__(handler, hostname="127.0.0.1", port=0, **kwargs)

    def factory(self) -> SMTPServer:
        return self.smtp_class(self.handler, **self.SMTP_kwargs)

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
    token_check: TokenCheck | None = None,
    **smtp_options: Any,
) -> SmtpServer:
    """Start an aiosmtpd server; ``smtp_options`` go to aiosmtpd.smtp.SMTP.

    ``tls`` "starttls" offers STARTTLS and "implicit" wraps the listening
    socket in TLS; both need ``certificate``.

    ``token_check`` adds AUTH XOAUTH2, which accepts a token when the check
    returns None (see ``google_token_check`` and ``microsoft_token_check``).
    Without an ``authenticator`` such a server offers XOAUTH2 alone, and with
    one it offers PLAIN and LOGIN too. Like every mechanism, XOAUTH2 is offered
    only after STARTTLS unless ``auth_require_tls=False`` is passed, because
    aiosmtpd 1.4.6 does not count implicit TLS as TLS here.
    """
    handler = handler or RecordingHandler()
    options: dict[str, Any] = {"server_hostname": "localhost", **smtp_options}
    if authenticator is not None:
        options["authenticator"] = authenticator
    if token_check is not None:
        options["smtp_class"] = XOAuth2Server
        options["token_check"] = token_check
        if authenticator is None:
            options.setdefault("auth_exclude_mechanism", ["PLAIN", "LOGIN"])
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
