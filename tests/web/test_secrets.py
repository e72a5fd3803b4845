"""Known secrets never appear in a page, a fragment, a log record or the audit trail."""

import base64
import logging

from sqlalchemy import select

from portal.extensions import db
from portal.models import AuditEvent, EmailAccount
from portal.services import delivery
from tests.conftest import HTMX
from tests.servers.smtp import SMTP_PASSWORD, SMTP_USERNAME, Authenticator
from tests.web.test_accounts import PERSONAL, account_form

WRONG_PASSWORD = "Wröng-Guess-Ω-2026"


def forbidden_forms(secret: str, username: str = "") -> list[str]:
    raw = secret.encode()
    forms = [
        secret,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
    ]
    if username:
        plain = b"\0" + username.encode() + b"\0" + raw  # AUTH PLAIN
        forms.append(base64.b64encode(plain).decode())
    return forms


def test_secrets_never_leak(
    app, staff_client, smtp_server, certificates, dovecot, caplog
):
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []

    def keep(response):
        bodies.append(response.get_data(as_text=True))
        bodies.append(str(response.headers))
        return response

    server = smtp_server(
        tls="starttls", certificate=certificates.server, authenticator=Authenticator()
    )
    values = dict(
        smtp_host=server.host,
        smtp_port=str(server.port),
        smtp_security="starttls",
        smtp_auth="password",
        smtp_username=SMTP_USERNAME,
        smtp_password=SMTP_PASSWORD,
        read_protocol="imap",
        read_host=dovecot.host,
        read_port=str(dovecot.imaps_port),
        read_security="ssl",
        read_username=dovecot.username,
        read_password=dovecot.password,
        trusted_fingerprint=certificates.server.sha256,
        test_to="someone@example.com",
        security="all_staff",
    )
    new = f"{PERSONAL}/new/internet"
    # Tests with the right and a wrong password, a failed save, then the save.
    keep(
        staff_client.post(
            new, data=account_form(**values, action="test-send"), headers=HTMX
        )
    )
    keep(
        staff_client.post(
            new, data=account_form(**values, action="test-read"), headers=HTMX
        )
    )
    wrong = dict(values, smtp_password=WRONG_PASSWORD, read_password=WRONG_PASSWORD)
    keep(
        staff_client.post(
            new, data=account_form(**wrong, action="test-send"), headers=HTMX
        )
    )
    keep(
        staff_client.post(
            new, data=account_form(**wrong, action="test-read"), headers=HTMX
        )
    )
    keep(staff_client.post(new, data=account_form(**{**values, "smtp_port": "0"})))
    keep(staff_client.post(new, data=account_form(**values)))
    account = db.session.scalar(select(EmailAccount))

    # Pages that show the account, and a message sent through it.
    for url in (PERSONAL, f"{PERSONAL}/{account.id}", "/compose", "/deliveries"):
        keep(staff_client.get(url))
        keep(staff_client.get(url, headers=HTMX))
    keep(
        staff_client.post(
            "/compose",
            data={
                "account_id": account.id,
                "to": "a@example.com",
                "subject": "S",
                "body": "B",
            },
        )
    )
    assert delivery.run_once("secrets-test") == 1
    keep(staff_client.get("/deliveries"))
    assert len(server.messages) == 2  # the test send and the composed message

    logs = "\n".join(record.getMessage() for record in caplog.records)
    logs += "\n".join(str(record.args) for record in caplog.records)
    audit = "\n".join(
        repr((e.changes, e.detail, e.object_label))
        for e in db.session.scalars(select(AuditEvent))
    )
    assert audit  # the flows above were recorded
    haystacks = {"responses": "\n".join(bodies), "logs": logs, "audit": audit}
    secrets = (
        forbidden_forms(SMTP_PASSWORD, SMTP_USERNAME)
        + forbidden_forms(dovecot.password, dovecot.username)
        + forbidden_forms(WRONG_PASSWORD, SMTP_USERNAME)
    )
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, f"a secret appears in the {where}"
        assert "Authorization:" not in text, (
            f"an Authorization header appears in the {where}"
        )
