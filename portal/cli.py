"""Command-line tasks: ``flask --app portal <command>``."""

import io
import signal
import threading
from pathlib import Path

import click
from cryptography.fernet import Fernet
from flask import Flask, current_app
from flask_migrate import upgrade
from sqlalchemy import select
from werkzeug.serving import run_simple

from . import crypto
from .extensions import db
from .models import AccountSecret, IntegrationSecret
from .services import people_import
from .services.delivery import DeliveryWorker, run_once
from .staff import StaffError, create_staff, ensure_first_administrator


def register(app: Flask) -> None:
    app.cli.add_command(init_command)
    app.cli.add_command(create_staff_command)
    app.cli.add_command(create_admin_command)
    app.cli.add_command(rotate_keys_command)
    app.cli.add_command(generate_key_command)
    app.cli.add_command(serve_command)
    app.cli.add_command(worker_command)
    app.cli.add_command(import_people_command)
    app.cli.add_command(module_send_command)


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


@click.command("import-people")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--dry-run", is_flag=True, help="Check the file and report, but save nothing."
)
def import_people_command(file: str, dry_run: bool) -> None:
    """Import staff members, skillgroups and roles from a CSV file.

    FILE is UTF-8 CSV whose first line names the columns: username,
    display_name, email, skillgroups, roles, password. Only username is
    required. skillgroups and roles list names separated by ";", matched to
    existing ones ignoring case. Missing skillgroups and roles are created, and
    new roles do not grant administration. Listing an existing role that grants
    administration, such as Administrators, makes the staff member an
    administrator.

    The import only adds: it adds the listed memberships and never removes a
    staff member from a skillgroup or role that the file does not list.
    Existing staff keep their password. Their display name and email are
    replaced when the file gives one. New staff without a password get a
    random one and are listed as needing a password reset.

    Rows with errors are listed with their line numbers and not imported; all
    other rows are saved in one transaction. The exit status is 1 when a row
    was rejected. Importing the same file again changes nothing.
    """
    try:
        text = people_import.decode_csv(Path(file).read_bytes())
        lines = io.StringIO(text, newline="")  # keeps line breaks inside quotes
        report = people_import.import_people(lines, dry_run=dry_run)
    except people_import.CsvFileError as error:
        db.session.rollback()
        raise click.ClickException(f"{file}: {error} Nothing was imported.") from None

    _echo_import_report(report)
    if report.rejected:
        raise SystemExit(1)


def _echo_import_report(report: people_import.ImportReport) -> None:
    for label, tally in (
        ("Staff members", report.staff),
        ("Skillgroups", report.skillgroups),
        ("Roles", report.roles),
    ):
        click.echo(f"{label}: {tally} (skipped means already up to date)")

    if report.rejected:
        count = len(report.rejected)
        rows = "row was" if count == 1 else "rows were"
        click.echo(f"\n{count} {rows} rejected and not imported:")
        for rejected in report.rejected:
            click.echo(f"  line {rejected.line}: {rejected.reason}")
    if report.need_password_reset:
        click.echo(
            "\nThese new staff members got a random password and need a password "
            "reset: " + ", ".join(report.need_password_reset)
        )
    if report.dry_run:
        click.echo("\nDry run: nothing was saved.")


# Every model with a ``ciphertext`` column produced by ``crypto.encrypt``.
SECRET_HOLDERS = [AccountSecret, IntegrationSecret]


@click.command("serve")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
)
@click.option("--port", default=5000, show_default=True, help="Port to listen on.")
def serve_command(host: str, port: int) -> None:
    """Serve the portal with the delivery worker in the same process.

    This is the embedded default that `make run` starts. Larger installations
    serve with gunicorn and run `flask --app portal worker` processes instead.
    """
    app = current_app._get_current_object()
    worker = None
    if app.config["START_WORKER"]:
        worker = DeliveryWorker(app)
        worker.start()
    try:
        # Flask ignores app.run() inside a "flask" command, so serve directly.
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        if worker is not None:
            worker.stop()


@click.command("worker")
@click.option("--once", is_flag=True, help="Deliver one batch and exit.")
@click.option(
    "--poll",
    default=2.0,
    show_default=True,
    help="Seconds to wait when the outbox is empty.",
)
def worker_command(once: bool, poll: float) -> None:
    """Deliver queued messages until stopped with Ctrl+C or SIGTERM."""
    if once:
        click.echo(f"Handled {run_once()} messages.")
        return

    worker = DeliveryWorker(current_app._get_current_object(), poll_seconds=poll)
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())
    worker.start()
    stop.wait()
    click.echo("Stopping after the current batch…")
    worker.stop(timeout=None)


@click.command("module-send")
@click.argument("module")
@click.option(
    "--to",
    "recipients",
    multiple=True,
    required=True,
    help="A recipient's email address. Repeat the option for more recipients.",
)
@click.option("--subject", required=True, help="The subject line.")
@click.option("--body", required=True, help="The plain-text body.")
def module_send_command(
    module: str, recipients: tuple[str, ...], subject: str, body: str
) -> None:
    """Queue a message from MODULE's account and print its outbox id.

    MODULE is the name of a sending module: email_manager, priority_manager,
    automation_service or web_portal. The message goes through the portal's
    one send path, so the module's account must be usable by modules. The
    delivery worker sends it. The exit status is 1 when nothing was queued.
    """
    from .services import modules, sending
    from .services.access import Module

    names = [str(name) for name in modules.SENDING_MODULES]
    if module not in names:
        raise click.BadParameter(
            f"{module!r} is not a sending module. Use one of: {', '.join(names)}.",
            param_hint="MODULE",
        )

    draft = sending.Draft(to=list(recipients), subject=subject, body=body)
    try:
        message = modules.send_as_module(Module(module), draft)
        db.session.commit()
    except (
        modules.NoModuleAccount,
        sending.SendNotAllowed,
        sending.MessageInvalid,
    ) as error:
        db.session.rollback()
        if isinstance(error, sending.SendNotAllowed):
            error = f"The {module} module may not send from account {error.args[0]}."
        raise click.ClickException(f"Nothing was queued. {error}") from None
    click.echo(message.id)
