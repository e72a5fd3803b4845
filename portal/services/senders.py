"""How the delivery worker opens a connection for each account type.

An account type plugs into the one send path by registering an opener here:
a function that takes a saved account and returns an async context manager
whose ``send(message, sender=, recipients=)`` returns a ``SendResult`` and
raises ``TransportError``.
"""

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from ..models import EmailAccount
from ..transports.base import TransportError

SenderOpener = Callable[[EmailAccount, float], AbstractAsyncContextManager]

_OPENERS: dict[str, SenderOpener] = {}


def register(account_type: str, opener: SenderOpener) -> None:
    _OPENERS[account_type] = opener


def opener_for(account: EmailAccount) -> SenderOpener:
    """Return the opener of the account's type; KeyError for an unknown type."""
    return _OPENERS[account.account_type]


class Unavailable:
    """A connection that an opener could not prepare. Entering it raises
    ``error``, so each message gets that error as its outcome."""

    def __init__(self, error: TransportError) -> None:
        self.error = error

    async def __aenter__(self) -> "Unavailable":
        raise self.error

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None
