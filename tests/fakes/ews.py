"""A fake on-premises Exchange server: EWS and SOAP Autodiscover over HTTPS.

It listens on 127.0.0.1 with a certificate from tests.servers.certs, accepts
HTTP Basic authentication (and NTLM through pyspnego's acceptor), and answers
the operations the portal sends through exchangelib: Autodiscover
GetUserSettings, GetFolder (which carries the inbox's TotalCount), CreateItem
and the ConvertId request exchangelib uses to learn the server version.
Responses follow the published EWS schema (see tests.fakes.ews_soap).

Tests change its behaviour through its attributes: mailboxes and their rights,
Autodiscover answers per host and path, and queued failures per operation. A
second listener speaks plain HTTP, so tests can check that nothing with
credentials ever reaches it.

    with FakeExchange(certificates.server) as exchange:
        exchange.add_mailbox("alice@example.com", "EXAMPLE\\\\alice", "secret")
        ...
"""

import base64
import email
import email.policy
import http.server
import os
import ssl
import tempfile
import threading
import xml.etree.ElementTree as ElementTree  # noqa: S405 (parses the tests' own requests)
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.fakes import ews_soap as soap
from tests.servers.certs import CertificateFiles

# Seconds a connection may stay idle before the fake drops it, so that a stuck
# client cannot hang the test run.
IDLE_TIMEOUT = 10.0

AUTODISCOVER_PATH = "/autodiscover/autodiscover.svc"
EWS_PATH = "/EWS/Exchange.asmx"

SEND_AS_DENIED = (
    "The user account which was used to submit this request does not have the "
    "right to send mail on behalf of the specified sending account., Cannot "
    "submit message."
)
NO_MAILBOX = "The SMTP address has no mailbox associated with it."
ACCESS_DENIED = "Access is denied. Check credentials and try again."
BUSY = "The server cannot service this request right now. Try again later."


@dataclass
class Mailbox:
    address: str
    password: str
    # User names that sign in to this mailbox: DOMAIN\user, a UPN or both.
    usernames: tuple[str, ...]
    inbox_count: int = 3
    unread_count: int = 1
    send_as: set[str] = field(default_factory=set)
    send_on_behalf: set[str] = field(default_factory=set)
    # Other mailboxes whose folders this mailbox's user may open.
    full_access: set[str] = field(default_factory=set)


@dataclass
class SentMessage:
    """A message that CreateItem accepted, as the fake understood it."""

    mailbox: str  # the signed-in mailbox that sent it
    from_element: str | None  # EmailAddress of the request's <t:From>, if any
    disposition: str  # MessageDisposition: SendOnly, SendAndSaveCopy, SaveOnly
    mime: email.message.EmailMessage
    # "self", "send-as" or "on-behalf": how Exchange would show the sender.
    sent_as: str


@dataclass
class Received:
    """One HTTP request, with the Authorization scheme but never its value."""

    scheme: str  # "https" or "http"
    method: str
    host: str
    path: str
    operation: str
    authorization_scheme: str  # "Basic", "NTLM" or ""
    user: str  # the user name that signed in, or ""


# -- scripted answers -----------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Autodiscover returns the user's settings; the EWS URLs default to the fake."""

    internal_ews_url: str | None = None
    external_ews_url: str | None = None


@dataclass(frozen=True)
class RedirectUrl:
    url: str


@dataclass(frozen=True)
class RedirectAddress:
    address: str


@dataclass(frozen=True)
class HttpRedirect:
    location: str
    status: int = 302


@dataclass(frozen=True)
class Status:
    """A bare HTTP status, such as 404 from a web server that is not Exchange."""

    code: int
    retry_after: int | None = None
    body: bytes = b""


@dataclass(frozen=True)
class Busy:
    """EWS throttling: a SOAP fault ErrorServerBusy with BackOffMilliseconds."""

    back_off_ms: int = 50


@dataclass(frozen=True)
class ResponseError:
    """An error ResponseMessage for the operation, such as ErrorQuotaExceeded."""

    code: str
    text: str


@dataclass(frozen=True)
class Silence:
    """No answer for ``seconds``, to make the client time out."""

    seconds: float


Answer = Settings | RedirectUrl | RedirectAddress | HttpRedirect | Status
Failure = Busy | ResponseError | Status | Silence


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    for child in element.iter():
        if _local(child.tag) == name:
            return child
    return None


class FakeExchange:
    """The fake server; use it as a context manager, or call start() and stop()."""

    def __init__(
        self,
        certificate: CertificateFiles,
        *,
        offered: tuple[str, ...] = ("NTLM", "Basic"),
    ) -> None:
        self.certificate = certificate
        # Authentication schemes in WWW-Authenticate, and the ones accepted;
        # ews_offered, when set, replaces them on the EWS endpoint only.
        self.offered = offered
        self.ews_offered: tuple[str, ...] | None = None
        self.mailboxes: dict[str, Mailbox] = {}
        # Autodiscover answers by (host, path); anything else gets Settings.
        self.autodiscover: dict[tuple[str, str], Answer] = {}
        # Answers of the plain-HTTP listener by path.
        self.http_answers: dict[str, Answer] = {}
        self.failures: dict[str, list[Failure]] = {}
        self.sent: list[SentMessage] = []
        self.received: list[Received] = []
        self._stopping = threading.Event()
        self._servers: list[http.server.ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._user_file: str | None = None
        self._previous_user_file: str | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> "FakeExchange":
        context = self.certificate.server_context()
        self._tls = _Server(("127.0.0.1", 0), _Handler, self, "https", context)
        self._http = _Server(("127.0.0.1", 0), _Handler, self, "http", None)
        for server in (self._tls, self._http):
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self._write_user_file()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        if self._user_file:
            os.unlink(self._user_file)
            if self._previous_user_file is None:
                os.environ.pop("NTLM_USER_FILE", None)
            else:
                os.environ["NTLM_USER_FILE"] = self._previous_user_file

    def __enter__(self) -> "FakeExchange":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._tls.server_address[1]

    @property
    def http_port(self) -> int:
        return self._http.server_address[1]

    def url(self, path: str = "", host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    @property
    def ews_url(self) -> str:
        return self.url(EWS_PATH)

    @property
    def autodiscover_url(self) -> str:
        return self.url(AUTODISCOVER_PATH)

    def http_url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    # -- configuration --------------------------------------------------------------

    def add_mailbox(
        self, address: str, username: str, password: str, **options
    ) -> Mailbox:
        usernames = (username,) if isinstance(username, str) else tuple(username)
        mailbox = Mailbox(address.lower(), password, usernames, **options)
        self.mailboxes[mailbox.address] = mailbox
        self._write_user_file()
        return mailbox

    def fail(self, operation: str, *failures: Failure) -> None:
        """Answer the next requests of ``operation`` ("*" for any) with ``failures``."""
        self.failures.setdefault(operation, []).extend(failures)

    def requests_for(self, operation: str) -> list[Received]:
        return [request for request in self.received if request.operation == operation]

    def _write_user_file(self) -> None:
        """Write the DOMAIN:user:password store that pyspnego's NTLM acceptor reads."""
        lines = []
        for mailbox in self.mailboxes.values():
            for username in mailbox.usernames:
                domain, _, user = username.rpartition("\\")
                lines.append(f"{domain}:{user}:{mailbox.password}\n")
        if self._user_file is None:
            handle, self._user_file = tempfile.mkstemp(prefix="fake-ews-ntlm-")
            os.close(handle)
            self._previous_user_file = os.environ.get("NTLM_USER_FILE")
            os.environ["NTLM_USER_FILE"] = self._user_file
        with open(self._user_file, "w") as handle:
            handle.writelines(lines)

    # -- authentication -----------------------------------------------------------

    def check_basic(self, value: str) -> Mailbox | None:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        username, _, password = decoded.partition(":")
        return self.mailbox_for_user(username, password)

    def mailbox_for_user(self, username: str, password: str | None) -> Mailbox | None:
        for mailbox in self.mailboxes.values():
            names = {name.lower() for name in mailbox.usernames}
            if username.lower() in names and (
                password is None or password == mailbox.password
            ):
                return mailbox
        return None

    def take_failure(self, operation: str) -> Failure | None:
        for key in (operation, "*"):
            queue = self.failures.get(key)
            if queue:
                return queue.pop(0)
        return None

    def wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, fake, scheme, context):
        self.fake = fake
        self.scheme = scheme
        self.context = context
        super().__init__(address, handler)

    def get_request(self):
        connection, address = super().get_request()
        if self.context is not None:
            # The handshake runs in the handler's thread, so a client that
            # never finishes it cannot block the accept loop.
            connection = self.context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, which NTLM needs
    timeout = IDLE_TIMEOUT

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's name)
        return

    def setup(self):
        super().setup()
        self.ntlm = None
        # NTLM authenticates the connection, so IIS accepts the requests that
        # follow on it without an Authorization header.
        self.ntlm_mailbox: Mailbox | None = None
        self.ntlm_name = ""

    def handle(self):
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError):
            return

    # -- HTTP -----------------------------------------------------------------------

    def do_GET(self):
        self._dispatch(b"")

    def do_HEAD(self):
        self._dispatch(b"")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self._dispatch(self.rfile.read(length))

    def _dispatch(self, body: bytes) -> None:
        fake = self.server.fake
        path = urlsplit(self.path).path
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        operation = _operation(body) if body else ""
        scheme_name = (self.headers.get("Authorization") or "").split(" ", 1)[0]
        record = Received(
            self.server.scheme, self.command, host, path, operation, scheme_name, ""
        )
        fake.received.append(record)

        if self.server.scheme == "http":
            answer = fake.http_answers.get(path, Status(404))
            self._answer(answer)
            return

        if path.lower().endswith("autodiscover.svc"):
            answer = fake.autodiscover.get((host, path))
            if isinstance(answer, (HttpRedirect, Status)):
                self._answer(answer)
                return
        elif path.lower() != EWS_PATH.lower():
            self._answer(Status(404, body=b"<html><body>Not Found</body></html>"))
            return
        else:
            answer = None

        mailbox = self._authenticate()
        if mailbox is None:
            return
        record.user = self._signed_in_name
        if path.lower().endswith("autodiscover.svc"):
            self._autodiscover(body, answer)
        else:
            self._ews(body, operation, mailbox)

    def _offered(self) -> tuple[str, ...]:
        fake = self.server.fake
        path = urlsplit(self.path).path.lower()
        if path == EWS_PATH.lower() and fake.ews_offered is not None:
            return fake.ews_offered
        return fake.offered

    def _authenticate(self) -> Mailbox | None:
        """Return the signed-in mailbox, or send 401 (or an NTLM challenge) and None."""
        fake = self.server.fake
        offered = self._offered()
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        self._signed_in_name = ""
        if scheme == "Basic" and "Basic" in offered:
            mailbox = fake.check_basic(value.strip())
            if mailbox is not None:
                decoded = base64.b64decode(value.strip()).decode("utf-8")
                self._signed_in_name = decoded.partition(":")[0]
                return mailbox
        elif scheme == "NTLM" and "NTLM" in offered:
            return self._ntlm_step(value.strip())
        elif not scheme and self.ntlm_mailbox is not None:
            self._signed_in_name = self.ntlm_name
            return self.ntlm_mailbox
        self._unauthorized()
        return None

    def _ntlm_step(self, token: str) -> Mailbox | None:
        import spnego  # the NTLM acceptor; imported only when a test uses NTLM

        if self.ntlm is None:
            self.ntlm = spnego.server(protocol="ntlm")
        try:
            reply = self.ntlm.step(base64.b64decode(token))
        except spnego.exceptions.SpnegoError:
            self.ntlm = None
            self._unauthorized()
            return None
        if not self.ntlm.complete:
            self._send(
                401,
                b"",
                {"WWW-Authenticate": "NTLM " + base64.b64encode(reply).decode()},
            )
            return None
        principal = self.ntlm.client_principal or ""
        self._signed_in_name = principal
        mailbox = self.server.fake.mailbox_for_user(principal, None)
        self.ntlm = None
        if mailbox is None:
            self._unauthorized()
            return None
        self.ntlm_mailbox, self.ntlm_name = mailbox, principal
        return mailbox

    def _unauthorized(self) -> None:
        # IIS sends one WWW-Authenticate header per offered scheme.
        headers = []
        for scheme in self._offered():
            headers.append(
                ("WWW-Authenticate", f'Basic realm="{self.headers.get("Host")}"')
                if scheme == "Basic"
                else ("WWW-Authenticate", scheme)
            )
        self._send(401, b"", headers)

    def _answer(self, answer: Answer | Failure) -> None:
        if isinstance(answer, HttpRedirect):
            self._send(answer.status, b"", {"Location": answer.location})
        elif isinstance(answer, Status):
            headers = {}
            if answer.retry_after is not None:
                headers["Retry-After"] = str(answer.retry_after)
            self._send(answer.code, answer.body, headers, content_type="text/html")
        else:
            raise AssertionError(f"not an HTTP answer: {answer!r}")

    def _send(self, status, body: bytes, headers=(), content_type="text/xml"):
        self.send_response(status)
        items = headers.items() if isinstance(headers, dict) else headers
        for name, value in items:
            self.send_header(name, value)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- Autodiscover ---------------------------------------------------------------

    def _autodiscover(self, body: bytes, answer: Answer | None) -> None:
        fake = self.server.fake
        root = ElementTree.fromstring(body)  # noqa: S314 (the tests' own client)
        requested = _find(root, "Mailbox")
        address = (
            (requested.text or "").strip().lower() if requested is not None else ""
        )

        if isinstance(answer, RedirectUrl):
            reply = soap.user_settings_response(
                error_code="RedirectUrl",
                error_message="Redirection URL.",
                redirect_target=answer.url,
            )
        elif isinstance(answer, RedirectAddress):
            reply = soap.user_settings_response(
                error_code="RedirectAddress",
                error_message="Redirection address.",
                redirect_target=answer.address,
            )
        elif address not in fake.mailboxes:
            reply = soap.user_settings_response(
                error_code="InvalidUser",
                error_message=f"Invalid user: '{address}'",
            )
        else:
            settings = answer if isinstance(answer, Settings) else Settings()
            mailbox = fake.mailboxes[address]
            reply = soap.user_settings_response(
                settings={
                    "UserDisplayName": mailbox.address.split("@")[0].title(),
                    "AutoDiscoverSMTPAddress": mailbox.address,
                    "InternalEwsUrl": settings.internal_ews_url or fake.ews_url,
                    "ExternalEwsUrl": settings.external_ews_url or fake.ews_url,
                    "CasVersion": soap.cas_version(),
                    "EwsSupportedSchemas": soap.SUPPORTED_SCHEMAS,
                }
            )
        self._send(200, reply)

    # -- EWS --------------------------------------------------------------------------

    def _ews(self, body: bytes, operation: str, mailbox: Mailbox) -> None:
        fake = self.server.fake
        failure = fake.take_failure(operation)
        if isinstance(failure, Silence):
            fake.wait(failure.seconds)
            return
        if isinstance(failure, Status):
            self._answer(failure)
            return
        if isinstance(failure, Busy):
            self._send(500, soap.fault("ErrorServerBusy", BUSY, failure.back_off_ms))
            return

        root = ElementTree.fromstring(body)  # noqa: S314 (the tests' own client)
        request = _find(root, operation)
        anchor = (self.headers.get("X-AnchorMailbox") or "").lower()
        if anchor and anchor not in fake.mailboxes:
            self._send(500, soap.fault("ErrorNonExistentMailbox", NO_MAILBOX))
            return

        if isinstance(failure, ResponseError):
            reply = soap.operation_response(
                operation,
                soap.response_message(
                    operation, failure.code, failure.text, "<m:Items/>"
                ),
            )
        elif operation == "GetFolder":
            reply = self._get_folder(request, mailbox)
        elif operation == "CreateItem":
            reply = self._create_item(request, mailbox)
        elif operation == "ConvertId":
            reply = soap.operation_response(
                operation,
                soap.response_message(
                    operation, "ErrorInvalidIdMalformed", "Id is malformed."
                ),
            )
        else:
            self._send(
                500,
                soap.fault("ErrorInvalidRequest", f"{operation} is not supported."),
            )
            return
        self._send(200, reply)

    def _get_folder(self, request, mailbox: Mailbox) -> bytes:
        fake = self.server.fake
        messages = []
        for folder_id in request.iter():
            if _local(folder_id.tag) != "DistinguishedFolderId":
                continue
            name = folder_id.get("Id", "")
            owner_element = _find(folder_id, "EmailAddress")
            owner = (
                (owner_element.text or "").strip().lower()
                if owner_element is not None
                else mailbox.address
            )
            if owner not in fake.mailboxes:
                messages.append(
                    soap.response_message(
                        "GetFolder", "ErrorNonExistentMailbox", NO_MAILBOX
                    )
                )
                continue
            if owner != mailbox.address and owner not in mailbox.full_access:
                messages.append(
                    soap.response_message(
                        "GetFolder", "ErrorAccessDenied", ACCESS_DENIED
                    )
                )
                continue
            target = fake.mailboxes[owner]
            if name == "inbox":
                content = soap.folder(
                    f"inbox-{owner}",
                    "Inbox",
                    target.inbox_count,
                    target.unread_count,
                    "IPF.Note",
                )
            else:
                content = soap.folder(f"{name}-{owner}", "", 0, 0, "IPF.Note")
            messages.append(
                soap.response_message(
                    "GetFolder", content=f"<m:Folders>{content}</m:Folders>"
                )
            )
        return soap.operation_response("GetFolder", "".join(messages))

    def _create_item(self, request, mailbox: Mailbox) -> bytes:
        fake = self.server.fake
        disposition = request.get("MessageDisposition", "SaveOnly")
        messages = []
        for item in request.iter():
            if _local(item.tag) != "Message":
                continue
            mime_element = _find(item, "MimeContent")
            mime = email.message_from_bytes(
                base64.b64decode(mime_element.text or ""),
                policy=email.policy.default,
            )
            from_element = None
            for child in item:
                if _local(child.tag) == "From":
                    address = _find(child, "EmailAddress")
                    from_element = (address.text or "").strip().lower()
            author = from_element or mime["From"].addresses[0].addr_spec.lower()

            # Exchange checks the From against the signed-in mailbox's rights:
            # Send As shows only the From, Send on Behalf shows both.
            if author == mailbox.address:
                sent_as = "self"
            elif author in mailbox.send_as:
                sent_as = "send-as"
            elif author in mailbox.send_on_behalf:
                sent_as = "on-behalf"
            else:
                messages.append(
                    soap.response_message(
                        "CreateItem", "ErrorSendAsDenied", SEND_AS_DENIED, "<m:Items/>"
                    )
                )
                continue
            fake.sent.append(
                SentMessage(mailbox.address, from_element, disposition, mime, sent_as)
            )
            messages.append(soap.response_message("CreateItem", content="<m:Items/>"))
        return soap.operation_response("CreateItem", "".join(messages))


def _operation(body: bytes) -> str:
    """Return the local name of the SOAP body's first element, or ""."""
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 (the tests' own client)
    except ElementTree.ParseError:
        return ""
    soap_body = _find(root, "Body")
    if soap_body is None or not len(soap_body):
        return ""
    name = _local(soap_body[0].tag)
    return "GetUserSettings" if name == "GetUserSettingsRequestMessage" else name
