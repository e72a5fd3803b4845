"""The audit trail: what is recorded, and the audit page."""

from sqlalchemy import select

from portal.extensions import db
from portal.models import AuditEvent
from tests import factories
from tests.conftest import HTMX, PASSWORD, make_staff, sign_in
from tests.web.test_accounts import GLOBAL, PERSONAL, SECRET, account_form


def events(action=None):
    query = select(AuditEvent).order_by(AuditEvent.id)
    if action:
        query = query.where(AuditEvent.action == action)
    return list(db.session.scalars(query))


def test_sign_ins_are_recorded(client, staff):
    sign_in(client, "alice", "wrong")
    sign_in(client, "alice")
    failed, succeeded = events("sign-in")
    assert failed.outcome == "failure"
    assert failed.object_label == "alice"
    assert succeeded.outcome == "success"
    assert succeeded.username == "alice"
    assert succeeded.remote_addr == "127.0.0.1"


def test_account_changes_recorded_without_secrets(staff_client):
    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    (account_id,) = [e.object_id for e in events("account.create")]
    form = account_form(
        smtp_port="465", smtp_security="ssl", smtp_password="another sécret"
    )
    staff_client.post(f"{PERSONAL}/{account_id}", data={**form, "version": "1"})

    (created,) = events("account.create")
    (updated,) = events("account.update")
    assert created.changes["smtp_password"] == "(changed)"
    assert updated.changes["settings.smtp.port"] == [587, 465]
    assert updated.changes["smtp_password"] == "(changed)"
    for event in events():
        text = repr(event.changes) + event.detail + event.object_label
        assert SECRET not in text
        assert "another sécret" not in text


def test_tests_and_toggles_recorded(staff_client, closed_port):
    form = account_form(
        smtp_host="127.0.0.1",
        smtp_port=str(closed_port),
        smtp_security="none",
        smtp_auth="none",
        test_to="x@example.com",
        action="test-send",
    )
    staff_client.post(f"{PERSONAL}/new/internet", data=form, headers=HTMX)
    (test,) = events("account.test-send")
    assert test.outcome == "failure"
    assert "connect" in test.detail

    staff_client.post(f"{PERSONAL}/new/internet", data=account_form())
    account_id = events("account.create")[0].object_id
    staff_client.post(f"{PERSONAL}/{account_id}/enabled", data={"enabled": "0"})
    assert [e.changes for e in events("account.disable")] == [
        {"enabled": [True, False]}
    ]


def test_permission_and_settings_changes_recorded(app, admin_client):
    account = factories.account(security="everyone")
    group = factories.skillgroup("Networks")
    db.session.commit()
    admin_client.post(
        f"{GLOBAL}/{account.id}/security", data={"security": "permissions"}
    )
    admin_client.post(
        f"{GLOBAL}/{account.id}/grants",
        data={"kind": "skillgroup", "target_id": group.id},
    )
    admin_client.post("/admin/settings/personal-accounts", data={"allowed": "0"})
    assert events("account.security")[0].changes == {
        "security": ["everyone", "permissions"]
    }
    assert events("account.grant-add")[0].changes == {
        "grant.skillgroup": [None, group.id]
    }
    assert events("setting.change")[0].changes == {
        "allow_personal_accounts": ["1", "0"]
    }


def test_audit_page_filters(app, client):
    make_staff("root", administrator=True)
    make_staff("alice")
    sign_in(client, "alice", "wrong")
    sign_in(client, "root")
    page = client.get("/admin/audit?outcome=failure").get_data(as_text=True)
    assert "alice" in page
    fragment = client.get("/admin/audit?action=sign-in&q=root", headers=HTMX).get_data(
        as_text=True
    )
    assert fragment.lstrip().startswith('<div id="audit-events"')
    assert "root" in fragment
    assert "alice" not in fragment
    bad = client.get("/admin/audit?since=yesterday").get_data(as_text=True)
    assert "Enter a date as YYYY-MM-DD." in bad


def test_audit_page_is_read_only(app, admin_client):
    rules = [r for r in app.url_map.iter_rules() if "audit" in r.rule]
    assert rules
    for rule in rules:
        assert rule.methods - {"GET", "HEAD", "OPTIONS"} == set()


def test_staff_cannot_see_audit(staff_client):
    assert staff_client.get("/admin/audit").status_code == 403


def test_password_change_recorded_as_changed(staff_client):
    form = {
        "current_password": PASSWORD,
        "new_password": "a new passphrase",
        "confirm_password": "a new passphrase",
    }
    staff_client.post("/preferences/password", data=form)
    (event,) = events("staff.password")
    assert event.changes == {"password": "(changed)"}
