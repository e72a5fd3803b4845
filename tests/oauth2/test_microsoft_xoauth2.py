"""An Internet account linked to a Microsoft sign-in: SMTP with XOAUTH2."""

from sqlalchemy import select

from portal.extensions import db
from portal.integrations.microsoft_tokens import CACHE
from portal.models import EmailAccount
from portal.services.accounts import get_secret
from tests.conftest import HTMX
from tests.oauth2.conftest import PERSONAL, follow_sign_in, oauth_form, query

NEW = f"{PERSONAL}/new/internet"
ALICE = "alice@contoso.com"


def microsoft_form(server, certificates, **overrides):
    values = {"smtp_username": ALICE, "email_address": ALICE}
    values.update(overrides)
    return oauth_form(server, certificates, provider="microsoft", **values)


def the_account() -> EmailAccount:
    db.session.expire_all()
    return db.session.scalars(select(EmailAccount)).one()


def save_and_sign_in(client, server, certificates) -> EmailAccount:
    """Save a new account signing in as Alice and finish the sign-in."""
    response = client.post(NEW, data=microsoft_form(server, certificates))
    client.get(follow_sign_in(response.headers["Location"]))
    return the_account()


def test_microsoft_sign_in_then_send(
    staff_client, microsoft_sign_in, outlook_smtp, certificates
):
    response = staff_client.post(NEW, data=microsoft_form(outlook_smtp, certificates))
    location = response.headers["Location"]
    assert location.startswith(microsoft_sign_in.url)
    scopes = query(location)["scope"].split()
    assert "https://outlook.office.com/SMTP.Send" in scopes
    assert "https://outlook.office.com/IMAP.AccessAsUser.All" in scopes
    assert {"openid", "offline_access"} <= set(scopes)
    assert query(location)["login_hint"] == ALICE

    back = staff_client.get(follow_sign_in(location))
    account = the_account()
    assert back.headers["Location"].endswith(f"{PERSONAL}/{account.id}")
    assert account.settings["oauth"] == {
        "provider": "microsoft",
        "identity": ALICE,
        "scopes": account.settings["oauth"]["scopes"],
    }
    page = staff_client.get(f"{PERSONAL}/{account.id}").get_data(as_text=True)
    assert f"Signed in with Microsoft as {ALICE}" in page

    # The first test redeems the stored refresh token, which rotates.
    CACHE.clear()
    first_refresh_token = get_secret(account, "refresh_token")
    form = microsoft_form(outlook_smtp, certificates, action="test-send")
    fragment = staff_client.post(
        f"{PERSONAL}/{account.id}", data=form, headers=HTMX
    ).get_data(as_text=True)
    assert "Test send succeeded" in fragment, fragment
    (received,) = outlook_smtp.messages
    assert received.login == ALICE
    rotated = get_secret(the_account(), "refresh_token")
    assert rotated
    assert rotated != first_refresh_token


def test_sign_in_as_other_rejected(
    staff_client, microsoft_sign_in, outlook_smtp, certificates
):
    microsoft_sign_in.sign_in_as = "bob@contoso.com"
    response = staff_client.post(NEW, data=microsoft_form(outlook_smtp, certificates))
    back = staff_client.get(follow_sign_in(response.headers["Location"]))
    account = the_account()
    page = staff_client.get(back.headers["Location"]).get_data(as_text=True)
    assert "You signed in to Microsoft as bob@contoso.com" in page
    assert "refresh_token" not in account.secret_names()


def test_revoked_sessions_reconnect_needed(
    staff_client, microsoft_sign_in, outlook_smtp, certificates
):
    account = save_and_sign_in(staff_client, outlook_smtp, certificates)
    microsoft_sign_in.revoke_sign_ins(ALICE)
    CACHE.clear()
    form = microsoft_form(outlook_smtp, certificates, action="test-send")
    fragment = staff_client.post(
        f"{PERSONAL}/{account.id}", data=form, headers=HTMX
    ).get_data(as_text=True)
    assert "failed at the authentication step" in fragment
    assert "Save and sign in with Microsoft again" in fragment
    assert the_account().settings["reconnect_needed"] is True
    assert outlook_smtp.messages == []


def test_smtp_refusal_names_the_scope(
    staff_client, microsoft_sign_in, smtp_server, certificates
):
    rejecting_server = smtp_server(
        tls="starttls",
        certificate=certificates.server,
        token_check=lambda user, token: "https://outlook.office.com/SMTP.Send",
    )
    account = save_and_sign_in(staff_client, rejecting_server, certificates)
    form = microsoft_form(rejecting_server, certificates, action="test-send")
    fragment = staff_client.post(
        f"{PERSONAL}/{account.id}", data=form, headers=HTMX
    ).get_data(as_text=True)
    assert "asks for the scope https://outlook.office.com/SMTP.Send" in fragment
    assert "535" in fragment
    assert rejecting_server.messages == []
