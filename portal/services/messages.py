"""Building standards-conformant messages with ``email.message.EmailMessage``."""

from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from .. import validation


def make_address(address: str, display_name: str = "") -> Address:
    """Return a header address; the domain is put in its IDNA (ASCII) form.

    The display name stays Unicode: the email package encodes it as an RFC 2047
    encoded word when the message is serialised. A non-ASCII local part cannot
    be encoded that way and needs a server that offers SMTPUTF8.
    """
    ascii_address = validation.ascii_email(address)
    local, _, domain = ascii_address.rpartition("@")
    return Address(display_name=display_name, username=local, domain=domain)


def build_message(
    *,
    from_address: str,
    from_name: str,
    to: list[str],
    subject: str,
    body: str,
    cc: list[str] | None = None,
    reply_to: str | None = None,
) -> EmailMessage:
    message = EmailMessage()
    sender = make_address(from_address, from_name)
    message["From"] = sender
    message["To"] = [make_address(address) for address in to]
    if cc:
        message["Cc"] = [make_address(address) for address in cc]
    if reply_to:
        message["Reply-To"] = make_address(reply_to)
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=sender.domain)
    message.set_content(body)
    return message


def build_test_message(
    *, from_address: str, from_name: str, to: str, account_label: str
) -> EmailMessage:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = (
        f"This is a test message from the email account portal, sent at {now} "
        f"through the account {account_label!r}.\n\n"
        "If you can read it, the account's send settings work. No reply is needed.\n"
    )
    return build_message(
        from_address=from_address,
        from_name=from_name,
        to=[to],
        subject="Test message from the email account portal",
        body=body,
    )
