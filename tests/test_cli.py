from cryptography.fernet import Fernet
from sqlalchemy import select

from portal import crypto
from portal.extensions import db
from portal.models import AccountSecret, EmailAccount, StaffMember
from portal.staff import ensure_first_administrator


def test_first_administrator_gets_generated_password(app):
    generated = ensure_first_administrator(None)
    admin = db.session.scalar(
        select(StaffMember).where(StaffMember.username == "admin")
    )
    assert generated
    assert admin.is_administrator
    assert admin.check_password(generated)


def test_first_administrator_uses_configured_password(app):
    assert ensure_first_administrator("from the environment") is None
    admin = db.session.scalar(select(StaffMember))
    assert admin.check_password("from the environment")


def test_first_administrator_created_only_once(app):
    ensure_first_administrator("first password")
    assert ensure_first_administrator(None) is None
    assert db.session.scalar(select(db.func.count(StaffMember.id))) == 1


def test_create_staff_and_admin_commands(runner):
    staff = runner.invoke(
        args=[
            "create-staff",
            "bob",
            "--password",
            "s3cret-pass",
            "--email",
            "bob@example.com",
        ]
    )
    admin = runner.invoke(args=["create-admin", "carol", "--password", "s3cret-pass"])
    assert staff.exit_code == 0, staff.output
    assert admin.exit_code == 0, admin.output
    bob = db.session.scalar(select(StaffMember).where(StaffMember.username == "bob"))
    carol = db.session.scalar(
        select(StaffMember).where(StaffMember.username == "carol")
    )
    assert not bob.is_administrator
    assert carol.is_administrator


def test_create_staff_rejects_duplicate(runner):
    runner.invoke(args=["create-staff", "bob", "--password", "s3cret-pass"])
    result = runner.invoke(args=["create-staff", "BOB", "--password", "s3cret-pass"])
    assert result.exit_code != 0
    assert "already exists" in result.output


def test_create_staff_rejects_short_password(runner):
    result = runner.invoke(args=["create-staff", "bob", "--password", "short"])
    assert result.exit_code != 0
    assert "at least 8 characters" in result.output


def test_rotate_keys_reencrypts_with_first_key(app, runner):
    old_keys = list(app.config["ENCRYPTION_KEYS"])
    account = EmailAccount(
        account_type="internet", friendly_name="Rotated", email_address="r@example.com"
    )
    account.secrets.append(
        AccountSecret(name="smtp_password", ciphertext=crypto.encrypt("päss wörd"))
    )
    db.session.add(account)
    db.session.commit()

    new_key = Fernet.generate_key().decode()
    app.config["ENCRYPTION_KEYS"] = [new_key, *old_keys]
    result = runner.invoke(args=["rotate-keys"])
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 1" in result.output

    ciphertext = db.session.scalar(select(AccountSecret.ciphertext))
    assert Fernet(new_key).decrypt(ciphertext.encode()).decode() == "päss wörd"
    app.config["ENCRYPTION_KEYS"] = [new_key]  # the old key can go now
    assert crypto.decrypt(ciphertext) == "päss wörd"
