"""XOAUTH2 delivery with a cached access token that the server no longer accepts.

The portal caches each access token until shortly before it expires, but a
server can reject a token before then, for example once its grant is revoked.
The Gmail API and Graph transports then fetch a new token and try once more,
and these tests expect SMTP with XOAUTH2 to do the same.
"""

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.integrations.microsoft_tokens import CACHE
from portal.models import OutboxMessage
from portal.services import delivery, sending
from portal.services.access import StaffPrincipal
from tests.conftest import HTMX
from tests.oauth2 import test_microsoft_xoauth2 as microsoft_tests
from tests.oauth2.conftest import PERSONAL, oauth_form
from tests.oauth2.test_google_xoauth2 import (
    FAST,
    NEW,
    edit_url,
    save_and_sign_in,
    the_account,
)
from tests.servers.dovecot import OAUTH2_USERNAME


@pytest.fixture
def linked(staff_client, google_sign_in, gmail_smtp, certificates):
    """A staff member's Internet account signed in with Google."""
    save_and_sign_in(staff_client, oauth_form(gmail_smtp, certificates), NEW)
    return the_account()


def send_test(client, url, form) -> str:
    """Run a test send, which leaves the account's access token in the cache."""
    fragment = client.post(url, data=form, headers=HTMX).get_data(as_text=True)
    assert "Test send succeeded" in fragment, fragment
    return fragment


def deliver_one(staff, account_id) -> OutboxMessage:
    sending.queue_message(
        StaffPrincipal(staff.id),
        account_id,
        sending.Draft(to=["customer@example.net"], subject="Your ticket", body="Hi"),
    )
    db.session.commit()
    delivery.run_once("test-worker", FAST)
    db.session.expire_all()
    return db.session.scalars(select(OutboxMessage)).one()


def test_google_rejected_token_is_refreshed(
    staff_client, linked, gmail_smtp, certificates, google_fake, staff
):
    form = oauth_form(gmail_smtp, certificates, action="test-send")
    send_test(staff_client, edit_url(linked), form)
    google_fake.expire_access_tokens()

    row = deliver_one(staff, linked.id)

    assert row.status == "sent", row.last_error


def test_revoked_grant_flags_reconnect(
    staff_client, linked, gmail_smtp, certificates, google_fake, staff
):
    form = oauth_form(gmail_smtp, certificates, action="test-send")
    send_test(staff_client, edit_url(linked), form)
    # The server now rejects the cached token, as after a revocation.
    google_fake.revoke_grants(OAUTH2_USERNAME)
    google_fake.expire_access_tokens()

    row = deliver_one(staff, linked.id)

    assert row.status == "failed"
    assert "revoked or has expired" in row.last_error
    assert the_account().settings.get("reconnect_needed") is True


def test_microsoft_rejected_token_is_refreshed(
    staff_client, microsoft_sign_in, outlook_smtp, certificates, staff
):
    account = microsoft_tests.save_and_sign_in(staff_client, outlook_smtp, certificates)
    CACHE.clear()
    form = microsoft_tests.microsoft_form(
        outlook_smtp, certificates, action="test-send"
    )
    send_test(staff_client, f"{PERSONAL}/{account.id}", form)
    microsoft_sign_in.expire_tokens()

    row = deliver_one(staff, account.id)

    assert row.status == "sent", row.last_error
