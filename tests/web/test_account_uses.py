"""Deleting or disabling an account that modules, templates or staff use."""

from sqlalchemy import select

from portal.extensions import db
from portal.models import DefaultAccount, EmailAccount, EmailTemplate, ModuleAccount
from tests import factories
from tests.conftest import HTMX, make_staff
from tests.web.test_accounts import GLOBAL


def used_account():
    alice = make_staff("alice")
    account = factories.account("Main desk", security="everyone")
    other = factories.account("Backup desk", security="system")
    db.session.add(ModuleAccount(module="priority_manager", account_id=account.id))
    db.session.add(
        EmailTemplate(
            name="Welcome", subject="Hi", body="Hello", from_account_id=account.id
        )
    )
    db.session.add(DefaultAccount(staff_id=alice.id, account_id=account.id))
    db.session.commit()
    return account, other


def test_delete_lists_uses_first(app, admin_client):
    account, _ = used_account()
    response = admin_client.post(f"{GLOBAL}/{account.id}/delete", headers=HTMX)
    assert response.headers["HX-Redirect"] == f"{GLOBAL}/{account.id}/delete"
    assert db.session.get(EmailAccount, account.id) is not None

    page = admin_client.get(f"{GLOBAL}/{account.id}/delete").get_data(as_text=True)
    assert "Priority Manager" in page
    assert "Welcome" in page
    assert "alice" in page
    assert "Backup desk" in page  # offered as the replacement


def test_delete_moves_uses_to_replacement(app, admin_client):
    account, other = used_account()
    account_id = account.id
    form = {"confirmed": "1", "replacement_id": str(other.id)}
    assert (
        admin_client.post(f"{GLOBAL}/{account_id}/delete", data=form).status_code == 302
    )
    db.session.expire_all()
    assert db.session.get(EmailAccount, account_id) is None
    assert db.session.get(ModuleAccount, "priority_manager").account_id == other.id
    assert db.session.scalar(select(EmailTemplate)).from_account_id == other.id
    assert db.session.scalars(select(DefaultAccount)).all() == []


def test_delete_without_replacement_leaves_nothing_dangling(app, admin_client):
    account, _ = used_account()
    assert (
        admin_client.post(
            f"{GLOBAL}/{account.id}/delete", data={"confirmed": "1"}
        ).status_code
        == 302
    )
    db.session.expire_all()
    assert db.session.scalars(select(ModuleAccount)).all() == []
    assert db.session.scalar(select(EmailTemplate)).from_account_id is None
    assert db.session.scalars(select(DefaultAccount)).all() == []


def test_replacement_must_be_usable_by_modules(app, admin_client):
    account, _ = used_account()
    staff_only = factories.account("Staff only", security="all_staff")
    db.session.commit()
    form = {"confirmed": "1", "replacement_id": str(staff_only.id)}
    response = admin_client.post(f"{GLOBAL}/{account.id}/delete", data=form)
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"{GLOBAL}/{account.id}/delete")
    db.session.expire_all()
    assert db.session.get(EmailAccount, account.id) is not None


def test_disable_lists_uses_first(app, admin_client):
    account, other = used_account()
    response = admin_client.post(
        f"{GLOBAL}/{account.id}/enabled", data={"enabled": "0"}, headers=HTMX
    )
    assert "HX-Redirect" in response.headers
    db.session.expire_all()
    assert db.session.get(EmailAccount, account.id).enabled

    page = admin_client.get(response.headers["HX-Redirect"]).get_data(as_text=True)
    assert "Disable Main desk?" in page
    form = {"enabled": "0", "confirmed": "1", "replacement_id": str(other.id)}
    assert (
        admin_client.post(f"{GLOBAL}/{account.id}/enabled", data=form).status_code
        == 302
    )
    db.session.expire_all()
    assert not db.session.get(EmailAccount, account.id).enabled
    assert db.session.get(ModuleAccount, "priority_manager").account_id == other.id


def test_unused_account_disables_at_once(app, admin_client):
    account = factories.account()
    db.session.commit()
    response = admin_client.post(
        f"{GLOBAL}/{account.id}/enabled", data={"enabled": "0"}, headers=HTMX
    )
    assert response.get_data(as_text=True).lstrip().startswith("<tr")
    db.session.expire_all()
    assert not account.enabled
