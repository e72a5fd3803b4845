"""Command-line tasks: ``flask --app portal <command>``."""

import click
from cryptography.fernet import Fernet
from flask import Flask, current_app
from flask_migrate import upgrade
from sqlalchemy import select

from . import crypto
from .extensions import db
from .models import AccountSecret
from .staff import StaffError, create_staff, ensure_first_administrator


def register(app: Flask) -> None:
    app.cli.add_command(init_command)
    app.cli.add_command(create_staff_command)
    app.cli.add_command(create_admin_command)
    app.cli.add_command(rotate_keys_command)
    app.cli.add_command(generate_key_command)


@click.command("init")
def init_command() -> None:
    """Bring the database schema up to date and create the first administrator."""
    upgrade()
    generated = ensure_first_administrator(current_app.config["ADMIN_PASSWORD"])
    if generated:
        click.echo(
            "Created the administrator 'admin' with the password below. It is "
            "shown only this once; change it after signing in.\n\n"
            f"    {generated}\n"
        )


def _create(username: str, password: str, email: str, administrator: bool) -> None:
    try:
        create_staff(username, password, email=email, administrator=administrator)
    except StaffError as error:
        raise click.ClickException(str(error)) from error
    db.session.commit()
    kind = "administrator" if administrator else "staff member"
    click.echo(f"Created {kind} {username!r}.")


@click.command("create-staff")
@click.argument("username")
@click.option("--email", default="", help="The staff member's email address.")
@click.password_option(help="Sign-in password (prompted for when omitted).")
def create_staff_command(username: str, email: str, password: str) -> None:
    """Create a staff member who can sign in."""
    _create(username, password, email, administrator=False)


@click.command("create-admin")
@click.argument("username")
@click.option("--email", default="", help="The administrator's email address.")
@click.password_option(help="Sign-in password (prompted for when omitted).")
def create_admin_command(username: str, email: str, password: str) -> None:
    """Create a staff member with the Administrators role."""
    _create(username, password, email, administrator=True)


@click.command("rotate-keys")
def rotate_keys_command() -> None:
    """Re-encrypt every stored secret with the first key of PORTAL_ENCRYPTION_KEYS."""
    count = 0
    for model in SECRET_HOLDERS:
        for row in db.session.scalars(select(model)):
            row.ciphertext = crypto.reencrypt(row.ciphertext)
            count += 1
    db.session.commit()
    click.echo(f"Re-encrypted {count} stored secrets with the first key.")


@click.command("generate-key")
def generate_key_command() -> None:
    """Print a new encryption key for PORTAL_ENCRYPTION_KEYS."""
    click.echo(Fernet.generate_key().decode())


# Every model with a ``ciphertext`` column produced by ``crypto.encrypt``.
SECRET_HOLDERS = [AccountSecret]
