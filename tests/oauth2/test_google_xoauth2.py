"""An Internet account linked to a Google sign-in: SMTP and IMAP with XOAUTH2."""

import logging

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.integrations import google as google_integration
from portal.models import AuditEvent, EmailAccount, OutboxMessage
from portal.services import delivery, sending
from portal.services.access import StaffPrincipal
from portal.services.delivery import DeliveryPolicy
from tests.conftest import HTMX, version_fields
from tests.oauth2.conftest import GLOBAL, PERSONAL, follow_sign_in, oauth_form, query
from tests.servers.dovecot import GMAIL_SCOPE, OAUTH2_USERNAME
from tests.web.test_accounts import account_form

NEW = f"{PERSONAL}/new/internet"
FAST = DeliveryPolicy(first_retry_seconds=0.0, max_retry_seconds=0.0, timeout=5.0)


def save_and_sign_in(client, form, url=NEW):
    """Save the form, follow the sign-in with Google; return the portal's last response."""
    response = client.post(url, data=form)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client.get(follow_sign_in(response.headers["Location"]))


def imap_form(server, certificates, dovecot, **overrides):
    """The form of an account that sends through ``server`` and reads from Dovecot."""
    return oauth_form(
        server,
        certificates,
        read_protocol="imap",
        read_host=dovecot.host,
        read_port=str(dovecot.imaps_port),
        read_security="ssl",
        **overrides,
    )


def the_account() -> EmailAccount:
    db.session.expire_all()
    return db.session.scalars(select(EmailAccount)).one()


def edit_url(account: EmailAccount, base=PERSONAL) -> str:
    return f"{base}/{account.id}"


@pytest.fixture
def linked(staff_client, google_sign_in, gmail_smtp, certificates):
    """A staff member's Internet account signed in with Google as carol."""
    response = save_and_sign_in(staff_client, oauth_form(gmail_smtp, certificates))
    account = the_account()
    assert response.headers["Location"].endswith(edit_url(account))
    return account


def test_save_redirects_to_google(
    staff_client, google_sign_in, gmail_smtp, certificates
):
    response = staff_client.post(NEW, data=oauth_form(gmail_smtp, certificates))
    location = response.headers["Location"]
    assert location.startswith(google_sign_in.auth_url)
    params = query(location)
    assert GMAIL_SCOPE in params["scope"].split()
    assert params["login_hint"] == OAUTH2_USERNAME
    assert params["code_challenge_method"] == "S256"
    assert params["access_type"] == "offline"
    account = the_account()
    assert account.settings["smtp"]["auth"] == "oauth2-google"
    assert "refresh_token" not in account.secret_names()


def test_sign_in_is_stored_and_shown(staff_client, linked, google_fake):
    account = linked
    assert "refresh_token" in account.secret_names()
    assert account.settings["oauth"]["identity"] == OAUTH2_USERNAME
    page = staff_client.get(edit_url(account)).get_data(as_text=True)
    assert f"Signed in with Google as {OAUTH2_USERNAME}" in page
    assert 'name="smtp_password"' not in page
    for refresh_token in google_fake.refresh_tokens:
        assert refresh_token not in page
    listing = staff_client.get(PERSONAL).get_data(as_text=True)
    assert "OAuth2 with Google" in listing


def test_test_send_signs_in_with_xoauth2(
    staff_client, linked, gmail_smtp, certificates
):
    form = oauth_form(gmail_smtp, certificates, action="test-send")
    fragment = staff_client.post(edit_url(linked), data=form, headers=HTMX).get_data(
        as_text=True
    )
    assert "Test send succeeded" in fragment, fragment
    (received,) = gmail_smtp.messages
    assert received.login == OAUTH2_USERNAME
    assert received.encrypted


def test_test_read_dovecot_xoauth2(
    staff_client, linked, gmail_smtp, certificates, dovecot_oauth2
):
    form = imap_form(gmail_smtp, certificates, dovecot_oauth2, action="test-read")
    fragment = staff_client.post(edit_url(linked), data=form, headers=HTMX).get_data(
        as_text=True
    )
    assert "Test read succeeded" in fragment, fragment
    assert "3 messages" in fragment


def test_token_without_scope_rejected(
    staff_client, linked, gmail_smtp, certificates, dovecot_oauth2, google_fake
):
    # The grant loses the mail scope, as when the person unticks it.
    for grant in google_fake.refresh_tokens.values():
        if grant["subject"] == OAUTH2_USERNAME:
            grant["scopes"] = frozenset({"openid", "email"})
    google_integration.clear_token_cache()
    form = imap_form(gmail_smtp, certificates, dovecot_oauth2)
    # Gmail's challenge names its scope; Dovecot 2.3's names "mail".
    for action, scope in (("test-send", GMAIL_SCOPE), ("test-read", "mail")):
        fragment = staff_client.post(
            edit_url(linked), data={**form, "action": action}, headers=HTMX
        ).get_data(as_text=True)
        assert "failed at the authentication step" in fragment, fragment
        assert f"it asks for the scope {scope}," in fragment
        assert "Save and sign in with Google again" in fragment
        assert 'value="oauth-sign-in"' in fragment
    assert gmail_smtp.messages == []


def test_revoked_grant_reconnect_needed(
    staff_client, linked, gmail_smtp, certificates, google_fake
):
    google_fake.revoke_grants(OAUTH2_USERNAME)
    google_integration.clear_token_cache()
    form = oauth_form(gmail_smtp, certificates, action="test-send")
    fragment = staff_client.post(edit_url(linked), data=form, headers=HTMX).get_data(
        as_text=True
    )
    assert "revoked or has expired" in fragment
    assert "Save and sign in with Google again" in fragment
    assert the_account().settings["reconnect_needed"] is True
    listing = staff_client.get(PERSONAL).get_data(as_text=True)
    assert "Reconnect needed" in listing
    page = staff_client.get(edit_url(linked)).get_data(as_text=True)
    assert "Reconnect needed:" in page

    # Signing in again clears the flag and sending works again.
    page = staff_client.get(edit_url(linked)).get_data(as_text=True)
    response = save_and_sign_in(
        staff_client,
        oauth_form(
            gmail_smtp, certificates, action="oauth-sign-in", **version_fields(page)
        ),
        edit_url(linked),
    )
    assert response.status_code == 302
    assert the_account().settings["reconnect_needed"] is False
    fragment = staff_client.post(edit_url(linked), data=form, headers=HTMX).get_data(
        as_text=True
    )
    assert "Test send succeeded" in fragment


def test_delivery_uses_stored_grant(linked, gmail_smtp, staff, app):
    account = the_account()
    sending.queue_message(
        StaffPrincipal(staff.id),
        account.id,
        sending.Draft(to=["customer@example.net"], subject="Your ticket", body="Hi"),
    )
    db.session.commit()
    assert delivery.run_once("test-worker", FAST) == 1
    (received,) = gmail_smtp.messages
    assert received.login == OAUTH2_USERNAME
    row = db.session.scalars(select(OutboxMessage)).one()
    assert row.status == "sent"


def test_delivery_revoked_grant_fails(linked, gmail_smtp, staff, google_fake):
    google_fake.revoke_grants(OAUTH2_USERNAME)
    google_integration.clear_token_cache()
    sending.queue_message(
        StaffPrincipal(staff.id),
        linked.id,
        sending.Draft(to=["customer@example.net"], subject="Your ticket", body="Hi"),
    )
    db.session.commit()
    delivery.run_once("test-worker", FAST)
    row = db.session.scalars(select(OutboxMessage)).one()
    assert row.status == "failed"
    assert "revoked or has expired" in row.last_error
    assert gmail_smtp.messages == []
    assert the_account().settings["reconnect_needed"] is True


def test_sign_in_as_other_rejected(
    staff_client, google_sign_in, gmail_smtp, certificates
):
    google_sign_in.add_user("mallory@portal.test", "Mallory")
    google_sign_in.sign_in_as = "mallory@portal.test"
    response = save_and_sign_in(staff_client, oauth_form(gmail_smtp, certificates))
    account = the_account()
    assert response.headers["Location"].endswith(edit_url(account))
    page = staff_client.get(edit_url(account)).get_data(as_text=True)
    assert "You signed in to Google as mallory@portal.test" in page
    assert "refresh_token" not in account.secret_names()
    failed_sign_in = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "account.oauth.connect")
    ).one()
    assert failed_sign_in.outcome == "failure"


def test_user_name_change_drops_sign_in(
    staff_client, linked, gmail_smtp, certificates
):
    page = staff_client.get(edit_url(linked)).get_data(as_text=True)
    form = oauth_form(
        gmail_smtp,
        certificates,
        smtp_username="other@portal.test",
        **version_fields(page),
    )
    response = staff_client.post(edit_url(linked), data=form)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("http://127.0.0.1")
    account = the_account()
    assert "refresh_token" not in account.secret_names()
    assert "oauth" not in account.settings


def test_test_before_sign_in(staff_client, google_sign_in, gmail_smtp, certificates):
    form = oauth_form(gmail_smtp, certificates, action="test-send")
    response = staff_client.post(NEW, data=form, headers=HTMX)
    page = response.get_data(as_text=True)
    assert response.headers["HX-Retarget"] == "#account-form"
    assert "Press Save and sign in with Google first" in page
    assert gmail_smtp.messages == []


def test_oauth2_needs_the_google_client(staff_client, app, gmail_smtp, certificates):
    response = staff_client.post(NEW, data=oauth_form(gmail_smtp, certificates))
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Signing in with Google is not set up" in page
    assert db.session.scalars(select(EmailAccount)).all() == []


def test_oauth2_reads_over_imap_only(
    staff_client, google_sign_in, gmail_smtp, certificates
):
    form = oauth_form(
        gmail_smtp,
        certificates,
        read_protocol="pop3",
        read_host="127.0.0.1",
        read_port="995",
    )
    page = staff_client.post(NEW, data=form).get_data(as_text=True)
    assert "OAuth2 sign-in reads mail over IMAP. Choose IMAP." in page


def test_choosing_oauth2_swaps_the_password_fields(staff_client, google_sign_in):
    form = account_form(smtp_auth="oauth2-google", action="show-auth")
    fragment = staff_client.post(NEW, data=form, headers=HTMX).get_data(as_text=True)
    assert 'name="smtp_password"' not in fragment
    assert 'name="read_password"' not in fragment
    assert "Save and sign in with Google" in fragment
    assert "Google&#39;s OAuth2 tokens are accepted by Gmail" in fragment


def test_tokens_not_in_pages_or_logs(
    staff_client, linked, gmail_smtp, certificates, google_fake, caplog
):
    caplog.set_level(logging.DEBUG)
    form = oauth_form(gmail_smtp, certificates, action="test-send")
    fragment = staff_client.post(edit_url(linked), data=form, headers=HTMX).get_data(
        as_text=True
    )
    assert "Test send succeeded" in fragment
    # The fake's own request log shows tokens in URLs, as Google's would.
    portal_log = "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("portal")
    )
    assert "signed in to" in portal_log
    secrets = list(google_fake.refresh_tokens) + list(google_fake.access_tokens)
    for secret in secrets:
        assert secret not in fragment
        assert secret not in portal_log


def test_administrator_links_a_global_account(
    admin_client, google_sign_in, gmail_smtp, certificates
):
    form = oauth_form(gmail_smtp, certificates, security="everyone")
    response = save_and_sign_in(admin_client, form, f"{GLOBAL}/new/internet")
    account = the_account()
    assert account.owner_id is None
    assert response.headers["Location"].endswith(edit_url(account, GLOBAL))
    assert account.settings["oauth"]["identity"] == OAUTH2_USERNAME


def test_callback_foreign_state_ignored(
    staff_client, google_sign_in, gmail_smtp, certificates
):
    response = staff_client.post(NEW, data=oauth_form(gmail_smtp, certificates))
    assert response.status_code == 302
    answer = staff_client.get(f"{PERSONAL}/google/callback?state=forged&code=anything")
    assert answer.status_code == 302
    assert "refresh_token" not in the_account().secret_names()


def test_test_read_without_user_name(
    staff_client, linked, gmail_smtp, certificates, dovecot_oauth2
):
    form = imap_form(
        gmail_smtp, certificates, dovecot_oauth2, smtp_username="", action="test-read"
    )
    response = staff_client.post(edit_url(linked), data=form, headers=HTMX)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Enter the address to sign in as" in page


def test_unknown_provider_is_an_invalid_choice(staff_client, google_sign_in):
    form = account_form(
        smtp_auth="oauth2-evil", action="test-read", read_protocol="imap"
    )
    response = staff_client.post(NEW, data=form, headers=HTMX)
    assert response.status_code == 200
    assert "Not a valid choice" in response.get_data(as_text=True)


def test_choosing_oauth2_before_setup_says_so(staff_client):
    form = account_form(smtp_auth="oauth2-google", action="show-auth")
    fragment = staff_client.post(NEW, data=form, headers=HTMX).get_data(as_text=True)
    assert "Signing in with Google is not set up" in fragment
    assert "Save and sign in with Google" not in fragment
