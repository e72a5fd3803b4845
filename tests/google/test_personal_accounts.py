"""Personal Google accounts: sign-in with PKCE, identity guard, sending, reconnect."""

import html
import logging
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select

from portal.extensions import db
from portal.integrations import google as integration
from portal.models import AccountSecret, AuditEvent, EmailAccount, OutboxMessage
from portal.services import delivery, sending
from portal.services.access import StaffPrincipal
from portal.services.delivery import DeliveryPolicy
from tests import factories
from tests.conftest import HTMX, make_staff, sign_in, version_fields

ACCOUNTS = "/preferences/email/accounts"
NEW = f"{ACCOUNTS}/new/google"
FAST = DeliveryPolicy(first_retry_seconds=0.0, max_retry_seconds=0.0, timeout=5.0)


def personal_form(**overrides):
    data = {
        "mailbox": "alice@gmail.com",
        "test_to": "someone@example.net",
        "friendly_name": "My Gmail",
        "description": "",
        "from_name": "Alice",
        "enabled": "y",
        "action": "save",
    }
    data.update(overrides)
    return {name: value for name, value in data.items() if value is not None}


def start_sign_in(client, url=NEW, **overrides):
    response = client.post(
        url, data=personal_form(action="connect", **overrides), headers=HTMX
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.headers["HX-Redirect"]


def consent(location):
    """Let the fake's consent screen answer, and return the redirect back to the portal."""
    response = requests.get(location, allow_redirects=False, timeout=5)
    assert response.status_code == 302, response.text
    return response.headers["Location"].removeprefix("http://localhost")


def connect(client, url=NEW, **overrides):
    """Sign in with Google from the form at ``url``; return the portal's answer."""
    return client.get(consent(start_sign_in(client, url, **overrides)))


def flashes(client, url=NEW):
    return client.get(url).get_data(as_text=True)


@pytest.fixture
def connected(staff_client, oauth_client):
    """A staff member who signed in as alice@gmail.com on the new-account form."""
    response = connect(staff_client)
    assert response.headers["Location"].endswith(NEW)
    return staff_client


def test_type_waits_for_oauth_client(staff_client, google):
    page = staff_client.get(f"{ACCOUNTS}/new").get_data(as_text=True)
    assert "not set up signing in with Google yet" in page
    assert "/admin/integrations/google" not in page  # staff cannot fix it


def test_authorization_request_is_offline_consent_with_pkce(
    staff_client, oauth_client, google
):
    location = start_sign_in(staff_client)
    url = urlsplit(location)
    params = {name: values[0] for name, values in parse_qs(url.query).items()}

    assert location.startswith(google.auth_url)
    assert params["client_id"] == oauth_client.client_id
    assert params["response_type"] == "code"
    assert params["access_type"] == "offline"
    assert params["prompt"] == "consent"
    assert params["login_hint"] == "alice@gmail.com"
    assert params["code_challenge_method"] == "S256"
    assert len(params["code_challenge"]) == 43
    assert params["scope"].split() == ["openid", "email", integration.SCOPE_SEND]
    assert (
        params["redirect_uri"]
        == "http://localhost/preferences/email/accounts/google/callback"
    )
    assert params["state"]


def test_without_javascript_a_page_links_to_google(staff_client, oauth_client, google):
    response = staff_client.post(NEW, data=personal_form(action="connect"))
    page = html.unescape(response.get_data(as_text=True))
    assert response.status_code == 200
    assert "Continue to Google" in page
    assert f'href="{google.auth_url}?response_type=code' in page


def test_connect_needs_an_address(staff_client, oauth_client):
    response = staff_client.post(
        NEW, data=personal_form(action="connect", mailbox=""), headers=HTMX
    )
    assert "HX-Redirect" not in response.headers
    assert "Enter your Google address." in response.get_data(as_text=True)


def test_read_adds_only_the_read_scope(staff_client, oauth_client):
    params = parse_qs(urlsplit(start_sign_in(staff_client, read_mail="y")).query)
    assert params["scope"][0].split() == [
        "openid",
        "email",
        integration.SCOPE_SEND,
        integration.SCOPE_READ,
    ]


def test_sign_in_then_test_and_save(connected, google):
    page = flashes(connected)
    assert "Connected alice@gmail.com" in page
    assert "Connected as alice@gmail.com (send only)" in page
    assert 'value="My Gmail"' in page  # typed values survive the round trip
    verifier = [
        r for r in google.token_requests if r["grant_type"] == "authorization_code"
    ][-1]["code_verifier"]
    assert verifier and len(verifier) >= 43

    fragment = connected.post(
        NEW, data=personal_form(action="test-send"), headers=HTMX
    ).get_data(as_text=True)
    assert "Test send succeeded" in fragment
    (sent,) = google.sent
    assert sent.mailbox == "alice@gmail.com"

    response = connected.post(NEW, data=personal_form())
    assert response.status_code == 302
    account = db.session.scalars(select(EmailAccount)).one()
    assert account.owner_id is not None
    assert account.email_address == "alice@gmail.com"
    assert account.settings["auth"] == "oauth"
    assert account.settings["scopes"] == sorted(
        ["openid", "email", integration.SCOPE_SEND]
    )
    (secret,) = db.session.scalars(select(AccountSecret)).all()
    assert secret.name == "refresh_token"
    (grant,) = google.refresh_tokens
    assert grant not in secret.ciphertext
    assert integration.get_account_secret(account, "refresh_token") == grant
    for event in db.session.scalars(select(AuditEvent)):
        assert grant not in str(event.changes) + event.detail


def test_saved_account_sends_through_outbox(connected, google):
    connected.post(NEW, data=personal_form())
    account = db.session.scalars(select(EmailAccount)).one()
    sending.queue_message(
        StaffPrincipal(account.owner_id),
        account.id,
        sending.Draft(to=["friend@example.net"], subject="From my Gmail", body="Hi"),
    )
    db.session.commit()

    assert delivery.run_once("test-worker", FAST) == 1

    (sent,) = google.sent
    assert sent.message["Subject"] == "From my Gmail"
    assert sent.recipients == ["friend@example.net"]


def test_save_without_sign_in_is_refused(staff_client, oauth_client):
    page = staff_client.post(NEW, data=personal_form()).get_data(as_text=True)
    assert "Press Connect Google mailbox" in page
    assert db.session.scalars(select(EmailAccount)).all() == []


def test_identity_guard_rejects_other_address(staff_client, oauth_client, google):
    google.sign_in_as = "hannah@example.com"
    response = connect(staff_client)
    page = html.unescape(
        staff_client.get(response.headers["Location"]).get_data(as_text=True)
    )
    assert (
        "You signed in to Google as hannah@example.com, but this account is for alice@gmail.com."
        in page
    )
    page = staff_client.post(NEW, data=personal_form()).get_data(as_text=True)
    assert "Press Connect Google mailbox" in page


def test_unticked_scope_is_reported(staff_client, oauth_client, google):
    google.declined_scopes = {integration.SCOPE_SEND}
    response = connect(staff_client)
    page = html.unescape(
        staff_client.get(response.headers["Location"]).get_data(as_text=True)
    )
    assert f"Google's consent left out {integration.SCOPE_SEND}" in page


def test_declined_consent_is_reported(staff_client, oauth_client, google):
    google.deny_consent = True
    response = connect(staff_client)
    page = html.unescape(
        staff_client.get(response.headers["Location"]).get_data(as_text=True)
    )
    assert "you declined the consent" in page


def test_callback_with_wrong_state_is_refused(staff_client, oauth_client):
    callback = consent(start_sign_in(staff_client))
    forged = callback.replace("state=", "state=x")
    response = staff_client.get(forged)
    assert response.headers["Location"].endswith(ACCOUNTS)
    page = staff_client.get(ACCOUNTS).get_data(as_text=True)
    assert "was not started here" in page
    # The real answer cannot be replayed either: the pending sign-in is gone.
    response = staff_client.get(callback)
    assert response.headers["Location"].endswith(ACCOUNTS)


def test_wrong_code_verifier_is_rejected(oauth_client, google, app):
    with app.test_request_context():
        request_ = integration.authorization_request(
            integration.load_oauth_client(),
            "http://localhost/preferences/email/accounts/google/callback",
            "alice@gmail.com",
            integration.personal_scopes(False),
        )
    code = parse_qs(urlsplit(consent(request_.url)).query)["code"][0]
    with pytest.raises(integration.TransportError) as caught:
        integration.exchange_code(
            integration.load_oauth_client(),
            code=code,
            code_verifier="x" * 64,
            redirect_uri="http://localhost/preferences/email/accounts/google/callback",
            expected_address="alice@gmail.com",
            required_scopes=integration.personal_scopes(False),
        )
    assert caught.value.reply == "invalid_grant: Invalid code verifier."


def test_reading_needs_the_read_grant(connected):
    page = connected.post(NEW, data=personal_form(read_mail="y")).get_data(as_text=True)
    assert "needs Google's permission to read" in html.unescape(page)


def test_read_grant_allows_test_read(staff_client, oauth_client, google):
    connect(staff_client, read_mail="y")
    google.users["alice@gmail.com"].inbox_total = 1
    fragment = staff_client.post(
        NEW, data=personal_form(action="test-read", read_mail="y"), headers=HTMX
    ).get_data(as_text=True)
    assert "Opened the inbox of alice@gmail.com: 1 message." in fragment


def test_revoked_grant_needs_reconnect_and_spares_others(connected, google):
    connected.post(NEW, data=personal_form())
    account = db.session.scalars(select(EmailAccount)).one()
    other = factories.account("Other", owner=account.owner)
    db.session.commit()
    google.revoke_grants("alice@gmail.com")
    integration.clear_token_cache()

    sending.queue_message(
        StaffPrincipal(account.owner_id),
        account.id,
        sending.Draft(to=["friend@example.net"], subject="Lost", body="Hi"),
    )
    db.session.commit()
    delivery.run_once("test-worker", FAST)

    row = db.session.scalars(select(OutboxMessage)).one()
    db.session.refresh(row)
    db.session.refresh(account)
    assert row.status == "failed"
    assert "revoked or has expired" in row.last_error
    assert account.settings["reconnect_needed"] is True
    db.session.refresh(other)
    assert "reconnect_needed" not in other.settings
    grid = connected.get(ACCOUNTS).get_data(as_text=True)
    assert "Reconnect needed" in grid
    edit = connected.get(f"{ACCOUNTS}/{account.id}").get_data(as_text=True)
    assert "Google no longer accepts the sign-in stored for alice@gmail.com" in edit
    assert ">Reconnect<" in edit

    response = connect(connected, url=f"{ACCOUNTS}/{account.id}")
    assert response.headers["Location"].endswith(f"{ACCOUNTS}/{account.id}")
    db.session.refresh(account)
    assert account.settings["reconnect_needed"] is False
    fragment = connected.post(
        f"{ACCOUNTS}/{account.id}", data=personal_form(action="test-send"), headers=HTMX
    ).get_data(as_text=True)
    assert "Test send succeeded" in fragment


def test_sign_in_keeps_opened_version(connected, google):
    connected.post(NEW, data=personal_form())
    account = db.session.scalars(select(EmailAccount)).one()
    url = f"{ACCOUNTS}/{account.id}"
    page = connected.get(url).get_data(as_text=True)
    opened = version_fields(page)
    other_tab = personal_form(from_name="Alice Other", **opened)
    assert connected.post(url, data=other_tab).status_code == 302

    # Reconnecting from the form opened before that save keeps its version.
    connect(connected, url=url, description="My edit", **opened)
    page = connected.get(url).get_data(as_text=True)
    assert "My edit" in page  # the typed value survives the round trip
    assert f'name="version" value="{opened["version"]}"' in page

    response = connected.post(url, data=personal_form(description="My edit", **opened))
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Someone else saved this account" in page
    assert "From display name: Alice Other" in page
    db.session.refresh(account)
    assert account.description == ""


def test_test_send_marks_revoked_grant(connected, google):
    connected.post(NEW, data=personal_form())
    account = db.session.scalars(select(EmailAccount)).one()
    google.revoke_grants("alice@gmail.com")
    integration.clear_token_cache()

    fragment = connected.post(
        f"{ACCOUNTS}/{account.id}", data=personal_form(action="test-send"), headers=HTMX
    ).get_data(as_text=True)

    assert "Press Reconnect" in fragment
    assert "invalid_grant: Token has been expired or revoked." in fragment
    db.session.refresh(account)
    assert account.settings["reconnect_needed"] is True


def test_other_staff_cannot_reconnect_the_account(connected, google):
    connected.post(NEW, data=personal_form())
    account = db.session.scalars(select(EmailAccount)).one()
    make_staff("bob")
    sign_in(connected, "bob")

    response = connected.post(
        f"{ACCOUNTS}/{account.id}", data=personal_form(action="connect")
    )

    assert response.status_code == 404


def test_no_secret_reaches_logs_or_pages(connected, google, caplog, oauth_client):
    caplog.set_level(logging.DEBUG)
    pages = [connected.get(NEW).get_data(as_text=True)]
    pages.append(
        connected.post(
            NEW, data=personal_form(action="test-send"), headers=HTMX
        ).get_data(as_text=True)
    )
    connected.post(NEW, data=personal_form())
    account = db.session.scalars(select(EmailAccount)).one()
    pages.append(connected.get(f"{ACCOUNTS}/{account.id}").get_data(as_text=True))

    secrets = [
        oauth_client.client_secret,
        *google.refresh_tokens,
        *google.access_tokens,
    ]
    for secret in secrets:
        assert secret not in caplog.text
        for page in pages:
            assert secret not in page
