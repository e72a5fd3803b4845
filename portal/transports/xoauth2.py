"""SASL XOAUTH2, the OAuth2 sign-in of Gmail and Microsoft 365 for SMTP and IMAP.

The client sends the user name and an access token in one initial response.
A server that rejects the token responds with a challenge containing a JSON
object, such as ``{"status":"400","schemes":"Bearer","scope":"..."}``, and
expects an empty line before it sends the final failure. The scope in
that object names the permission the token needed, which is what the person
fixing the account has to know.
"""

import base64
import binascii
import json
import logging

from .base import Step, TransportError, xoauth2_string

log = logging.getLogger(__name__)

MECHANISM = "XOAUTH2"


def initial_response(username: str, token: str) -> bytes:
    """Return the base64 initial response for ``username`` and ``token``."""
    return base64.b64encode(xoauth2_string(username, token))


def parse_challenge(data: bytes | str) -> dict:
    """Decode an error challenge. An unreadable one gives an empty mapping.

    ``data`` is the challenge as sent (base64) or already decoded.
    """
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    raw = raw.strip()
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        decoded = raw
    try:
        challenge = json.loads(decoded.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return challenge if isinstance(challenge, dict) else {}


def token_rejected(
    host: str,
    username: str,
    challenge: dict,
    *,
    reply: str = "",
    temporary: bool = False,
) -> TransportError:
    """Return the failure for a server that rejected the access token.

    The challenge's ``scope`` is reported as the permission the sign-in
    needs, because signing in again with it granted is the fix.
    """
    scope = str(challenge.get("scope") or "").strip()
    status = str(challenge.get("status") or "").strip()
    if temporary:
        return TransportError(
            Step.AUTHENTICATION,
            f"{host} could not check the OAuth2 sign-in of {username} right now.",
            "Try again later.",
            reply=reply,
            temporary=True,
        )
    if scope:
        summary = (
            f"{host} refused the OAuth2 token of {username}; it asks for the "
            f"scope {scope}, which the sign-in may lack."
        )
    else:
        summary = f"{host} refused the OAuth2 token of {username}."
    advice = (
        "Sign in again as the same user and allow every permission the sign-in "
        "page asks for. If it keeps failing, the user may not be allowed to use "
        "SMTP or IMAP; ask the mail administrator."
    )
    detail = f"status {status}" if status else ""
    return TransportError(
        Step.AUTHENTICATION,
        summary,
        advice,
        reply=" ".join(part for part in (reply, detail) if part),
        sign_in_again=True,
    )


def not_offered(host: str, port: int, protocol: str) -> TransportError:
    return TransportError(
        Step.AUTHENTICATION,
        f"{host} port {port} does not offer OAuth2 sign-in (XOAUTH2) for {protocol}.",
        "OAuth2 sign-in works with Google's and Microsoft 365's own servers. "
        "Check the host name and port, or choose sign-in with a user name and "
        "password.",
    )


class ImapExchange:
    """The callable that imaplib's ``authenticate`` calls for each server continuation.

    The first continuation gets the initial response. A later one is the
    error challenge, which is kept in ``challenge``, and the reply to it is
    the empty line the protocol expects.
    """

    def __init__(self, username: str, token: str) -> None:
        self._response = xoauth2_string(username, token)
        self._sent = False
        self.challenge: dict | None = None

    def __call__(self, data: bytes) -> bytes:
        if not self._sent:
            self._sent = True
            return self._response
        # imaplib has already decoded the base64 of the continuation.
        self.challenge = parse_challenge(data)
        return b""
