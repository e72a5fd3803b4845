"""Internet accounts on Microsoft 365 hosts: the warning and Convert to Microsoft 365."""

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import (
    AccountGrant,
    AuditEvent,
    EmailAccount,
    ModuleAccount,
    StaffMember,
)
from portal.services.accounts import set_secret
from tests import factories
from tests.conftest import make_staff, sign_in
from tests.microsoft365.conftest import follow

HELPDESK_ID = "a1b2c3d4-0000-4000-8000-000000000003"


def office365_account(
    address="helpdesk@contoso.com", owner=None, host="smtp.office365.com"
):
    account = factories.account("Helpdesk", owner=owner, security="permissions")
    account.email_address = address
    account.from_name = "Contoso Helpdesk"
    account.description = "The shared helpdesk mailbox"
    account.settings = {
        "smtp": {
            "host": host,
            "port": 587,
            "security": "starttls",
            "auth": "password",
            "username": address,
        },
        "read": {
            "protocol": "imap",
            "host": "outlook.office365.com",
            "port": 993,
            "security": "ssl",
            "username": address,
            "folder": "INBOX",
        },
        "trusted_fingerprint": "",
    }
    set_secret(account, "smtp_password", "old-password")
    set_secret(account, "read_password", "old-password")
    account.last_send_test_ok = False
    db.session.commit()
    return account


def test_warning_and_convert_button_on_internet_account(admin_client, connected_tenant):
    account = office365_account()
    page = admin_client.get(f"/admin/email-accounts/{account.id}").get_data(
        as_text=True
    )
    assert (
        "smtp.office365.com belongs to Microsoft 365, which refuses password sign-in"
        in page
    )
    assert (
        f'formaction="/admin/email-accounts/{account.id}/convert-to-microsoft365"'
        in page
    )
    assert "Convert to Microsoft 365 account" in page


def test_no_warning_for_other_hosts(admin_client, connected_tenant):
    account = office365_account(host="smtp.example.com")
    account.settings = {**account.settings, "read": None}
    db.session.commit()
    page = admin_client.get(f"/admin/email-accounts/{account.id}").get_data(
        as_text=True
    )
    assert "belongs to Microsoft 365" not in page
    response = admin_client.post(
        f"/admin/email-accounts/{account.id}/convert-to-microsoft365"
    )
    assert response.status_code == 400


def test_offer_links_to_integration_when_not_connected(admin_client, microsoft_app):
    account = office365_account()
    page = admin_client.get(f"/admin/email-accounts/{account.id}").get_data(
        as_text=True
    )
    assert "Connect the Microsoft 365 tenant first." in page
    assert 'href="/admin/integrations/microsoft365"' in page


def test_convert_keeps_identity_and_everything_that_uses_it(
    admin_client, connected_tenant
):
    account = office365_account()
    group = factories.skillgroup("Networks")
    factories.grant(account, skillgroup=group)
    db.session.add(ModuleAccount(module="email_manager", account_id=account.id))
    db.session.commit()
    account_id = account.id

    response = admin_client.post(
        f"/admin/email-accounts/{account_id}/convert-to-microsoft365"
    )
    assert response.headers["Location"] == f"/admin/email-accounts/{account_id}"

    db.session.expire_all()
    converted = db.session.get(EmailAccount, account_id)
    assert converted.account_type == "microsoft365"
    assert converted.friendly_name == "Helpdesk"
    assert converted.description == "The shared helpdesk mailbox"
    assert converted.from_name == "Contoso Helpdesk"
    assert converted.security == "permissions"
    assert converted.email_address == "helpdesk@contoso.com"
    assert converted.settings["user_id"] == HELPDESK_ID
    assert converted.secret_names() == set()  # the passwords are gone
    assert converted.last_send_test_ok is None
    assert (
        db.session.scalar(select(AccountGrant).filter_by(account_id=account_id))
        is not None
    )
    assert db.session.get(ModuleAccount, "email_manager").account_id == account_id
    event = db.session.scalar(select(AuditEvent).filter_by(action="account.convert"))
    assert event.changes["account_type"] == ["internet", "microsoft365"]

    page = admin_client.get(f"/admin/email-accounts/{account_id}").get_data(
        as_text=True
    )
    assert "is now a Microsoft 365 account" in page
    assert 'id="chosen-mailbox"' in page
    sent = admin_client.post(
        f"/admin/email-accounts/{account_id}",
        data={
            "action": "test-send",
            "user_id": HELPDESK_ID,
            "mailbox": "helpdesk@contoso.com",
            "test_to": "someone@example.com",
        },
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)
    assert "Test send succeeded" in sent


def test_convert_of_unknown_address_changes_nothing(admin_client, connected_tenant):
    account = office365_account(address="nobody@contoso.com")
    page = admin_client.post(
        f"/admin/email-accounts/{account.id}/convert-to-microsoft365",
        follow_redirects=True,
    ).get_data(as_text=True)
    assert "No mailbox with the address nobody@contoso.com was found" in page
    db.session.expire_all()
    assert db.session.get(EmailAccount, account.id).account_type == "internet"


@pytest.mark.parametrize("signed_in_as", ["alice@contoso.com", "bob@contoso.com"])
def test_personal_convert_signs_in_as_the_mailbox(
    client, connected_tenant, signed_in_as
):
    alice = make_staff("alice", email="alice@contoso.com")
    sign_in(client, "alice")
    account = office365_account(address="alice@contoso.com", owner=alice)
    connected_tenant.sign_in_as = signed_in_as

    start = client.post(
        f"/preferences/email/accounts/{account.id}/convert-to-microsoft365"
    )
    back = client.get(follow(connected_tenant, start.headers["Location"]))
    db.session.expire_all()
    converted = db.session.get(EmailAccount, account.id)
    if signed_in_as == "alice@contoso.com":
        assert back.headers["Location"] == f"/preferences/email/accounts/{account.id}"
        assert converted.account_type == "microsoft365"
        assert converted.secret_names() == {"refresh_token"}
        assert converted.owner_id == alice.id
    else:
        assert converted.account_type == "internet"
        assert converted.secret_names() == {"smtp_password", "read_password"}


def test_other_staff_cannot_convert(client, connected_tenant):
    alice = make_staff("alice", email="alice@contoso.com")
    make_staff("bob")
    account = office365_account(address="alice@contoso.com", owner=alice)
    sign_in(client, "bob")
    response = client.post(
        f"/preferences/email/accounts/{account.id}/convert-to-microsoft365"
    )
    assert response.status_code == 404
    assert db.session.scalar(select(StaffMember).filter_by(username="bob"))
