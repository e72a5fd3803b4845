"""How the delivery worker opens a connection for each account type.

An account type plugs into the one send path by registering an opener here:
a function that takes a saved account and returns an async context manager
whose ``send(message, sender=, recipients=)`` returns a ``SendResult`` and
raises ``TransportError``.
"""

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from ..models import EmailAccount
from ..transports.smtp import SmtpConnection
from . import accounts

SenderOpener = Callable[[EmailAccount, float], AbstractAsyncContextManager]

_OPENERS: dict[str, SenderOpener] = {}


def register(account_type: str, opener: SenderOpener) -> None:
    _OPENERS[account_type] = opener


def opener_for(account: EmailAccount) -> SenderOpener:
    """Return the opener of the account's type; KeyError for an unknown type."""
    return _OPENERS[account.account_type]


def _open_smtp(account: EmailAccount, timeout: float) -> SmtpConnection:
    return SmtpConnection(accounts.stored_smtp_settings(account, timeout))


register(accounts.INTERNET, _open_smtp)
