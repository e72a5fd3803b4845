"""The account pages: create, validate, edit, secrets, enable, delete, scopes."""

import re

import pytest
from sqlalchemy import select

from portal import crypto
from portal.extensions import db
from portal.models import EmailAccount
from portal.services.accounts import get_secret
from tests.conftest import HTMX, make_staff, sign_in

PERSONAL = "/preferences/email/accounts"
GLOBAL = "/admin/email-accounts"
SECRET = "pässwörd-Ω-123"


def account_form(**overrides):
    data = {
        "email_address": "helpdesk@example.com",
        "smtp_host": "smtp.example.test",
        "smtp_port": "587",
        "smtp_security": "starttls",
        "smtp_auth": "password",
        "smtp_username": "helpdesk@example.com",
        "smtp_password": SECRET,
        "read_protocol": "",
        "read_host": "",
        "read_port": "",
        "read_security": "ssl",
        "read_username": "",
        "read_password": "",
        "read_folder": "INBOX",
        "trusted_fingerprint": "",
        "test_to": "",
        "friendly_name": "Helpdesk",
        "description": "",
        "from_name": "The Helpdesk",
        "enabled": "y",
        "action": "save",
    }
    data.update(overrides)
    return data


def accounts():
    return list(db.session.scalars(select(EmailAccount).order_by(EmailAccount.id)))


def error_beside(page: str, field_id: str) -> str:
    match = re.search(rf'id="{field_id}-error">([^<]*)<', page)
    return match.group(1) if match else ""


def test_create_personal_account(staff_client, staff):
    response = staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    assert response.status_code == 302
    (account,) = accounts()
    assert account.owner_id == staff.id
    assert account.settings["smtp"] == {
        "host": "smtp.example.test",
        "port": 587,
        "security": "starttls",
        "auth": "password",
        "username": "helpdesk@example.com",
    }
    assert get_secret(account, "smtp_password") == SECRET


def test_password_is_encrypted_at_rest(staff_client):
    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    (account,) = accounts()
    (secret,) = account.secrets
    assert SECRET not in secret.ciphertext
    assert crypto.decrypt(secret.ciphertext) == SECRET


def test_grid_lists_account(staff_client):
    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    page = staff_client.get(PERSONAL).get_data(as_text=True)
    assert "Helpdesk" in page
    assert "helpdesk@example.com" in page
    assert "Not tested" in page


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("smtp_port", "70000", "65535"),
        ("smtp_port", "abc", "number"),
        ("smtp_host", "smtp://mail.example.test", ""),
        ("smtp_host", "", "SMTP server"),
        ("email_address", "not-an-address", ""),
        ("email_address", "", "email address"),
        ("from_name", "Evil\r\nBcc: victim@example.com", ""),
        ("friendly_name", "", "friendly name"),
        ("trusted_fingerprint", "12:34", ""),
        ("smtp_username", "", "user name"),
    ],
)
def test_invalid_field_gets_message_beside_it(staff_client, field, value, message):
    response = staff_client.post(
        f"{PERSONAL}/new/internet", data=account_form(**{field: value})
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    beside = error_beside(page, field)
    assert beside, f"no error shown beside {field}"
    assert message.lower() in beside.lower()
    assert accounts() == []


def test_failed_save_keeps_typed_values(staff_client):
    form = account_form(smtp_port="0", description="Night shift mailbox")
    page = staff_client.post(f"{PERSONAL}/new/internet", data=form).get_data(
        as_text=True
    )
    assert 'value="smtp.example.test"' in page
    assert "Night shift mailbox" in page
    assert 'value="The Helpdesk"' in page


def test_failed_save_never_renders_password_but_keeps_it(staff_client, staff):
    page = staff_client.post(
        f"{PERSONAL}/new/internet", data=account_form(smtp_port="0")
    ).get_data(as_text=True)
    assert SECRET not in page
    sealed = re.search(r'name="smtp_password_sealed" value="([^"]+)"', page).group(1)

    # The second attempt leaves the password field blank, as the browser does.
    form = account_form(smtp_password="", smtp_password_sealed=sealed)
    assert staff_client.post(f"{PERSONAL}/new/internet", data=form).status_code == 302
    (account,) = accounts()
    assert get_secret(account, "smtp_password") == SECRET


def test_sealed_password_of_other_staff_is_ignored(app, client, staff):
    sealed = crypto.seal("someone else's", staff_id=staff.id + 1000)
    sign_in(client, "alice")
    form = account_form(smtp_password="", smtp_password_sealed=sealed)
    page = client.post(f"{PERSONAL}/new/internet", data=form).get_data(as_text=True)
    assert "Enter the password" in error_beside(page, "smtp_password")


def test_edit_keeps_stored_password_when_blank(staff_client):
    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    (account,) = accounts()
    page = staff_client.get(f"{PERSONAL}/{account.id}").get_data(as_text=True)
    assert SECRET not in page
    assert "A value is stored" in page

    form = account_form(smtp_password="", friendly_name="Renamed")
    assert (
        staff_client.post(
            f"{PERSONAL}/{account.id}", data={**form, "version": "1"}
        ).status_code
        == 302
    )
    db.session.expire_all()
    assert account.friendly_name == "Renamed"
    assert get_secret(account, "smtp_password") == SECRET


def test_switching_auth_off_removes_password(staff_client):
    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    (account,) = accounts()
    form = account_form(smtp_auth="none", smtp_password="")
    staff_client.post(f"{PERSONAL}/{account.id}", data={**form, "version": "1"})
    db.session.expire_all()
    assert account.secrets == []


def test_friendly_name_unique_per_owner(app, client):
    make_staff("alice")
    make_staff("bob")
    sign_in(client, "alice")
    client.post(f"{PERSONAL}/new/internet", data=account_form())
    page = client.post(
        f"{PERSONAL}/new/internet", data=account_form(friendly_name="HELPDESK")
    ).get_data(as_text=True)
    assert "already named" in error_beside(page, "friendly_name")

    sign_in(client, "bob")
    response = client.post(f"{PERSONAL}/new/internet", data=account_form())
    assert response.status_code == 302
    assert len(accounts()) == 2


def test_global_and_personal_names_do_not_clash(app, client):
    make_staff("root", administrator=True)
    sign_in(client, "root")
    assert (
        client.post(f"{PERSONAL}/new/internet", data=account_form()).status_code == 302
    )
    assert client.post(f"{GLOBAL}/new/internet", data=account_form()).status_code == 302
    personal, global_ = accounts()
    assert personal.owner_id is not None
    assert global_.owner_id is None


def test_other_staff_cannot_see_personal_account(app, client):
    make_staff("alice")
    make_staff("bob")
    sign_in(client, "alice")
    client.post(f"{PERSONAL}/new/internet", data=account_form())
    (account,) = accounts()

    sign_in(client, "bob")
    assert "Helpdesk" not in client.get(PERSONAL).get_data(as_text=True)
    assert client.get(f"{PERSONAL}/{account.id}").status_code == 404
    assert (
        client.post(f"{PERSONAL}/{account.id}", data=account_form()).status_code == 404
    )
    assert (
        client.post(
            f"{PERSONAL}/{account.id}/enabled", data={"enabled": "0"}
        ).status_code
        == 404
    )
    assert client.post(f"{PERSONAL}/{account.id}/delete").status_code == 404
    db.session.expire_all()
    assert account.enabled


def test_admin_page_does_not_show_personal_accounts(app, client):
    make_staff("alice")
    make_staff("root", administrator=True)
    sign_in(client, "alice")
    client.post(
        f"{PERSONAL}/new/internet", data=account_form(friendly_name="Alice's own")
    )
    (account,) = accounts()

    sign_in(client, "root")
    assert "Alice&#39;s own" not in client.get(GLOBAL).get_data(as_text=True)
    assert client.get(f"{GLOBAL}/{account.id}").status_code == 404


def test_toggle_enabled_with_htmx_returns_row(staff_client):
    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    (account,) = accounts()
    response = staff_client.post(
        f"{PERSONAL}/{account.id}/enabled", data={"enabled": "0"}, headers=HTMX
    )
    fragment = response.get_data(as_text=True)
    assert response.status_code == 200
    assert fragment.lstrip().startswith("<tr")
    assert "<html" not in fragment
    assert "Disabled" in fragment
    db.session.expire_all()
    assert not account.enabled


def test_toggle_enabled_without_javascript_redirects(staff_client):
    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    (account,) = accounts()
    response = staff_client.post(
        f"{PERSONAL}/{account.id}/enabled", data={"enabled": "0"}
    )
    assert response.status_code == 302


def test_delete_account_with_confirmation_page(staff_client):
    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    (account,) = accounts()
    confirm = staff_client.get(f"{PERSONAL}/{account.id}/delete").get_data(as_text=True)
    assert "cannot be undone" in confirm
    response = staff_client.post(f"{PERSONAL}/{account.id}/delete", headers=HTMX)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == ""
    assert accounts() == []


def test_grid_delete_asks_for_confirmation(staff_client):
    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    page = staff_client.get(PERSONAL).get_data(as_text=True)
    assert 'hx-confirm="Delete the account Helpdesk?' in page


def test_preset_fills_server_settings(staff_client):
    form = account_form(
        preset="gmail", action="apply-preset", smtp_host="", smtp_port=""
    )
    response = staff_client.post(f"{PERSONAL}/new/internet", data=form, headers=HTMX)
    fragment = response.get_data(as_text=True)
    assert '<form id="account-form"' in fragment
    assert 'value="smtp.gmail.com"' in fragment
    assert "<html" not in fragment
    assert accounts() == []


def test_port_security_mismatch_warns(staff_client):
    form = account_form(smtp_port="465", smtp_security="starttls", friendly_name="")
    page = staff_client.post(f"{PERSONAL}/new/internet", data=form).get_data(
        as_text=True
    )
    assert 'id="smtp_port-warning"' in page


def test_internationalised_host_stored_as_idna(staff_client):
    staff_client.post(
        f"{PERSONAL}/new/internet", data=account_form(smtp_host="smtp.bücher.example")
    )
    (account,) = accounts()
    assert account.settings["smtp"]["host"] == "smtp.xn--bcher-kva.example"


def test_form_pages_carry_csrf_for_htmx(staff_client):
    page = staff_client.get(f"{PERSONAL}/new/internet").get_data(as_text=True)
    assert 'hx-headers=\'{"X-CSRFToken": "' in page
    assert 'src="/static/js/htmx-2.0.11.min.js"' in page


def test_htmx_post_without_csrf_gets_error_fragment(staff_client):
    response = staff_client.post(
        f"{PERSONAL}/new/internet", data=account_form(), headers=HTMX, without_csrf=True
    )
    assert response.status_code == 400
    assert "<html" not in response.get_data(as_text=True)
    assert accounts() == []


def test_concurrent_edit_is_refused_with_changes(app, client):
    make_staff("alice")
    sign_in(client, "alice")
    client.post(f"{PERSONAL}/new/internet", data=account_form())
    (account,) = accounts()
    page = client.get(f"{PERSONAL}/{account.id}").get_data(as_text=True)
    version = re.search(r'name="version" value="(\d+)"', page).group(1)
    original = re.search(r'name="original" value="([^"]+)"', page).group(1)

    # Another tab (or person) saves first.
    first = account_form(
        smtp_password="",
        smtp_host="mail.other.example",
        version=version,
        original=original,
    )
    assert client.post(f"{PERSONAL}/{account.id}", data=first).status_code == 302

    second = account_form(
        smtp_password="", description="My edit", version=version, original=original
    )
    response = client.post(f"{PERSONAL}/{account.id}", data=second)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Someone else saved this account" in page
    assert "SMTP server: mail.other.example" in page
    assert "My edit" in page  # the typed value stays
    db.session.expire_all()
    assert account.description == ""
    assert account.settings["smtp"]["host"] == "mail.other.example"

    # Saving again from the refreshed form replaces theirs.
    version = re.search(r'name="version" value="(\d+)"', page).group(1)
    original = re.search(r'name="original" value="([^"]+)"', page).group(1)
    third = {**second, "version": version, "original": original}
    assert client.post(f"{PERSONAL}/{account.id}", data=third).status_code == 302
    db.session.expire_all()
    assert account.description == "My edit"


def test_get_never_changes_enabled(staff_client):
    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    (account,) = accounts()
    for query in ("?enabled=0", "?enabled=1", ""):
        page = staff_client.get(f"{PERSONAL}/{account.id}/enabled{query}")
        assert page.status_code == 200
    db.session.expire_all()
    assert account.enabled
