"""The Modules page: offered accounts, saving, forged ids and stale assignments."""

import logging
import re

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import ModuleAccount
from portal.services import modules
from portal.services.access import Module
from tests import factories
from tests.conftest import HTMX, make_staff, sign_in
from tests.queries import count_queries

PAGE = "/admin/modules"
AUTOMATION = f"{PAGE}/automation_service"
FIELD = "automation_service-account_id"


def module_routes(app):
    """Every (method, URL) of the Modules page, module names filled in."""
    routes = []
    for rule in app.url_map.iter_rules():
        if app.view_functions[rule.endpoint].__module__ != "portal.admin.modules":
            continue
        values = {name: "automation_service" for name in rule.arguments}
        url = rule.build(values)[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, url))
    return routes


def stored_assignments():
    db.session.expire_all()
    rows = db.session.scalars(select(ModuleAccount)).all()
    return {row.module: row.account_id for row in rows}


def options(page: str, field_id: str) -> list[str]:
    """Return the option values of the select ``field_id``."""
    match = re.search(rf'<select[^>]*id="{field_id}"[^>]*>(.*?)</select>', page, re.S)
    assert match, f"no select {field_id}"
    return re.findall(r'<option[^>]*value="([^"]*)"', match.group(1))


def selected(page: str, field_id: str) -> str:
    match = re.search(rf'<select[^>]*id="{field_id}"[^>]*>(.*?)</select>', page, re.S)
    assert match, f"no select {field_id}"
    chosen = re.findall(r'<option[^>]*selected[^>]*value="([^"]*)"', match.group(1))
    chosen += re.findall(r'<option[^>]*value="([^"]*)"[^>]*selected', match.group(1))
    return chosen[0] if chosen else ""


def section(page: str, module: str) -> str:
    match = re.search(rf'<section[^>]*id="module-{module}".*?</section>', page, re.S)
    assert match, f"no section for {module}"
    return match.group(0)


# -- who may reach the page ----------------------------------------------------


def test_routes_are_listed(app):
    assert module_routes(app) == [("GET", PAGE), ("POST", AUTOMATION)]


def test_staff_get_403_on_every_route(app, staff_client):
    account = factories.account()
    db.session.commit()
    for method, url in module_routes(app):
        response = staff_client.open(url, method=method, data={FIELD: str(account.id)})
        assert response.status_code == 403, f"{method} {url}"
    assert stored_assignments() == {}


def test_anonymous_sent_to_sign_in(app, client):
    for method, url in module_routes(app):
        response = client.open(url, method=method)
        assert response.status_code == 302, f"{method} {url}"
        assert "/sign-in" in response.headers["Location"]


def test_nav_link_only_for_administrators(admin_client):
    page = admin_client.get(PAGE).get_data(as_text=True)
    assert f'href="{PAGE}"' in page

    make_staff("bob")
    sign_in(admin_client, "bob")
    page = admin_client.get("/preferences/email/accounts").get_data(as_text=True)
    assert f'href="{PAGE}"' not in page


def test_post_without_csrf_rejected(admin_client):
    account = factories.account()
    db.session.commit()
    response = admin_client.post(
        AUTOMATION, data={FIELD: str(account.id)}, without_csrf=True
    )
    assert response.status_code == 400
    assert stored_assignments() == {}


# -- the page ------------------------------------------------------------------


def test_offers_only_module_accounts(admin_client):
    everyone = factories.account(name="Everyone account", security="everyone")
    system = factories.account(name="System account", security="system")
    all_staff = factories.account(name="All staff account", security="all_staff")
    permissions = factories.account(name="Permission account", security="permissions")
    disabled = factories.account(name="Disabled account", enabled=False)
    personal = factories.account(name="Own mailbox", owner=factories.staff_member())
    db.session.commit()

    page = admin_client.get(PAGE).get_data(as_text=True)
    for module in modules.SENDING_MODULES:
        offered = options(page, f"{module}-account_id")
        assert offered == ["", str(everyone.id), str(system.id)], module
    for account in (all_staff, permissions, disabled, personal):
        assert account.friendly_name not in page


def test_page_lists_sending_modules(admin_client):
    page = admin_client.get(PAGE).get_data(as_text=True)
    for label in ("Email Manager", "Priority Manager", "Automation Service"):
        assert f">{label}</h2>" in page
    assert ">Web Portal</h2>" in page
    assert 'id="module-email_templates"' not in page
    assert page.count("<strong>No account</strong>") == 4


def test_page_without_usable_accounts_explains(admin_client):
    factories.account(security="all_staff")
    db.session.commit()
    page = admin_client.get(PAGE).get_data(as_text=True)
    assert "No account may be used by modules yet" in page


def test_page_shows_current_account(admin_client):
    account = factories.account(name="Notifications")
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    db.session.commit()

    page = admin_client.get(PAGE).get_data(as_text=True)
    automation = section(page, "automation_service")
    assert "<strong>Notifications</strong>" in automation
    assert selected(automation, FIELD) == str(account.id)
    assert "<strong>No account</strong>" in section(page, "web_portal")


def test_save_button_without_javascript(admin_client):
    page = admin_client.get(PAGE).get_data(as_text=True)
    automation = section(page, "automation_service")
    assert f'action="{AUTOMATION}"' in automation
    assert '<button type="submit">Save</button>' in automation
    assert 'hx-trigger="change"' in automation


def test_query_count_is_constant(admin_client):
    def add_accounts(count):
        for _ in range(count):
            factories.account(security="everyone")
            factories.account(security="system")
            factories.account(security="all_staff")
        db.session.commit()

    add_accounts(1)
    first = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, first.id)
    db.session.commit()
    with count_queries() as few:
        assert admin_client.get(PAGE).status_code == 200

    add_accounts(9)  # 3 accounts become 30
    second = factories.account(security="all_staff")
    modules.assign(Module.WEB_PORTAL, first.id)
    db.session.execute(
        ModuleAccount.__table__.insert().values(
            module="priority_manager", account_id=second.id
        )
    )
    db.session.commit()
    with count_queries() as many:
        page = admin_client.get(PAGE).get_data(as_text=True)

    assert few.count > 0
    assert many.count == few.count
    assert len(options(page, FIELD)) == 1 + 21


# -- saving --------------------------------------------------------------------


def test_htmx_save_returns_module_section(admin_client):
    account = factories.account(name="Notifications", security="system")
    db.session.commit()

    response = admin_client.post(
        AUTOMATION, data={FIELD: str(account.id)}, headers=HTMX
    )
    fragment = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<html" not in fragment
    assert fragment.lstrip().startswith('<section class="panel" id="module-automation')
    assert "Saved." in fragment
    assert "<strong>Notifications</strong>" in fragment
    assert selected(fragment, FIELD) == str(account.id)
    assert stored_assignments() == {"automation_service": account.id}


def test_save_without_javascript_redirects(admin_client):
    account = factories.account(name="Notifications")
    db.session.commit()

    response = admin_client.post(AUTOMATION, data={FIELD: str(account.id)})
    assert response.status_code == 302
    assert response.headers["Location"] == f"{PAGE}#module-automation_service"
    assert stored_assignments() == {"automation_service": account.id}
    page = admin_client.get(PAGE).get_data(as_text=True)
    assert "The Automation Service now sends from Notifications" in page


def test_choosing_no_account_clears(admin_client):
    account = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    db.session.commit()

    fragment = admin_client.post(AUTOMATION, data={FIELD: ""}, headers=HTMX).get_data(
        as_text=True
    )
    assert "<strong>No account</strong>" in fragment
    assert stored_assignments() == {}


def test_save_logs_the_change(admin_client, caplog):
    account = factories.account()
    db.session.commit()
    with caplog.at_level(logging.INFO, logger="portal.admin.modules"):
        admin_client.post(AUTOMATION, data={FIELD: str(account.id)}, headers=HTMX)
    assert f"module automation_service to {account.id} (was None)" in caplog.text


@pytest.mark.parametrize(
    "fields",
    [
        {"security": "all_staff"},
        {"security": "permissions"},
        {"enabled": False},
    ],
    ids=["all-staff", "permissions", "disabled"],
)
def test_forged_account_id_is_403(admin_client, caplog, fields):
    account = factories.account(**fields)
    db.session.commit()

    with caplog.at_level(logging.WARNING, logger="portal.admin.modules"):
        response = admin_client.post(
            AUTOMATION, data={FIELD: str(account.id)}, headers=HTMX
        )
    assert response.status_code == 403
    assert "<html" not in response.get_data(as_text=True)
    assert stored_assignments() == {}
    assert f"assigning account {account.id} to module" in caplog.text


def test_forged_personal_account_is_403(admin_client):
    account = factories.account(owner=factories.staff_member())
    db.session.commit()
    response = admin_client.post(AUTOMATION, data={FIELD: str(account.id)})
    assert response.status_code == 403
    assert "modules may use only enabled global accounts" in response.get_data(
        as_text=True
    )
    assert stored_assignments() == {}


def test_forged_id_keeps_previous_assignment(admin_client):
    usable = factories.account()
    staff_only = factories.account(security="all_staff")
    modules.assign(Module.AUTOMATION_SERVICE, usable.id)
    db.session.commit()

    response = admin_client.post(AUTOMATION, data={FIELD: str(staff_only.id)})
    assert response.status_code == 403
    assert stored_assignments() == {"automation_service": usable.id}


@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_malformed_id_is_400(admin_client, value):
    response = admin_client.post(AUTOMATION, data={FIELD: value})
    assert response.status_code == 400
    assert stored_assignments() == {}


def test_missing_field_is_400(admin_client):
    assert admin_client.post(AUTOMATION, data={}).status_code == 400


@pytest.mark.parametrize("name", ["email_templates", "nobody"])
def test_unknown_module_is_404(admin_client, name):
    account = factories.account()
    db.session.commit()
    response = admin_client.post(
        f"{PAGE}/{name}", data={f"{name}-account_id": str(account.id)}
    )
    assert response.status_code == 404
    assert stored_assignments() == {}


# -- an assignment the rule no longer allows -------------------------------------


def test_all_staff_security_reported(admin_client):
    account = factories.account(name="Notifications")
    db.session.commit()
    admin_client.post(AUTOMATION, data={FIELD: str(account.id)})

    response = admin_client.post(
        f"/admin/email-accounts/{account.id}/security",
        data={"security": "all_staff"},
        headers=HTMX,
    )
    assert response.status_code == 200

    assert modules.module_account(Module.AUTOMATION_SERVICE) is None
    page = admin_client.get(PAGE).get_data(as_text=True)
    automation = section(page, "automation_service")
    assert "<strong>No account</strong>" in automation
    assert "<strong>Notifications</strong>" not in automation
    assert "is now All staff members, which modules may not use" in automation
    assert "the Automation Service sends no mail" in automation
    assert options(automation, FIELD) == [""]
    assert selected(automation, FIELD) == ""


def test_disabled_account_is_reported(admin_client):
    account = factories.account(name="Notifications")
    modules.assign(Module.WEB_PORTAL, account.id)
    account.enabled = False
    db.session.commit()

    page = admin_client.get(PAGE).get_data(as_text=True)
    portal_section = section(page, "web_portal")
    assert "<strong>No account</strong>" in portal_section
    assert "Notifications (" in portal_section
    assert "is disabled" in portal_section
    assert "is disabled" not in section(page, "automation_service")
