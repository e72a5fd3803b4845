"""Global Microsoft 365 accounts: search, pick, test send and read, save."""

import email
from email import policy

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import EmailAccount
from tests.conftest import HTMX, version_fields
from tests.fakes.microsoft import TENANT_ID

NEW = "/admin/email-accounts/new/microsoft365"
SEARCH = "/admin/email-accounts/microsoft365/mailboxes"
HELPDESK_ID = "a1b2c3d4-0000-4000-8000-000000000003"


def picked_form(**overrides):
    values = {
        "user_id": HELPDESK_ID,
        "mailbox": "helpdesk@contoso.com",
        "display_name": "Helpdesk",
        "user_principal_name": "helpdesk@contoso.com",
        "shared": "1",
        "send_as": "",
        "test_to": "someone@example.com",
        "friendly_name": "Helpdesk",
        "description": "",
        "from_name": "Contoso Helpdesk",
        "enabled": "y",
        "security": "everyone",
    }
    values.update(overrides)
    return values


def test_type_offered_only_when_connected(admin_client, microsoft_app):
    page = admin_client.get("/admin/email-accounts/new").get_data(as_text=True)
    assert "Connect the Microsoft 365 tenant first." in page
    assert 'href="/admin/integrations/microsoft365"' in page
    assert admin_client.get(NEW).status_code == 403


def test_type_offered_when_connected(admin_client, connected_tenant):
    page = admin_client.get("/admin/email-accounts/new").get_data(as_text=True)
    assert f'href="{NEW}"' in page


def test_search_as_you_type_returns_fragment(admin_client, connected_tenant):
    fragment = admin_client.get(
        SEARCH, query_string={"q": "help"}, headers=HTMX
    ).get_data(as_text=True)
    assert "<html" not in fragment
    assert "helpdesk@contoso.com" in fragment
    assert "Shared mailbox" in fragment
    assert f"{NEW}?pick={HELPDESK_ID}" in fragment

    (request,) = [
        r for r in connected_tenant.graph_requests if r["path"] == "/v1.0/users"
    ]
    assert request["args"]["$filter"] == (
        "startswith(mail,'help') or startswith(userPrincipalName,'help') "
        "or startswith(displayName,'help')"
    )
    assert (
        request["args"]["$select"]
        == "id,displayName,mail,userPrincipalName,accountEnabled"
    )
    assert request["args"]["$top"] == "10"


def test_search_matches_display_name_and_quotes(admin_client, connected_tenant):
    fragment = admin_client.get(
        SEARCH, query_string={"q": "alice a"}, headers=HTMX
    ).get_data(as_text=True)
    assert "alice@contoso.com" in fragment
    fragment = admin_client.get(
        SEARCH, query_string={"q": "o'brien"}, headers=HTMX
    ).get_data(as_text=True)
    assert "No mailbox, user name or display name starts with “o&#39;brien”" in fragment


def test_search_pages_with_next_link(admin_client, connected_tenant):
    first = admin_client.get(
        SEARCH, query_string={"q": "agent"}, headers=HTMX
    ).get_data(as_text=True)
    assert first.count("Choose</a>") == 10
    assert "More results" in first
    assert 'id="mailbox-list"' in first

    (next_link,) = [r for r in first.split('hx-get="')[1:] if r.startswith(SEARCH)]
    url = next_link.split('"')[0].replace("&amp;", "&")
    second = admin_client.get(url, headers=HTMX).get_data(as_text=True)
    assert second.count("Choose</a>") == 10
    assert 'id="mailbox-list"' not in second  # rows only, appended to the list
    third_url = second.split('hx-get="')[1].split('"')[0].replace("&amp;", "&")
    third = admin_client.get(third_url, headers=HTMX).get_data(as_text=True)
    assert third.count("Choose</a>") == 5
    assert "More results" not in third
    assert "agent25@contoso.com" in third


def test_next_link_to_another_host_is_refused(admin_client, connected_tenant):
    fragment = admin_client.get(
        SEARCH,
        query_string={
            "q": "agent",
            "next": "http://127.0.0.1:1/v1.0/users?$skiptoken=x",
        },
        headers=HTMX,
    ).get_data(as_text=True)
    assert "The search failed" in fragment
    assert "not a Microsoft Graph user search" in fragment


def test_empty_search_says_so(admin_client, connected_tenant):
    fragment = admin_client.get(
        SEARCH, query_string={"q": "zz"}, headers=HTMX
    ).get_data(as_text=True)
    assert "No mailbox, user name or display name starts with “zz”" in fragment


def test_failed_search_says_why(admin_client, connected_tenant):
    connected_tenant.revoke_consent()
    from portal.integrations.microsoft_tokens import CACHE

    CACHE.clear()
    fragment = admin_client.get(
        SEARCH, query_string={"q": "help"}, headers=HTMX
    ).get_data(as_text=True)
    assert "The search failed" in fragment
    assert "User.Read.All" in fragment
    assert "Grant consent" in fragment


def test_search_without_javascript(admin_client, connected_tenant):
    page = admin_client.get(NEW, query_string={"q": "help"}).get_data(as_text=True)
    assert "<html" in page
    assert "helpdesk@contoso.com" in page
    assert 'value="help"' in page


def test_pick_fills_the_account(admin_client, connected_tenant):
    page = admin_client.get(NEW, query_string={"pick": HELPDESK_ID}).get_data(
        as_text=True
    )
    assert 'id="chosen-mailbox"' in page
    assert f'value="{HELPDESK_ID}"' in page
    assert 'value="helpdesk@contoso.com"' in page
    assert "Shared mailbox" in page
    assert "Test read" in page
    assert 'id="mailbox-step"' not in page  # the search is done


def test_pick_of_missing_user_is_explained(admin_client, connected_tenant):
    page = admin_client.get(NEW, query_string={"pick": "no-such-user"}).get_data(
        as_text=True
    )
    assert "The mailbox could not be read" in page
    assert "was not found in the Microsoft 365 tenant" in page


def test_test_send_posts_mime_send_mail(admin_client, connected_tenant):
    fragment = admin_client.post(
        NEW, data=picked_form(action="test-send"), headers=HTMX
    ).get_data(as_text=True)
    assert "Test send succeeded" in fragment
    assert "202 Accepted" in fragment

    (sent,) = connected_tenant.sent
    assert sent["path"] == f"/v1.0/users/{HELPDESK_ID}/sendMail"
    assert sent["format"] == "mime"
    assert sent["recipients"] == ["someone@example.com"]
    message = email.message_from_bytes(sent["mime"], policy=policy.default)
    assert message["From"].addresses[0].addr_spec == "helpdesk@contoso.com"
    assert message["From"].addresses[0].display_name == "Contoso Helpdesk"
    assert message["Subject"] == "Test message from the email account portal"
    assert message["Message-ID"]


def test_send_as_other_address(admin_client, connected_tenant):
    fragment = admin_client.post(
        NEW,
        data=picked_form(action="test-send", send_as="support@contoso.com"),
        headers=HTMX,
    ).get_data(as_text=True)
    assert "Test send succeeded" in fragment
    assert connected_tenant.sent[0]["from"] == "support@contoso.com"


def test_send_as_denied_names_the_right(admin_client, connected_tenant):
    fragment = admin_client.post(
        NEW,
        data=picked_form(action="test-send", send_as="ceo@contoso.com"),
        headers=HTMX,
    ).get_data(as_text=True)
    assert "failed at the sender step" in fragment
    assert (
        "neither the Send As nor the Send on Behalf right on ceo@contoso.com"
        in fragment
    )
    assert "ErrorSendAsDenied" in fragment
    assert "sign-in" not in fragment.lower()


def test_test_read_counts_inbox(admin_client, connected_tenant):
    fragment = admin_client.post(
        NEW, data=picked_form(action="test-read"), headers=HTMX
    ).get_data(as_text=True)
    assert "Test read succeeded" in fragment
    assert (
        "Opened the Inbox of helpdesk@contoso.com: 57 messages, 9 unread." in fragment
    )


def test_test_without_mailbox_asks_for_one(admin_client, connected_tenant):
    response = admin_client.post(
        NEW, data=picked_form(action="test-send", user_id="", mailbox=""), headers=HTMX
    )
    fragment = response.get_data(as_text=True)
    assert response.headers["HX-Retarget"] == "#account-form"
    assert "Choose the mailbox first" in fragment


def test_save_creates_account(admin_client, connected_tenant):
    response = admin_client.post(NEW, data=picked_form(action="save"))
    assert response.status_code == 302
    account = db.session.scalar(
        select(EmailAccount).filter_by(friendly_name="Helpdesk")
    )
    assert account.account_type == "microsoft365"
    assert account.owner_id is None
    assert account.email_address == "helpdesk@contoso.com"
    assert account.settings["user_id"] == HELPDESK_ID
    assert account.settings["shared"] is True
    assert account.secrets == []  # no password of any kind

    grid = admin_client.get("/admin/email-accounts").get_data(as_text=True)
    assert "Microsoft 365 (shared mailbox)" in grid


def test_save_requires_names(admin_client, connected_tenant):
    page = admin_client.post(
        NEW, data=picked_form(action="save", friendly_name="")
    ).get_data(as_text=True)
    assert "Enter a friendly name" in page
    assert db.session.scalar(select(EmailAccount)) is None


def test_edit_and_choose_another_mailbox(admin_client, connected_tenant):
    admin_client.post(NEW, data=picked_form(action="save"))
    account = db.session.scalar(select(EmailAccount))
    page = admin_client.get(f"/admin/email-accounts/{account.id}?change=1").get_data(
        as_text=True
    )
    assert 'id="mailbox-step"' in page
    assert f'name="account_id" value="{account.id}"' in page

    bob = "a1b2c3d4-0000-4000-8000-000000000002"
    page = admin_client.get(f"/admin/email-accounts/{account.id}?pick={bob}").get_data(
        as_text=True
    )
    assert 'value="bob@contoso.com"' in page
    admin_client.post(
        f"/admin/email-accounts/{account.id}",
        data=picked_form(
            action="save",
            user_id=bob,
            mailbox="bob@contoso.com",
            shared="",
            display_name="Bob Baker",
            version="1",
        ),
    )
    db.session.refresh(account)
    assert account.settings["user_id"] == bob
    assert account.email_address == "bob@contoso.com"


def test_concurrent_edit_is_refused_with_changes(admin_client, connected_tenant):
    admin_client.post(NEW, data=picked_form(action="save"))
    account = db.session.scalar(select(EmailAccount))
    url = f"/admin/email-accounts/{account.id}"
    page = admin_client.get(url).get_data(as_text=True)
    opened = version_fields(page)

    # Another tab (or person) picks another mailbox and saves first.
    bob = "a1b2c3d4-0000-4000-8000-000000000002"
    first = picked_form(
        action="save",
        user_id=bob,
        mailbox="bob@contoso.com",
        shared="",
        display_name="Bob Baker",
        **opened,
    )
    assert admin_client.post(url, data=first).status_code == 302

    second = picked_form(action="save", description="My edit", **opened)
    response = admin_client.post(url, data=second)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Someone else saved this account" in page
    assert "Mailbox: bob@contoso.com" in page
    assert "My edit" in page  # the typed value stays
    db.session.refresh(account)
    assert account.description == ""
    assert account.email_address == "bob@contoso.com"
    assert account.version == 2

    # Saving again from the refreshed form replaces theirs.
    third = {**second, **version_fields(page)}
    assert admin_client.post(url, data=third).status_code == 302
    db.session.refresh(account)
    assert account.description == "My edit"
    assert account.email_address == "helpdesk@contoso.com"
    assert account.version == 3


@pytest.mark.parametrize(
    ("user_id", "mailbox", "words"),
    [
        (
            "a1b2c3d4-0000-4000-8000-000000000004",
            "olga@contoso.com",
            "has no Exchange Online mailbox",
        ),
        (
            "deleted-user-id",
            "gone@contoso.com",
            "was not found in the Microsoft 365 tenant",
        ),
    ],
)
def test_mailbox_errors_name_cause_and_fix(
    admin_client, connected_tenant, user_id, mailbox, words
):
    fragment = admin_client.post(
        NEW,
        data=picked_form(action="test-send", user_id=user_id, mailbox=mailbox),
        headers=HTMX,
    ).get_data(as_text=True)
    assert words in fragment
    assert "What to do" in fragment


def test_tenant_id_of_fake_is_used(connected_tenant):
    request = connected_tenant.token_requests[-1]
    assert request["grant_type"] == "client_credentials"
    assert request["scope"] == "https://graph.microsoft.com/.default"
    assert TENANT_ID
