"""The one send path for every message that is not a test.

It checks the usage rule, validates addresses and headers, builds the message
and writes it to the outbox in the caller's transaction; the delivery worker
sends it later. Nothing here commits.
"""

import logging
from dataclasses import dataclass, field
from email import policy

from .. import validation
from ..extensions import db
from ..models import EmailAccount, OutboxMessage
from . import access
from .messages import build_message

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 100
MAX_BODY_CHARACTERS = 1_000_000


class SendNotAllowed(PermissionError):
    """The principal may not send from the account."""


class MessageInvalid(ValueError):
    """Some fields of the message are invalid; ``errors`` maps field to message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {text}" for name, text in errors.items()))
        self.errors = errors


@dataclass
class Draft:
    """A message as a person or a module writes it."""

    to: list[str]
    subject: str
    body: str
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)


def split_addresses(text: str) -> list[str]:
    """Split a typed list of addresses on commas, semicolons and line breaks."""
    for separator in (";", "\n", "\r"):
        text = text.replace(separator, ",")
    return [part.strip() for part in text.split(",") if part.strip()]


def _validate(draft: Draft) -> tuple[dict[str, list[str]], str]:
    errors: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    for name in ("to", "cc", "bcc"):
        addresses = []
        for address in getattr(draft, name):
            try:
                addresses.append(validation.normalise_email(address))
            except ValueError as error:
                errors[name] = f"{address!r}: {error}"
                break
        lists[name] = addresses

    if not errors and not lists["to"] and not lists["cc"] and not lists["bcc"]:
        errors["to"] = "Enter at least one recipient."
    total = sum(len(addresses) for addresses in lists.values())
    if total > MAX_RECIPIENTS:
        errors["to"] = (
            f"A message can go to at most {MAX_RECIPIENTS} recipients; this one has {total}."
        )

    subject = ""
    try:
        subject = validation.check_header_value(draft.subject, 998)
    except ValueError as error:
        errors["subject"] = str(error)
    if len(draft.body) > MAX_BODY_CHARACTERS:
        errors["body"] = (
            f"The message is longer than {MAX_BODY_CHARACTERS:,} characters."
        )

    if errors:
        raise MessageInvalid(errors)
    return lists, subject


def queue_message(
    principal: access.Principal, account_id: int, draft: Draft
) -> OutboxMessage:
    """Check the rule, build the message and add it to the outbox.

    Raises ``SendNotAllowed`` when the principal may not use the account and
    ``MessageInvalid`` when a field is invalid. The caller commits, so the
    message is queued in the same transaction as the request that wrote it.
    """
    if not access.may_use(principal, account_id):
        log.warning("Send refused: %s may not use account %s", principal, account_id)
        raise SendNotAllowed(account_id)

    lists, subject = _validate(draft)
    account = db.session.get(EmailAccount, account_id)
    message = build_message(
        from_address=account.email_address,
        from_name=account.from_name,
        to=lists["to"],
        cc=lists["cc"],
        subject=subject,
        body=draft.body,
    )
    recipients = lists["to"] + lists["cc"] + lists["bcc"]
    # SMTPUTF8 serialisation keeps a non-ASCII local part as UTF-8; every
    # other header is encoded as for any SMTP server.
    needs_utf8 = any(
        not address.split("@")[0].isascii()
        for address in recipients + [account.email_address]
    )
    mime = message.as_bytes(policy=policy.SMTPUTF8 if needs_utf8 else policy.SMTP)

    row = OutboxMessage(
        account_id=account.id,
        staff_id=principal.staff_id
        if isinstance(principal, access.StaffPrincipal)
        else None,
        module=str(principal.module)
        if isinstance(principal, access.ModulePrincipal)
        else None,
        status="queued",
        sender=validation.ascii_email(account.email_address),
        recipients=[validation.ascii_email(address) for address in recipients],
        subject=subject,
        mime=mime,
    )
    db.session.add(row)
    log.info(
        "Queued a message from account %s for %d recipients",
        account.id,
        len(recipients),
    )
    return row
