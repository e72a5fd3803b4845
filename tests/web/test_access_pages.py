"""Security, permissions, previews, the personal-accounts switch, default account."""

import re

from sqlalchemy import select

from portal.extensions import db
from portal.models import AccountGrant, DefaultAccount, EmailAccount
from portal.services.settings import personal_accounts_allowed
from tests import factories
from tests.conftest import HTMX, make_staff, sign_in
from tests.queries import count_queries
from tests.web.test_accounts import GLOBAL, PERSONAL, account_form


def test_new_global_account_gets_chosen_security(admin_client):
    form = account_form(security="permissions")
    response = admin_client.post(f"{GLOBAL}/new/internet", data=form)
    (account,) = db.session.scalars(select(EmailAccount)).all()
    assert account.security == "permissions"
    assert response.headers["Location"].endswith(f"{GLOBAL}/{account.id}#access")


def test_personal_form_has_no_security_choice(staff_client):
    page = staff_client.get(f"{PERSONAL}/new/internet").get_data(as_text=True)
    assert 'name="security"' not in page


def test_security_change_is_saved_at_once(admin_client):
    account = factories.account(security="everyone")
    db.session.commit()
    response = admin_client.post(
        f"{GLOBAL}/{account.id}/security", data={"security": "system"}, headers=HTMX
    )
    fragment = response.get_data(as_text=True)
    assert response.status_code == 200
    assert fragment.lstrip().startswith('<section id="access"')
    assert "No staff member</strong> may use this account" in fragment
    db.session.expire_all()
    assert account.security == "system"


def test_invalid_security_is_explained(admin_client):
    account = factories.account()
    db.session.commit()
    fragment = admin_client.post(
        f"{GLOBAL}/{account.id}/security", data={"security": "nobody"}, headers=HTMX
    ).get_data(as_text=True)
    assert "Choose one of" in fragment
    db.session.expire_all()
    assert account.security == "everyone"


def test_grant_editor_adds_and_removes(app, admin_client):
    alice = make_staff("alice")
    group = factories.skillgroup("Networks")
    account = factories.account(security="permissions")
    db.session.commit()

    candidates = admin_client.get(
        f"{GLOBAL}/{account.id}/grant-candidates?kind=skillgroup&q=net", headers=HTMX
    ).get_data(as_text=True)
    assert "Networks" in candidates
    assert "<html" not in candidates

    panel = admin_client.post(
        f"{GLOBAL}/{account.id}/grants",
        data={"kind": "skillgroup", "target_id": group.id},
        headers=HTMX,
    ).get_data(as_text=True)
    assert "Networks" in panel
    assert "<strong>0</strong> staff members may use" in panel

    admin_client.post(
        f"{GLOBAL}/{account.id}/grants",
        data={"kind": "staff", "target_id": alice.id},
        headers=HTMX,
    )
    grants = db.session.scalars(select(AccountGrant)).all()
    assert len(grants) == 2

    grant_id = next(g.id for g in grants if g.staff_id == alice.id)
    panel = admin_client.post(
        f"{GLOBAL}/{account.id}/grants/{grant_id}/delete", headers=HTMX
    ).get_data(as_text=True)
    assert "alice" not in panel.split("Effective access")[0]
    assert len(db.session.scalars(select(AccountGrant)).all()) == 1


def test_grant_for_missing_target_is_explained(admin_client):
    account = factories.account(security="permissions")
    db.session.commit()
    fragment = admin_client.post(
        f"{GLOBAL}/{account.id}/grants",
        data={"kind": "role", "target_id": "9999"},
        headers=HTMX,
    ).get_data(as_text=True)
    assert "no longer exists" in fragment
    assert db.session.scalars(select(AccountGrant)).all() == []


def test_grant_without_javascript_redirects_to_panel(admin_client):
    group = factories.skillgroup("Networks")
    account = factories.account(security="permissions")
    db.session.commit()
    response = admin_client.post(
        f"{GLOBAL}/{account.id}/grants",
        data={"kind": "skillgroup", "target_id": group.id},
    )
    assert response.status_code == 302
    assert response.headers["Location"].endswith("#access")


def test_grants_rejected_on_personal_account(app, admin_client, admin):
    account = factories.account(owner=admin)
    group = factories.skillgroup()
    db.session.commit()
    response = admin_client.post(
        f"{GLOBAL}/{account.id}/grants",
        data={"kind": "skillgroup", "target_id": group.id},
    )
    assert response.status_code == 404


def test_preview_search_fragment(app, admin_client):
    make_staff("alice")
    make_staff("bob")
    account = factories.account(security="all_staff")
    db.session.commit()
    fragment = admin_client.get(
        f"{GLOBAL}/{account.id}/access-preview?q=bob", headers=HTMX
    ).get_data(as_text=True)
    assert fragment.lstrip().startswith('<div id="access-preview"')
    assert "bob" in fragment
    assert "alice" not in fragment


def test_edit_page_shows_access_panel(admin_client):
    account = factories.account(security="permissions")
    db.session.commit()
    page = admin_client.get(f"{GLOBAL}/{account.id}").get_data(as_text=True)
    assert 'id="access"' in page
    assert "No permissions yet" in page


def test_staff_access_reverse_view(app, admin_client):
    alice = make_staff("alice")
    group = factories.skillgroup("Networks", members=[alice])
    account = factories.account("Network desk", security="permissions")
    factories.grant(account, skillgroup=group)
    db.session.commit()
    matches = admin_client.get("/admin/staff-access?q=ali").get_data(as_text=True)
    assert f"staff_id={alice.id}" in matches
    page = admin_client.get(f"/admin/staff-access?staff_id={alice.id}").get_data(
        as_text=True
    )
    assert "Network desk" in page
    assert "Member of the skillgroup Networks" in page


def test_personal_switch_blocks_creation(app, client):
    make_staff("root", administrator=True)
    alice = make_staff("alice")
    factories.account("Alice's own", owner=alice)
    db.session.commit()

    sign_in(client, "root")
    fragment = client.post(
        "/admin/settings/personal-accounts", data={"allowed": "0"}, headers=HTMX
    ).get_data(as_text=True)
    assert "Off" in fragment
    assert "1 personal account exists" in fragment
    assert not personal_accounts_allowed()

    sign_in(client, "alice")
    page = client.get(PERSONAL).get_data(as_text=True)
    assert "turned off creating personal email accounts" in page
    assert "Alice&#39;s own" in page
    assert client.get(f"{PERSONAL}/new/internet").status_code == 403
    response = client.post(
        f"{PERSONAL}/new/internet", data=account_form(friendly_name="Sneaky")
    )
    assert response.status_code == 403
    assert "turned off" in response.get_data(as_text=True)
    assert (
        db.session.scalar(
            select(EmailAccount).where(EmailAccount.friendly_name == "Sneaky")
        )
        is None
    )


def test_personal_switch_page_links_to_accounts(app, admin_client):
    alice = make_staff("alice")
    factories.account("Alice's own", owner=alice)
    db.session.commit()
    page = admin_client.get("/admin/settings/personal-accounts").get_data(as_text=True)
    assert "/admin/personal-accounts" in page
    listing = admin_client.get("/admin/personal-accounts").get_data(as_text=True)
    assert "Alice&#39;s own" in listing


def test_personal_page_lists_usable_accounts(app, client):
    alice = make_staff("alice")
    bob = make_staff("bob")
    factories.account("Everyone desk", security="everyone")
    factories.account("Robots", security="system")
    factories.account("Secret desk", security="permissions")
    factories.account("Bob's own", owner=bob)
    factories.account("Switched off", enabled=False)
    factories.account("Alice's own", owner=alice)
    db.session.commit()

    sign_in(client, "alice")
    page = client.get(PERSONAL).get_data(as_text=True)
    section = page.split('id="sending-accounts"')[1]
    assert "Everyone desk" in section
    assert "Alice&#39;s own" in section
    for hidden in ("Robots", "Secret desk", "Bob&#39;s own", "Switched off"):
        assert hidden not in section


def test_default_account_is_saved(app, client):
    alice = make_staff("alice")
    desk = factories.account("Everyone desk")
    db.session.commit()
    sign_in(client, "alice")
    fragment = client.post(
        "/preferences/email/default-account", data={"account_id": desk.id}, headers=HTMX
    ).get_data(as_text=True)
    assert re.search(rf'value="{desk.id}"[^>]*\s+checked', fragment)
    assert db.session.get(DefaultAccount, alice.id).account_id == desk.id


def test_default_account_must_be_usable(app, client):
    make_staff("alice")
    robots = factories.account("Robots", security="system")
    db.session.commit()
    sign_in(client, "alice")
    response = client.post(
        "/preferences/email/default-account", data={"account_id": robots.id}
    )
    assert response.status_code == 403
    assert db.session.scalars(select(DefaultAccount)).all() == []


def test_default_account_rejects_malformed_id(app, staff_client):
    response = staff_client.post(
        "/preferences/email/default-account", data={"account_id": "1 OR 1=1"}
    )
    assert response.status_code == 400


def test_staff_cannot_reach_access_routes(app, staff_client):
    account = factories.account()
    db.session.commit()
    for url in (
        f"{GLOBAL}/{account.id}/access-preview",
        f"{GLOBAL}/{account.id}/grant-candidates",
        "/admin/staff-access",
        "/admin/settings/personal-accounts",
        "/admin/personal-accounts",
    ):
        assert staff_client.get(url).status_code == 403, url
    assert (
        staff_client.post(
            f"{GLOBAL}/{account.id}/security", data={"security": "system"}
        ).status_code
        == 403
    )


def grid_queries(client, url, make, count):
    for _ in range(count):
        make()
    db.session.commit()
    with count_queries() as counter:
        assert client.get(url).status_code == 200
    return counter.count


def test_personal_page_query_count_constant(app, client):
    alice = make_staff("alice")
    sign_in(client, "alice")
    client.get(PERSONAL)  # warm up the session and the CSRF token

    def make():
        factories.account(security="everyone")
        factories.account(owner=alice)

    small = grid_queries(client, PERSONAL, make, 10)
    large = grid_queries(client, PERSONAL, make, 990)
    assert small == large


def test_global_grid_query_count_constant(app, admin_client):
    admin_client.get(GLOBAL)

    def make():
        factories.account(security="permissions")

    small = grid_queries(admin_client, GLOBAL, make, 10)
    large = grid_queries(admin_client, GLOBAL, make, 990)
    assert small == large


def test_preview_query_count_constant(app, admin_client):
    account = factories.account(security="permissions")
    group = factories.skillgroup()
    factories.grant(account, skillgroup=group)
    db.session.commit()
    url = f"{GLOBAL}/{account.id}/access-preview?q=s"
    admin_client.get(url)

    def make():
        staff = factories.staff_member()
        group.members.append(staff)
        other = factories.account()
        factories.grant(other, staff=staff)

    small = grid_queries(admin_client, url, make, 10)
    large = grid_queries(admin_client, url, make, 990)
    assert small == large
