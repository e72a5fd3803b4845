"""Test sends and test reads, and the record of the last result on an account."""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..models import EmailAccount
from ..transports import imap, pop3, smtp
from ..transports.base import (
    CertificateInfo,
    ReadSettings,
    SmtpSettings,
    TransportError,
)
from . import audit
from .messages import build_test_message

log = logging.getLogger(__name__)

SEND = "send"
READ = "read"


@dataclass
class TestOutcome:
    """What a test found, in the words shown to the user."""

    kind: str  # SEND or READ
    ok: bool
    summary: str
    advice: str = ""
    reply: str = ""
    step: str = ""
    certificate: CertificateInfo | None = None
    folders: list[str] = field(default_factory=list)
    # The fix is to sign in with the identity provider again (OAuth2 accounts).
    sign_in_again: bool = False
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    __test__ = False  # not a pytest test class, despite the name


def failed_outcome(kind: str, error: TransportError) -> TestOutcome:
    """Return the outcome of a test that failed with ``error``."""
    return TestOutcome(
        kind=kind,
        ok=False,
        summary=error.summary,
        advice=error.advice,
        reply=error.reply,
        step=str(error.step),
        certificate=error.certificate,
        sign_in_again=error.sign_in_again,
    )


def run_send_test(
    settings: SmtpSettings,
    *,
    from_address: str,
    from_name: str,
    to: str,
    account_label: str,
    account_id: int | None = None,
) -> TestOutcome:
    """Send a test message with ``settings`` and report what happened."""
    message = build_test_message(
        from_address=from_address,
        from_name=from_name,
        to=to,
        account_label=account_label,
    )
    log.info(
        "Test send started for account %s via %s:%s",
        account_id,
        settings.host,
        settings.port,
    )
    try:
        result = smtp.send_message(settings, message)
    except TransportError as error:
        log.info(
            "Test send failed for account %s at step %s: %s",
            account_id,
            error.step,
            error.summary,
        )
        return failed_outcome(SEND, error)
    return TestOutcome(
        kind=SEND,
        ok=True,
        summary=f"The server accepted the test message for {to}.",
        reply=result.reply,
    )


def run_read_test(
    settings: ReadSettings, *, account_id: int | None = None
) -> TestOutcome:
    """Sign in to the incoming server, open the folder and count its messages."""
    log.info(
        "Test read started for account %s via %s %s:%s",
        account_id,
        settings.protocol,
        settings.host,
        settings.port,
    )
    try:
        if settings.protocol == "imap":
            result = imap.check_folder(settings)
            where = f"the folder {result.folder or settings.folder!r}"
        else:
            result = pop3.check_mailbox(settings)
            where = "the mailbox"
    except TransportError as error:
        log.info(
            "Test read failed for account %s at step %s: %s",
            account_id,
            error.step,
            error.summary,
        )
        return failed_outcome(READ, error)

    count = result.message_count
    noun = "message" if count == 1 else "messages"
    return TestOutcome(
        kind=READ,
        ok=True,
        summary=f"Signed in and opened {where}: {count} {noun}.",
        folders=list(result.folders),
    )


def record_outcome(account: EmailAccount, outcome: TestOutcome) -> None:
    """Store the time and result of a test on the account; the caller commits."""
    summary = outcome.summary[:500]
    if outcome.kind == SEND:
        account.last_send_test_at = outcome.at
        account.last_send_test_ok = outcome.ok
        account.last_send_test_summary = summary
    else:
        account.last_read_test_at = outcome.at
        account.last_read_test_ok = outcome.ok
        account.last_read_test_summary = summary


def audit_outcome(
    outcome: TestOutcome, account: EmailAccount | None, label: str = ""
) -> None:
    """Record a test in the audit trail; the caller commits."""
    audit.record(
        f"account.test-{outcome.kind}",
        object_type="account",
        object_id=account.id if account else "",
        label=account.friendly_name if account else label,
        outcome=audit.SUCCESS if outcome.ok else audit.FAILURE,
        detail=(f"{outcome.step} step: " if outcome.step else "") + outcome.summary,
    )
