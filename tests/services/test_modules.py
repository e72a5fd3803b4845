"""Module accounts: assignment, the usage rule, send_as_module and module-send."""

import email
import email.policy

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import ModuleAccount, OutboxMessage
from portal.services import delivery, modules
from portal.services.access import Module
from portal.services.sending import Draft, MessageInvalid
from tests import factories

AUTOMATION = Module.AUTOMATION_SERVICE


def smtp_account(server, **fields):
    """A global account that sends through the test SMTP ``server``."""
    account = factories.account(**fields)
    account.settings = {
        "smtp": {
            "host": server.host,
            "port": server.port,
            "security": "none",
            "auth": "none",
            "username": "",
        },
        "read": None,
        "trusted_fingerprint": "",
    }
    db.session.flush()
    return account


def stored_assignments():
    db.session.expire_all()
    rows = db.session.scalars(select(ModuleAccount)).all()
    return {row.module: row.account_id for row in rows}


def outbox():
    db.session.expire_all()
    return db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()


def draft(**fields):
    values = {"to": ["customer@example.com"], "subject": "Job 42", "body": "Done."}
    values.update(fields)
    return Draft(**values)


# -- assignment ----------------------------------------------------------------


def test_unassigned_module_has_no_account(app):
    assert modules.module_account(AUTOMATION) is None


@pytest.mark.parametrize("security", ["everyone", "system"])
def test_assign_usable_account(app, security):
    account = factories.account(security=security)
    previous = modules.assign(AUTOMATION, account.id)
    db.session.commit()

    assert previous is None
    assert stored_assignments() == {"automation_service": account.id}
    assert modules.module_account(AUTOMATION).id == account.id


@pytest.mark.parametrize(
    "fields",
    [
        {"security": "all_staff"},
        {"security": "permissions"},
        {"security": "everyone", "enabled": False},
        {"security": "system", "enabled": False},
    ],
    ids=["all-staff", "permissions", "disabled-everyone", "disabled-system"],
)
def test_assign_rejects_unusable_account(app, fields):
    account = factories.account(**fields)
    with pytest.raises(modules.AccountNotUsable):
        modules.assign(AUTOMATION, account.id)
    assert stored_assignments() == {}


def test_assign_rejects_personal_account(app):
    account = factories.account(owner=factories.staff_member())
    with pytest.raises(modules.AccountNotUsable):
        modules.assign(AUTOMATION, account.id)
    assert stored_assignments() == {}


def test_assign_rejects_missing_account(app):
    with pytest.raises(modules.AccountNotUsable):
        modules.assign(AUTOMATION, 999_999)


def test_assign_replaces_and_clears(app):
    first = factories.account()
    second = factories.account(security="system")
    modules.assign(AUTOMATION, first.id)
    assert modules.assign(AUTOMATION, second.id) == first.id
    db.session.commit()
    assert stored_assignments() == {"automation_service": second.id}

    assert modules.assign(AUTOMATION, None) == second.id
    db.session.commit()
    assert stored_assignments() == {}


def test_assignments_are_per_module(app):
    first = factories.account()
    second = factories.account()
    modules.assign(Module.WEB_PORTAL, first.id)
    modules.assign(Module.PRIORITY_MANAGER, second.id)
    db.session.commit()
    assert modules.module_account(Module.WEB_PORTAL).id == first.id
    assert modules.module_account(Module.PRIORITY_MANAGER).id == second.id
    assert modules.module_account(Module.EMAIL_MANAGER) is None


def test_templates_module_has_no_account(app):
    account = factories.account()
    with pytest.raises(ValueError, match="no account of its own"):
        modules.assign(Module.EMAIL_TEMPLATES, account.id)


def test_deleting_account_removes_assignment(app):
    account = factories.account()
    modules.assign(AUTOMATION, account.id)
    db.session.commit()
    db.session.delete(account)
    db.session.commit()
    assert stored_assignments() == {}


# -- an assigned account that the rule no longer allows ------------------------


@pytest.mark.parametrize(
    ("change", "explanation"),
    [
        ({"security": "all_staff"}, "is now All staff members"),
        ({"security": "permissions"}, "is now Staff members via permissions"),
        ({"enabled": False}, "is disabled"),
    ],
    ids=["all-staff", "permissions", "disabled"],
)
def test_changed_account_stops_being_used(app, change, explanation):
    account = factories.account(name="Notifications")
    modules.assign(AUTOMATION, account.id)
    db.session.commit()
    for name, value in change.items():
        setattr(account, name, value)
    db.session.commit()

    assert modules.module_account(AUTOMATION) is None
    (setting,) = [s for s in modules.list_settings() if s.module == AUTOMATION]
    assert setting.assigned.id == account.id
    assert not setting.usable
    assert explanation in setting.problem
    assert "Notifications" in setting.problem
    with pytest.raises(modules.NoModuleAccount, match=explanation):
        modules.send_as_module(AUTOMATION, draft())
    assert outbox() == []


def test_account_usable_again_after_change_back(app):
    account = factories.account()
    modules.assign(AUTOMATION, account.id)
    account.security = "all_staff"
    db.session.commit()
    assert modules.module_account(AUTOMATION) is None

    account.security = "system"
    db.session.commit()
    assert modules.module_account(AUTOMATION).id == account.id


def test_list_settings_covers_sending_modules(app):
    usable = factories.account(name="Usable", security="system")
    factories.account(name="Staff only", security="all_staff")
    modules.assign(Module.WEB_PORTAL, usable.id)
    db.session.commit()

    settings = {setting.module: setting for setting in modules.list_settings()}
    assert list(settings) == list(modules.SENDING_MODULES)
    assert Module.EMAIL_TEMPLATES not in settings
    for setting in settings.values():
        assert [row.friendly_name for row in setting.choices] == ["Usable"]
    assert settings[Module.WEB_PORTAL].usable
    assert settings[Module.WEB_PORTAL].problem == ""
    assert settings[AUTOMATION].assigned is None
    assert settings[AUTOMATION].problem == ""


# -- sending as a module -------------------------------------------------------


def test_send_as_module_queues_from_its_account(app):
    account = factories.account(security="system")
    modules.assign(AUTOMATION, account.id)
    db.session.commit()

    row = modules.send_as_module(AUTOMATION, draft())
    db.session.commit()

    (stored,) = outbox()
    assert stored.id == row.id
    assert stored.account_id == account.id
    assert stored.module == "automation_service"
    assert stored.staff_id is None
    assert stored.sender == account.email_address
    assert stored.recipients == ["customer@example.com"]


def test_send_as_module_without_account(app):
    with pytest.raises(modules.NoModuleAccount, match="has no email account"):
        modules.send_as_module(AUTOMATION, draft())


def test_send_as_module_checks_the_message(app):
    account = factories.account()
    modules.assign(AUTOMATION, account.id)
    db.session.commit()
    with pytest.raises(MessageInvalid) as raised:
        modules.send_as_module(AUTOMATION, draft(to=["not an address"]))
    assert "to" in raised.value.errors
    db.session.rollback()
    assert outbox() == []


# -- the module-send command ---------------------------------------------------


def test_module_send_delivers(app, runner, plain_smtp):
    account = smtp_account(plain_smtp, name="Helpdesk", security="system")
    modules.assign(Module.PRIORITY_MANAGER, account.id)
    db.session.commit()

    result = runner.invoke(
        args=[
            "module-send",
            "priority_manager",
            "--to",
            "first@example.com",
            "--to",
            "second@example.com",
            "--subject",
            "Job 42 is overdue",
            "--body",
            "Please look at job 42.",
        ]
    )
    assert result.exit_code == 0, result.output
    (row,) = outbox()
    assert result.output.strip() == str(row.id)
    assert row.module == "priority_manager"
    assert row.account_id == account.id

    assert delivery.run_once("test-worker") == 1
    (row,) = outbox()
    assert row.status == "sent", row.last_error
    (received,) = plain_smtp.messages
    assert received.mail_from == account.email_address
    assert received.rcpt_tos == ["first@example.com", "second@example.com"]
    message = email.message_from_bytes(received.content, policy=email.policy.default)
    assert message["From"].addresses[0].addr_spec == account.email_address
    assert message["Subject"] == "Job 42 is overdue"
    assert message.get_content().strip() == "Please look at job 42."


def test_module_send_without_account_fails(app, runner):
    result = runner.invoke(
        args=["module-send", "web_portal", "--to", "a@example.com"]
        + ["--subject", "Hello", "--body", "Hi"]
    )
    assert result.exit_code == 1
    assert "has no email account" in result.output
    assert outbox() == []


def test_module_send_after_security_change_fails(app, runner):
    account = factories.account(name="Notifications")
    modules.assign(AUTOMATION, account.id)
    account.security = "all_staff"
    db.session.commit()

    result = runner.invoke(
        args=["module-send", "automation_service", "--to", "a@example.com"]
        + ["--subject", "Hello", "--body", "Hi"]
    )
    assert result.exit_code == 1
    assert "All staff members" in result.output
    assert outbox() == []


def test_module_send_rejects_invalid_address(app, runner):
    account = factories.account()
    modules.assign(AUTOMATION, account.id)
    db.session.commit()

    result = runner.invoke(
        args=["module-send", "automation_service", "--to", "not an address"]
        + ["--subject", "Hello", "--body", "Hi"]
    )
    assert result.exit_code == 1
    assert "not an address" in result.output
    assert outbox() == []


@pytest.mark.parametrize("name", ["email_templates", "nobody"])
def test_module_send_rejects_unknown_module(app, runner, name):
    result = runner.invoke(
        args=["module-send", name, "--to", "a@example.com"]
        + ["--subject", "Hello", "--body", "Hi"]
    )
    assert result.exit_code == 2
    assert "is not a sending module" in result.output
    assert "automation_service" in result.output
