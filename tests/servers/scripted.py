"""A line-based TCP server with scripted replies, for what Dovecot cannot simulate.

Dovecot always offers STARTTLS when it has a certificate and cannot reply like
Gmail, so these tests use a server that sends a fixed greeting and replies to
each received line with scripted text.
"""

import contextlib
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# Seconds a connection may stay silent before the server drops it, so that a
# stuck client cannot hang the test run.
IDLE_TIMEOUT = 5.0

# Receives one line without its line ending and returns the text to send
# (CRLF included), or None to close the connection.
Responder = Callable[[str], str | None]


@dataclass
class ScriptedServer:
    """A running scripted server and every line it received."""

    port: int
    received: list[str] = field(default_factory=list)


class _Handler(socketserver.StreamRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        self.request.settimeout(IDLE_TIMEOUT)
        try:
            self.wfile.write(self.server.greeting.encode())
            for raw_line in self.rfile:
                line = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
                self.server.scripted.received.append(line)
                reply = self.server.respond(line)
                if reply is None:
                    return
                self.wfile.write(reply.encode())
        except (TimeoutError, ConnectionError):
            return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, greeting: str, respond: Responder) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.greeting = greeting
        self.respond = respond
        self.scripted = ScriptedServer(port=self.server_address[1])


@contextlib.contextmanager
def scripted_server(greeting: str, respond: Responder) -> Iterator[ScriptedServer]:
    """Run a scripted server on 127.0.0.1 for the duration of the block."""
    server = _Server(greeting, respond)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.scripted
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def imap_responder(
    capabilities: str, login_reply: str = "OK LOGIN completed"
) -> Responder:
    """Return a responder for CAPABILITY, LOGIN and LOGOUT, like an IMAP server.

    ``login_reply`` follows the tag of LOGIN, such as "NO [UNAVAILABLE] ...".
    """

    def respond(line: str) -> str | None:
        tag, _, rest = line.partition(" ")
        command = rest.split(" ", 1)[0].upper()
        if command == "CAPABILITY":
            return f"* CAPABILITY {capabilities}\r\n{tag} OK CAPABILITY completed\r\n"
        if command == "LOGIN":
            return f"{tag} {login_reply}\r\n"
        if command == "LOGOUT":
            return f"* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n"
        return f"{tag} BAD Unknown command\r\n"

    return respond


def pop3_responder(
    capabilities: list[str], sign_in_reply: str = "+OK Logged in."
) -> Responder:
    """Return a responder for CAPA, USER, PASS, STAT and QUIT, like a POP3 server."""

    def respond(line: str) -> str | None:
        command = line.split(" ", 1)[0].upper()
        if command == "CAPA":
            return "+OK\r\n" + "".join(f"{c}\r\n" for c in capabilities) + ".\r\n"
        if command == "USER":
            return "+OK\r\n"
        if command == "PASS":
            return f"{sign_in_reply}\r\n"
        if command == "STAT":
            return "+OK 0 0\r\n"
        if command == "QUIT":
            return "+OK Bye\r\n"
        return "-ERR Unknown command\r\n"

    return respond
