"""Personal Microsoft 365 accounts: sign-in with PKCE, identity guard, rotation, reconnect."""

import logging
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.integrations.microsoft_tokens import CACHE
from portal.models import AuditEvent, EmailAccount, StaffMember
from portal.services.accounts import get_secret
from tests import factories
from tests.conftest import HTMX, make_staff, sign_in, version_fields
from tests.microsoft365.conftest import both_databases, connect_mailbox, follow

NEW = "/preferences/email/accounts/new/microsoft365"


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    return both_databases(request, tmp_path_factory)


@pytest.fixture
def alice_client(client, connected_tenant):
    make_staff("alice", email="alice@contoso.com")
    sign_in(client, "alice")
    return client


def the_account() -> EmailAccount:
    return db.session.scalar(
        select(EmailAccount).filter_by(account_type="microsoft365")
    )


def test_personal_type_needs_connected_tenant(staff_client, microsoft_app):
    page = staff_client.get("/preferences/email/accounts/new").get_data(as_text=True)
    assert "Microsoft 365 tenant to this portal yet" in page
    assert "/admin/integrations/microsoft365" not in page


def test_connect_page_prefills_own_address(alice_client):
    page = alice_client.get(NEW).get_data(as_text=True)
    assert "Connect Microsoft 365 mailbox" in page
    assert 'value="alice@contoso.com"' in page


def test_sign_in_request_uses_pkce(alice_client, connected_tenant):
    start = alice_client.post(
        NEW, data={"action": "connect", "address": "alice@contoso.com"}
    )
    location = start.headers["Location"]
    assert location.startswith(
        f"{connected_tenant.url}/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/authorize?"
    )
    query = parse_qs(urlsplit(location).query)
    assert query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    assert query["login_hint"] == ["alice@contoso.com"]
    assert query["scope"] == [
        "offline_access https://graph.microsoft.com/User.Read https://graph.microsoft.com/Mail.Send"
    ]
    assert query["redirect_uri"] == [
        "http://localhost/preferences/email/accounts/microsoft365/callback"
    ]


def test_connect_creates_account_with_encrypted_refresh_token(
    alice_client, connected_tenant
):
    response = connect_mailbox(alice_client, connected_tenant)
    account = the_account()
    assert response.headers["Location"] == f"/preferences/email/accounts/{account.id}"
    assert account.owner_id is not None
    assert account.email_address == "alice@contoso.com"
    assert account.from_name == "Alice Archer"
    assert account.settings["user_id"] == "a1b2c3d4-0000-4000-8000-000000000001"
    (secret,) = account.secrets
    assert secret.name == "refresh_token"
    assert get_secret(account, "refresh_token") in connected_tenant.refresh_tokens
    assert get_secret(account, "refresh_token") not in secret.ciphertext

    page = alice_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Connected alice@contoso.com" in page
    assert "Test read" not in page  # personal accounts only send


def test_alias_address_is_accepted(alice_client, connected_tenant):
    connected_tenant.sign_in_as = "alice@contoso.com"  # the user name, not the alias
    connect_mailbox(alice_client, connected_tenant, "a.archer@contoso.com")
    assert the_account().email_address == "a.archer@contoso.com"


def test_sign_in_as_someone_else_is_refused(alice_client, connected_tenant):
    connected_tenant.sign_in_as = "bob@contoso.com"
    response = connect_mailbox(alice_client, connected_tenant)
    page = alice_client.get(response.headers["Location"]).get_data(as_text=True)
    assert (
        "You signed in to Microsoft as bob@contoso.com, but the mailbox being connected is alice@contoso.com"
        in page
    )
    assert "Nothing was changed" in page
    assert the_account() is None
    event = db.session.scalar(select(AuditEvent).filter_by(action="account.sign_in"))
    assert event.outcome == "denied"


@pytest.mark.parametrize("case", ["missing", "reused", "other session"])
def test_sign_in_state_is_checked(alice_client, client, app, connected_tenant, case):
    start = alice_client.post(
        NEW, data={"action": "connect", "address": "alice@contoso.com"}
    )
    back = follow(connected_tenant, start.headers["Location"])
    if case == "missing":
        back = back.split("state=")[0]
    elif case == "reused":
        alice_client.get(back)
        db.session.delete(the_account())
        db.session.commit()
    else:
        make_staff("carol")
        other = app.test_client()
        sign_in(other, "carol")
        alice_client = other
    page = alice_client.get(back, follow_redirects=True).get_data(as_text=True)
    assert "did not match a sign-in started in this browser session" in page
    assert the_account() is None


def test_declined_sign_in_is_explained(alice_client, connected_tenant):
    connected_tenant.consent_answer = "access_denied"
    response = connect_mailbox(alice_client, connected_tenant)
    page = alice_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "declined to grant the requested permissions" in page
    assert the_account() is None


def test_test_send_uses_delegated_me_send_mail(alice_client, connected_tenant):
    connect_mailbox(alice_client, connected_tenant)
    account = the_account()
    fragment = alice_client.post(
        f"/preferences/email/accounts/{account.id}",
        data={
            "action": "test-send",
            "test_to": "friend@example.com",
            "friendly_name": "Mine",
        },
        headers=HTMX,
    ).get_data(as_text=True)
    assert "Test send succeeded" in fragment
    (sent,) = connected_tenant.sent
    assert sent["path"] == "/v1.0/me/sendMail"
    assert sent["from"] == "alice@contoso.com"
    db.session.refresh(account)
    assert account.last_send_test_ok is True


def test_stale_save_is_refused(alice_client, connected_tenant):
    connect_mailbox(alice_client, connected_tenant)
    account = the_account()
    url = f"/preferences/email/accounts/{account.id}"
    opened = version_fields(alice_client.get(url).get_data(as_text=True))
    names = {"friendly_name": "Mine", "from_name": "Alice", "enabled": "y"}

    first = {**names, "description": "Theirs", **opened}
    assert alice_client.post(url, data=first).status_code == 302
    db.session.refresh(account)
    assert account.version == int(opened["version"]) + 1

    second = {**names, "description": "My edit", **opened}
    response = alice_client.post(url, data=second)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Someone else saved this account" in page
    assert "Description: Theirs" in page
    assert "My edit" in page  # the typed value stays

    third = {**second, **version_fields(page)}
    assert alice_client.post(url, data=third).status_code == 302
    db.session.refresh(account)
    assert account.description == "My edit"


def test_refresh_token_rotation_is_saved(alice_client, connected_tenant):
    connect_mailbox(alice_client, connected_tenant)
    account = the_account()
    first = get_secret(account, "refresh_token")
    url = f"/preferences/email/accounts/{account.id}"
    data = {
        "action": "test-send",
        "test_to": "friend@example.com",
        "friendly_name": "Mine",
    }

    for _ in range(2):
        connected_tenant.expire_tokens()
        fragment = alice_client.post(url, data=data, headers=HTMX).get_data(
            as_text=True
        )
        assert "Test send succeeded" in fragment

    db.session.expire_all()
    latest = get_secret(the_account(), "refresh_token")
    assert latest != first
    assert connected_tenant.refresh_tokens[first]["state"] == "used"
    assert connected_tenant.refresh_tokens[latest]["state"] == "valid"
    assert connected_tenant.token_count("refresh_token") == 2


@pytest.mark.parametrize("loss", ["revoked sign-in", "revoked consent"])
def test_lost_grant_means_reconnect_needed(alice_client, connected_tenant, loss):
    alice = db.session.scalar(select(StaffMember).filter_by(username="alice"))
    other = factories.account("Other account", owner=alice)
    db.session.commit()
    connect_mailbox(alice_client, connected_tenant)
    account = the_account()
    if loss == "revoked sign-in":
        connected_tenant.revoke_sign_ins("alice@contoso.com")
    else:
        connected_tenant.app.delegated_consent = False
    connected_tenant.expire_tokens()

    url = f"/preferences/email/accounts/{account.id}"
    data = {
        "action": "test-send",
        "test_to": "friend@example.com",
        "friendly_name": "Mine",
    }
    fragment = alice_client.post(url, data=data, headers=HTMX).get_data(as_text=True)
    assert "Reconnect needed" in fragment
    assert "Press Reconnect" in fragment or "presses Reconnect" in fragment

    db.session.expire_all()
    assert the_account().settings["reconnect_needed"] is True
    grid = alice_client.get("/preferences/email/accounts").get_data(as_text=True)
    assert "Reconnect needed" in grid
    assert 'name="action" value="reconnect"' in grid

    # A second send fails at once, without asking Microsoft again.
    before = connected_tenant.token_count("refresh_token")
    alice_client.post(url, data=data, headers=HTMX)
    assert connected_tenant.token_count("refresh_token") == before

    # Reconnecting as the same user brings the account back.
    connected_tenant.app.delegated_consent = True
    start = alice_client.post(url, data={"action": "reconnect"})
    back = alice_client.get(follow(connected_tenant, start.headers["Location"]))
    assert back.headers["Location"] == url
    db.session.expire_all()
    assert the_account().settings["reconnect_needed"] is False
    fragment = alice_client.post(url, data=data, headers=HTMX).get_data(as_text=True)
    assert "Test send succeeded" in fragment
    assert other.friendly_name in grid  # the other account is unaffected


def test_reconnect_as_someone_else_changes_nothing(alice_client, connected_tenant):
    connect_mailbox(alice_client, connected_tenant)
    account = the_account()
    before = get_secret(account, "refresh_token")
    connected_tenant.sign_in_as = "bob@contoso.com"
    url = f"/preferences/email/accounts/{account.id}"
    start = alice_client.post(url, data={"action": "reconnect"})
    alice_client.get(follow(connected_tenant, start.headers["Location"]))
    db.session.expire_all()
    assert get_secret(the_account(), "refresh_token") == before


def test_no_token_or_secret_in_logs_or_pages(alice_client, connected_tenant, caplog):
    caplog.set_level(logging.DEBUG)
    connect_mailbox(alice_client, connected_tenant)
    account = the_account()
    connected_tenant.expire_tokens()
    page = alice_client.post(
        f"/preferences/email/accounts/{account.id}",
        data={
            "action": "test-send",
            "test_to": "friend@example.com",
            "friendly_name": "Mine",
        },
    ).get_data(as_text=True)
    page += alice_client.get("/preferences/email/accounts").get_data(as_text=True)
    audit = " ".join(
        str(event.changes) + event.detail
        for event in db.session.scalars(select(AuditEvent))
    )

    secrets = connected_tenant.issued + ["fake~client~secret~value"]
    assert len(secrets) > 3
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in page
        assert secret not in audit
    assert "Bearer" not in caplog.text


def test_owner_only(alice_client, connected_tenant, app):
    connect_mailbox(alice_client, connected_tenant)
    account = the_account()
    make_staff("mallory")
    other = app.test_client()
    sign_in(other, "mallory")
    response = other.post(
        f"/preferences/email/accounts/{account.id}", data={"action": "reconnect"}
    )
    assert response.status_code == 404
    CACHE.clear()
