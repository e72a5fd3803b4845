"""Skillgroup and role pages: CRUD, members, staff search and the admin guards."""

import re

import pytest
from sqlalchemy import event, func, select

from portal.extensions import db
from portal.models import (
    AccountGrant,
    EmailAccount,
    Role,
    Skillgroup,
    StaffMember,
    staff_skillgroup,
)
from portal.services import people
from portal.services.people import GroupError
from tests.conftest import HTMX, make_staff, sign_in

SKILLGROUPS = "/admin/skillgroups"
ROLES = "/admin/roles"


def make_group(model, name, members=(), grants_administration=False):
    group = model(name=name)
    if model is Role:
        group.grants_administration = grants_administration
    group.members.extend(members)
    db.session.add(group)
    db.session.commit()
    return group


def fresh(model, group_id):
    """Return the row as the requests left it, bypassing the test's session cache."""
    db.session.expire_all()
    return db.session.get(model, group_id)


def group_names(model):
    db.session.expire_all()
    return list(db.session.scalars(select(model.name).order_by(model.name)))


def member_names(group):
    db.session.expire_all()
    return sorted(staff.username for staff in group.members)


def administrators_role():
    return db.session.scalar(select(Role).where(Role.name == "Administrators"))


def error_beside(page: str, field_id: str) -> str:
    match = re.search(rf'id="{field_id}-error">([^<]*)<', page)
    return match.group(1) if match else ""


# -- who may reach the pages ---------------------------------------------------


def people_routes(app):
    """Every (method, URL) of the skillgroup and role pages, ids filled in."""
    routes = []
    for rule in app.url_map.iter_rules():
        if app.view_functions[rule.endpoint].__module__ != "portal.admin.people":
            continue
        url = rule.build({name: 1 for name in rule.arguments})[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, url))
    return routes


def test_every_route_is_listed(app):
    urls = {url for _, url in people_routes(app)}
    assert len(people_routes(app)) == 22
    assert "/admin/skillgroups" in urls
    assert "/admin/roles/1/members/1/remove" in urls


def test_staff_get_403_on_every_route(app, staff_client):
    make_group(Skillgroup, "Networks")
    make_group(Role, "Agents")
    for method, url in people_routes(app):
        response = staff_client.open(url, method=method, data={"staff_id": "1"})
        assert response.status_code == 403, f"{method} {url}"


def test_anonymous_sent_to_sign_in(app, client):
    for method, url in people_routes(app):
        response = client.open(url, method=method)
        assert response.status_code == 302, f"{method} {url}"
        assert "/sign-in" in response.headers["Location"]


def test_nav_links_only_for_administrators(admin_client, app):
    page = admin_client.get(SKILLGROUPS).get_data(as_text=True)
    assert f'href="{SKILLGROUPS}"' in page
    assert f'href="{ROLES}"' in page

    make_staff("bob")
    sign_in(admin_client, "bob")
    page = admin_client.get("/preferences/email/accounts").get_data(as_text=True)
    assert f'href="{SKILLGROUPS}"' not in page
    assert f'href="{ROLES}"' not in page


def test_post_without_csrf_rejected(admin_client):
    response = admin_client.post(
        f"{SKILLGROUPS}/new", data={"name": "Networks"}, without_csrf=True
    )
    assert response.status_code == 400
    assert group_names(Skillgroup) == []


# -- lists ---------------------------------------------------------------------


def test_list_shows_member_counts(admin_client, admin):
    bob = make_staff("bob")
    make_group(Skillgroup, "Networks", members=[admin, bob])
    make_group(Skillgroup, "Empty")
    page = admin_client.get(SKILLGROUPS).get_data(as_text=True)
    assert "Networks" in page
    assert "2 members" in page
    assert "0 members" in page


def test_role_list_shows_administration_flag(admin_client):
    make_group(Role, "Agents")
    page = admin_client.get(ROLES).get_data(as_text=True)
    assert "Administrators" in page
    assert "Agents" in page
    assert "1 member" in page
    assert "Grants administration" in page


def test_empty_list_says_how_to_add(admin_client):
    page = admin_client.get(SKILLGROUPS).get_data(as_text=True)
    assert "No skillgroups yet" in page


def count_statements(app, client, url) -> int:
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = client.get(url)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 200
    return len(statements)


@pytest.mark.parametrize(("model", "url"), [(Skillgroup, SKILLGROUPS), (Role, ROLES)])
def test_list_query_count_is_constant(app, admin_client, model, url):
    members = [make_staff(f"member{index}") for index in range(3)]
    for index in range(3):
        make_group(model, f"Group {index:02}", members=members)
    few = count_statements(app, admin_client, url)

    for index in range(3, 30):
        make_group(model, f"Group {index:02}", members=members)
    many = count_statements(app, admin_client, url)

    assert few > 0
    assert many == few
    assert "Group 29" in admin_client.get(url).get_data(as_text=True)


# -- create --------------------------------------------------------------------


def test_create_skillgroup_redirects_to_members(admin_client):
    response = admin_client.post(f"{SKILLGROUPS}/new", data={"name": "  Networks "})
    (group,) = db.session.scalars(select(Skillgroup))
    assert response.status_code == 302
    assert response.headers["Location"] == f"{SKILLGROUPS}/{group.id}"
    assert group.name == "Networks"


def test_create_role_with_administration(admin_client):
    data = {"name": "Supervisors", "grants_administration": "y"}
    assert admin_client.post(f"{ROLES}/new", data=data).status_code == 302
    role = db.session.scalar(select(Role).where(Role.name == "Supervisors"))
    assert role.grants_administration is True


def test_create_role_without_administration(admin_client):
    assert admin_client.post(f"{ROLES}/new", data={"name": "Agents"}).status_code == 302
    role = db.session.scalar(select(Role).where(Role.name == "Agents"))
    assert role.grants_administration is False


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "Enter a name"),
        ("   ", "Enter a name"),
        ("x" * 101, "at most 100 characters"),
        ("Night\nshift", "control characters"),
        ("Bell\x07", "control characters"),
        ("networks", "already exists"),
        ("NETWORKS", "already exists"),
    ],
)
def test_create_rejects_invalid_name(admin_client, name, message):
    make_group(Skillgroup, "Networks")
    response = admin_client.post(f"{SKILLGROUPS}/new", data={"name": name})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert message in error_beside(page, "name")
    assert group_names(Skillgroup) == ["Networks"]


def test_create_accepts_100_characters(admin_client):
    name = "x" * 100
    assert (
        admin_client.post(f"{SKILLGROUPS}/new", data={"name": name}).status_code == 302
    )
    assert group_names(Skillgroup) == [name]


def test_failed_create_keeps_typed_values(admin_client):
    make_group(Role, "Agents")
    data = {"name": "AGENTS", "grants_administration": "y"}
    page = admin_client.post(f"{ROLES}/new", data=data).get_data(as_text=True)
    assert 'value="AGENTS"' in page
    assert re.search(r'<input[^>]* checked [^>]*name="grants_administration"', page)


# -- rename --------------------------------------------------------------------


def test_inline_rename_form_is_fragment(admin_client):
    group = make_group(Skillgroup, "Networks")
    response = admin_client.get(f"{SKILLGROUPS}/{group.id}/edit", headers=HTMX)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<html" not in page
    assert f'name="skillgroup-{group.id}-name"' in page
    assert 'value="Networks"' in page


def test_inline_rename_returns_name_cell(admin_client):
    group = make_group(Skillgroup, "Networks")
    response = admin_client.post(
        f"{SKILLGROUPS}/{group.id}/edit",
        data={f"skillgroup-{group.id}-name": "Network team"},
        headers=HTMX,
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<html" not in page
    assert "Network team" in page
    assert "<form" not in page
    assert fresh(Skillgroup, group.id).name == "Network team"


def test_inline_rename_error_beside_field(admin_client):
    make_group(Skillgroup, "Second line")
    group = make_group(Skillgroup, "Networks")
    field = f"skillgroup-{group.id}-name"
    response = admin_client.post(
        f"{SKILLGROUPS}/{group.id}/edit",
        data={field: "second LINE"},
        headers=HTMX,
    )
    page = response.get_data(as_text=True)
    assert "<html" not in page
    assert "already exists" in error_beside(page, field)
    assert 'value="second LINE"' in page
    assert fresh(Skillgroup, group.id).name == "Networks"


def test_inline_rename_of_role_keeps_flag(admin_client):
    role = administrators_role()
    admin_client.post(
        f"{ROLES}/{role.id}/edit",
        data={f"role-{role.id}-name": "Portal administrators"},
        headers=HTMX,
    )
    role = fresh(Role, role.id)
    assert role.name == "Portal administrators"
    assert role.grants_administration is True


def test_rename_page_without_javascript(admin_client):
    group = make_group(Skillgroup, "Networks")
    page = admin_client.get(f"{SKILLGROUPS}/{group.id}/edit").get_data(as_text=True)
    assert "<html" in page

    response = admin_client.post(
        f"{SKILLGROUPS}/{group.id}/edit",
        data={f"skillgroup-{group.id}-name": "Network team"},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == SKILLGROUPS
    assert fresh(Skillgroup, group.id).name == "Network team"


def test_rename_may_change_only_case(admin_client):
    group = make_group(Skillgroup, "networks")
    response = admin_client.post(
        f"{SKILLGROUPS}/{group.id}/edit",
        data={f"skillgroup-{group.id}-name": "Networks"},
    )
    assert response.status_code == 302
    assert fresh(Skillgroup, group.id).name == "Networks"


def test_cancel_rename_returns_name_cell(admin_client):
    group = make_group(Skillgroup, "Networks")
    response = admin_client.get(f"{SKILLGROUPS}/{group.id}/name", headers=HTMX)
    page = response.get_data(as_text=True)
    assert "<html" not in page
    assert "Networks" in page
    assert "<form" not in page

    response = admin_client.get(f"{SKILLGROUPS}/{group.id}/name")
    assert response.status_code == 302


def test_missing_group_is_404(admin_client):
    assert admin_client.get(f"{SKILLGROUPS}/999").status_code == 404
    assert admin_client.get(f"{ROLES}/999/edit").status_code == 404
    assert admin_client.post(f"{ROLES}/999/delete").status_code == 404


# -- delete --------------------------------------------------------------------


def test_delete_confirmation_page(admin_client, admin):
    group = make_group(Skillgroup, "Networks", members=[admin])
    page = admin_client.get(f"{SKILLGROUPS}/{group.id}/delete").get_data(as_text=True)
    assert "Delete the skillgroup Networks?" in page
    assert "1 member" in page
    assert "Delete the skillgroup</button>" in page


def test_delete_without_javascript(admin_client, admin):
    group = make_group(Skillgroup, "Networks", members=[admin])
    response = admin_client.post(f"{SKILLGROUPS}/{group.id}/delete")
    assert response.status_code == 302
    assert response.headers["Location"] == SKILLGROUPS
    assert group_names(Skillgroup) == []
    assert db.session.scalar(select(func.count()).select_from(staff_skillgroup)) == 0
    assert db.session.get(StaffMember, admin.id) is not None


def test_delete_with_htmx_removes_row(admin_client):
    group = make_group(Skillgroup, "Networks")
    response = admin_client.post(f"{SKILLGROUPS}/{group.id}/delete", headers=HTMX)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == ""
    assert group_names(Skillgroup) == []


def test_list_row_deletes_with_confirm(admin_client):
    group = make_group(Skillgroup, "Networks")
    page = admin_client.get(SKILLGROUPS).get_data(as_text=True)
    assert f'hx-post="{SKILLGROUPS}/{group.id}/delete"' in page
    assert 'hx-confirm="Delete the skillgroup Networks?' in page


def test_delete_removes_account_permissions(admin_client):
    group = make_group(Skillgroup, "Networks")
    account = EmailAccount(
        account_type="internet",
        friendly_name="Helpdesk",
        email_address="helpdesk@example.com",
        security="permissions",
    )
    db.session.add(account)
    db.session.flush()
    db.session.add(AccountGrant(account_id=account.id, skillgroup_id=group.id))
    db.session.commit()

    page = admin_client.get(f"{SKILLGROUPS}/{group.id}/delete").get_data(as_text=True)
    assert "1 global email account is shared with it" in page
    admin_client.post(f"{SKILLGROUPS}/{group.id}/delete")
    db.session.expire_all()
    assert db.session.scalar(select(func.count(AccountGrant.id))) == 0


# -- members -------------------------------------------------------------------


def test_members_page_lists_members(admin_client, admin):
    bob = make_staff("bob")
    make_staff("carol")
    group = make_group(Skillgroup, "Networks", members=[bob])
    page = admin_client.get(f"{SKILLGROUPS}/{group.id}").get_data(as_text=True)
    assert "<html" in page
    assert "bob@example.com" in page
    assert "carol" not in page
    assert 'id="member-count">(1)<' in page


def test_add_member_with_htmx(admin_client):
    bob = make_staff("bob")
    group = make_group(Skillgroup, "Networks")
    response = admin_client.post(
        f"{SKILLGROUPS}/{group.id}/members",
        data={"staff_id": str(bob.id), "q": "bo"},
        headers=HTMX,
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<html" not in page
    assert '<section id="members"' in page
    assert "bob@example.com" in page
    assert f'<li id="candidate-{bob.id}" hx-swap-oob="true">' in page
    assert member_names(fresh(Skillgroup, group.id)) == ["bob"]


def test_add_member_without_javascript(admin_client):
    bob = make_staff("bob")
    group = make_group(Role, "Agents")
    response = admin_client.post(
        f"{ROLES}/{group.id}/members", data={"staff_id": str(bob.id), "q": "bob"}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"{ROLES}/{group.id}?q=bob"
    assert member_names(fresh(Role, group.id)) == ["bob"]


def test_add_member_twice_keeps_one(admin_client):
    bob = make_staff("bob")
    group = make_group(Skillgroup, "Networks")
    for _ in range(2):
        admin_client.post(
            f"{SKILLGROUPS}/{group.id}/members", data={"staff_id": str(bob.id)}
        )
    assert member_names(fresh(Skillgroup, group.id)) == ["bob"]


def test_add_unknown_staff_member(admin_client):
    group = make_group(Skillgroup, "Networks")
    url = f"{SKILLGROUPS}/{group.id}/members"
    assert admin_client.post(url, data={"staff_id": "999"}).status_code == 404
    assert admin_client.post(url, data={"staff_id": "x"}).status_code == 400
    assert admin_client.post(url, data={}).status_code == 400


def test_remove_member_with_htmx(admin_client):
    bob = make_staff("bob")
    carol = make_staff("carol")
    group = make_group(Skillgroup, "Networks", members=[bob, carol])
    response = admin_client.post(
        f"{SKILLGROUPS}/{group.id}/members/{bob.id}/remove", headers=HTMX
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<html" not in page
    assert "<tr" not in page
    assert '<span id="member-count" hx-swap-oob="true">(1)</span>' in page
    assert member_names(fresh(Skillgroup, group.id)) == ["carol"]


def test_remove_member_without_javascript(admin_client):
    bob = make_staff("bob")
    group = make_group(Skillgroup, "Networks", members=[bob])
    response = admin_client.post(f"{SKILLGROUPS}/{group.id}/members/{bob.id}/remove")
    assert response.status_code == 302
    assert response.headers["Location"] == f"{SKILLGROUPS}/{group.id}"
    assert member_names(fresh(Skillgroup, group.id)) == []


def test_member_rows_remove_in_place(admin_client):
    bob = make_staff("bob")
    group = make_group(Skillgroup, "Networks", members=[bob])
    page = admin_client.get(f"{SKILLGROUPS}/{group.id}").get_data(as_text=True)
    assert f'hx-post="{SKILLGROUPS}/{group.id}/members/{bob.id}/remove"' in page
    assert '<tbody hx-target="closest tr" hx-swap="outerHTML">' in page


# -- staff search ----------------------------------------------------------------


def make_searchable_staff():
    make_staff("jdoe", email="john.doe@example.com").display_name = "John Doe"
    make_staff("asmith", email="anna@example.org").display_name = "Anna Smith"
    make_staff("bjones", email="bj@sales.example.com").display_name = "Bob Jones"
    db.session.commit()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("jdoe", ["jdoe"]),  # user name
        ("SMITH", ["asmith"]),  # display name, any case
        ("Anna Smi", ["asmith"]),
        ("@SALES.", ["bjones"]),  # email
        ("example", ["asmith", "bjones", "jdoe", "root"]),
        ("%", []),  # a LIKE wildcard matches only itself
        ("_", []),
        ("nobody", []),
    ],
)
def test_search_matches(admin_client, query, expected):
    make_searchable_staff()
    group = make_group(Skillgroup, "Networks")
    response = admin_client.get(
        f"{SKILLGROUPS}/{group.id}", query_string={"q": query}, headers=HTMX
    )
    page = response.get_data(as_text=True)
    found = sorted(
        db.session.get(StaffMember, int(staff_id)).username
        for staff_id in re.findall(r'<li id="candidate-(\d+)"', page)
    )
    assert found == expected
    assert "<html" not in page


def test_search_results_have_add_buttons(admin_client):
    make_searchable_staff()
    group = make_group(Skillgroup, "Networks")
    page = admin_client.get(f"{SKILLGROUPS}/{group.id}?q=doe", headers=HTMX).get_data(
        as_text=True
    )
    assert f'hx-post="{SKILLGROUPS}/{group.id}/members"' in page
    assert "Add</button>" in page
    assert 'name="csrf_token"' in page


def test_search_marks_existing_members(admin_client):
    make_searchable_staff()
    jdoe = db.session.scalar(select(StaffMember).where(StaffMember.username == "jdoe"))
    group = make_group(Skillgroup, "Networks", members=[jdoe])
    page = admin_client.get(f"{SKILLGROUPS}/{group.id}?q=jdoe", headers=HTMX).get_data(
        as_text=True
    )
    assert "Member</span>" in page
    assert "Add</button>" not in page


def test_search_without_match_says_so(admin_client):
    group = make_group(Skillgroup, "Networks")
    page = admin_client.get(f"{SKILLGROUPS}/{group.id}?q=zzz", headers=HTMX).get_data(
        as_text=True
    )
    assert 'No staff member matches "zzz"' in page


def test_search_returns_at_most_20(admin_client):
    for index in range(25):
        make_staff(f"agent{index:02}")
    group = make_group(Skillgroup, "Networks")
    page = admin_client.get(f"{SKILLGROUPS}/{group.id}?q=AGENT", headers=HTMX).get_data(
        as_text=True
    )
    assert page.count('<li id="candidate-') == 20
    assert "Showing the first 20 matches" in page


def test_search_works_without_javascript(admin_client):
    make_searchable_staff()
    group = make_group(Skillgroup, "Networks")
    page = admin_client.get(f"{SKILLGROUPS}/{group.id}?q=anna").get_data(as_text=True)
    assert "<html" in page
    assert (
        f'<form class="typeahead" method="get" action="{SKILLGROUPS}/{group.id}"'
        in page
    )
    assert 'value="anna"' in page
    assert "anna@example.org" in page


def test_search_input_is_debounced_typeahead(admin_client):
    group = make_group(Skillgroup, "Networks")
    page = admin_client.get(f"{SKILLGROUPS}/{group.id}").get_data(as_text=True)
    assert '<input type="search"' in page
    assert 'hx-trigger="input changed delay:300ms, search"' in page
    assert 'hx-indicator="#staff-indicator"' in page


# -- keeping an administrator ------------------------------------------------------


def test_last_admin_role_cannot_be_deleted(admin_client):
    role = administrators_role()
    page = admin_client.get(f"{ROLES}/{role.id}/delete").get_data(as_text=True)
    assert "only role that grants administration" in page
    assert "Delete the role</button>" not in page

    response = admin_client.post(f"{ROLES}/{role.id}/delete")
    assert response.status_code == 409
    assert "only role that grants administration" in response.get_data(as_text=True)
    assert fresh(Role, role.id) is not None


def test_last_admin_role_delete_refused_with_htmx(admin_client):
    role = administrators_role()
    response = admin_client.post(f"{ROLES}/{role.id}/delete", headers=HTMX)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.headers["HX-Retarget"] == "#list-message"
    assert response.headers["HX-Reswap"] == "innerHTML"
    assert "only role that grants administration" in page
    assert "<html" not in page
    assert fresh(Role, role.id) is not None


def test_last_admin_role_keeps_flag(admin_client):
    role = administrators_role()
    field = f"role-{role.id}"
    response = admin_client.post(
        f"{ROLES}/{role.id}/edit", data={f"{field}-name": "Renamed"}
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    message = error_beside(page, f"{field}-grants_administration")
    assert "only role that grants it" in message
    assert 'value="Renamed"' in page
    role = fresh(Role, role.id)
    assert role.grants_administration is True
    assert role.name == "Administrators"


def test_cannot_remove_yourself_from_only_admin_role(admin_client, admin):
    make_staff("bob", administrator=True)  # another administrator exists
    role = administrators_role()

    response = admin_client.post(
        f"{ROLES}/{role.id}/members/{admin.id}/remove", headers=HTMX
    )
    page = response.get_data(as_text=True)
    assert response.headers["HX-Retarget"] == "#members-message"
    assert "You cannot remove yourself from Administrators" in page
    assert member_names(fresh(Role, role.id)) == ["bob", "root"]


def test_remove_yourself_refused_without_javascript(admin_client, admin):
    role = administrators_role()
    response = admin_client.post(
        f"{ROLES}/{role.id}/members/{admin.id}/remove", follow_redirects=True
    )
    page = response.get_data(as_text=True)
    assert "You cannot remove yourself from Administrators" in page
    assert member_names(fresh(Role, role.id)) == ["root"]


def test_remove_yourself_with_another_admin_role(admin_client, admin):
    role = administrators_role()
    make_group(Role, "Deputies", members=[admin], grants_administration=True)
    response = admin_client.post(f"{ROLES}/{role.id}/members/{admin.id}/remove")
    assert response.status_code == 302
    assert member_names(fresh(Role, role.id)) == []


def test_remove_other_administrator(admin_client):
    role = administrators_role()
    bob = make_staff("bob", administrator=True)
    response = admin_client.post(f"{ROLES}/{role.id}/members/{bob.id}/remove")
    assert response.status_code == 302
    assert member_names(fresh(Role, role.id)) == ["root"]


def test_remove_yourself_from_ordinary_role(admin_client, admin):
    role = make_group(Role, "Agents", members=[admin])
    response = admin_client.post(f"{ROLES}/{role.id}/members/{admin.id}/remove")
    assert response.status_code == 302
    assert member_names(fresh(Role, role.id)) == []


def test_cannot_delete_your_only_admin_role(admin_client):
    role = administrators_role()
    make_group(
        Role, "Deputies", members=[make_staff("bob")], grants_administration=True
    )
    response = admin_client.post(f"{ROLES}/{role.id}/delete")
    assert response.status_code == 409
    assert "You cannot delete Administrators" in response.get_data(as_text=True)


def test_cannot_clear_flag_on_your_only_admin_role(admin_client):
    role = administrators_role()
    make_group(
        Role, "Deputies", members=[make_staff("bob")], grants_administration=True
    )
    field = f"role-{role.id}"
    page = admin_client.post(
        f"{ROLES}/{role.id}/edit", data={f"{field}-name": "Administrators"}
    ).get_data(as_text=True)
    message = error_beside(page, f"{field}-grants_administration")
    assert "You cannot clear Grants administration" in message
    assert fresh(Role, role.id).grants_administration is True


def test_delete_admin_role_when_another_remains(admin_client, admin):
    make_group(Role, "Deputies", members=[admin], grants_administration=True)
    role = administrators_role()
    response = admin_client.post(f"{ROLES}/{role.id}/delete")
    assert response.status_code == 302
    assert group_names(Role) == ["Deputies"]


def test_clear_flag_when_another_admin_role_remains(admin_client, admin):
    make_group(Role, "Deputies", members=[admin], grants_administration=True)
    role = administrators_role()
    field = f"role-{role.id}"
    response = admin_client.post(
        f"{ROLES}/{role.id}/edit", data={f"{field}-name": "Former administrators"}
    )
    assert response.status_code == 302
    role = fresh(Role, role.id)
    assert role.grants_administration is False
    assert role.name == "Former administrators"


def test_last_active_administrator_cannot_be_removed(app):
    """The rule also holds for callers other than the pages, such as scripts."""
    alice = make_staff("alice", administrator=True)
    bob = make_staff("bob", administrator=True)
    bob.active = False
    carol = make_staff("carol")
    db.session.commit()
    role = administrators_role()

    with pytest.raises(GroupError, match="no active staff member"):
        people.remove_member(role, alice, acting=carol)
    assert people.remove_member(role, bob, acting=carol) is True


def test_delete_empty_admin_role(app):
    alice = make_staff("alice", administrator=True)
    empty = make_group(Role, "Empty admins", grants_administration=True)
    people.delete_group(empty, acting=alice)
    db.session.commit()
    assert group_names(Role) == ["Administrators"]
