"""Integrations › Google Workspace: the service account, the OAuth client, Check connection."""

import logging

from flask import flash, redirect, render_template, url_for
from flask_htmx import make_response
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import EmailField, PasswordField, StringField

from .. import validation
from ..accounts.forms import normalised_by
from ..accounts.kinds.google import redirect_uri
from ..auth.session import admin_required
from ..extensions import db
from ..integrations import google
from ..templating import wants_fragment
from . import bp

log = logging.getLogger(__name__)


class ServiceAccountForm(FlaskForm):
    key_file = FileField("Service account key (JSON file)")
    admin_address = EmailField(
        "Administrator address",
        validators=[normalised_by(validation.normalise_email)],
    )


class OAuthClientForm(FlaskForm):
    client_id = StringField("Client ID")
    client_secret = PasswordField("Client secret")


def _render_page(
    service_form: ServiceAccountForm | None = None,
    client_form: OAuthClientForm | None = None,
    check: google.ConnectionCheck | None = None,
):
    service_account = google.service_account_summary()
    client = google.oauth_client_summary()
    if service_form is None:
        service_form = ServiceAccountForm(
            data={"admin_address": (service_account or {}).get("admin_address", "")}
        )
    if client_form is None:
        client_form = OAuthClientForm(
            data={"client_id": (client or {}).get("client_id", "")}
        )
    integration = google.get_integration()
    last_check = (integration.settings or {}).get("last_check") if integration else None
    return render_template(
        "admin/edit_google_integration.html",
        service_account=service_account,
        client=client,
        service_form=service_form,
        client_form=client_form,
        scopes=google.DELEGATION_SCOPES,
        redirect_uri=redirect_uri(),
        check=check,
        last_check=last_check,
        breadcrumbs=[
            ("Administration", None),
            ("Integrations", None),
            ("Google Workspace", None),
        ],
    )


@bp.get("/integrations/google")
@admin_required
def edit_google_integration():
    return _render_page()


@bp.post("/integrations/google/service-account")
@admin_required
def save_google_service_account():
    form = ServiceAccountForm()
    stored = google.service_account_summary()
    key = None
    valid = form.validate()

    upload = form.key_file.data
    if upload and getattr(upload, "filename", ""):
        try:
            key = google.parse_service_account_key(
                upload.read(google.SERVICE_ACCOUNT_KEY_MAX_BYTES + 1)
            )
        except ValueError as error:
            form.key_file.errors.append(str(error))
            valid = False
    elif stored is None:
        form.key_file.errors.append("Choose the service account's JSON key file.")
        valid = False

    address = form.admin_address.data or ""
    if not address and not form.admin_address.errors:
        form.admin_address.errors.append(
            "Enter the address of a Workspace administrator; directory searches act as this user."
        )
        valid = False
    elif address and google.is_consumer_address(address):
        refused = google.consumer_address_refused(address)
        form.admin_address.errors.append(f"{refused.summary} {refused.advice}")
        valid = False
    if not valid:
        return _render_page(service_form=form), 400

    google.save_service_account(key, address)
    db.session.commit()
    google.clear_token_cache()
    if key is not None:
        flash(
            f"Stored the key {key.private_key_id} of {key.client_email}. Press "
            "Check connection to see which scopes work.",
            "success",
        )
    else:
        flash(f"Directory searches now act as {address}.", "success")
    return redirect(url_for("admin.edit_google_integration"))


@bp.post("/integrations/google/service-account/remove")
@admin_required
def remove_google_service_account():
    google.remove_service_account()
    db.session.commit()
    google.clear_token_cache()
    flash(
        "Removed the service account key. Global Google accounts cannot send "
        "until a key is uploaded again.",
        "success",
    )
    return _back_to_page()


@bp.post("/integrations/google/oauth-client")
@admin_required
def save_google_oauth_client():
    form = OAuthClientForm()
    valid = form.validate()
    client_id = (form.client_id.data or "").strip()
    secret = form.client_secret.data or ""
    if not client_id or any(ch.isspace() for ch in client_id):
        form.client_id.errors.append(
            "Enter the client ID of a Web application OAuth client, such as "
            "1234-abc.apps.googleusercontent.com."
        )
        valid = False
    if not secret and google.load_oauth_client() is None:
        form.client_secret.errors.append("Enter the client secret.")
        valid = False
    if not valid:
        return _render_page(client_form=form), 400

    google.save_oauth_client(client_id, secret.strip())
    db.session.commit()
    flash(
        f"Saved the OAuth client {client_id}. Staff can now connect Google mailboxes.",
        "success",
    )
    return redirect(url_for("admin.edit_google_integration"))


@bp.post("/integrations/google/oauth-client/remove")
@admin_required
def remove_google_oauth_client():
    google.remove_oauth_client()
    db.session.commit()
    flash(
        "Removed the OAuth client. Personal Google accounts cannot refresh "
        "their tokens until it is entered again.",
        "success",
    )
    return _back_to_page()


@bp.post("/integrations/google/check")
@admin_required
def check_google_connection():
    check = google.check_connection()
    db.session.commit()
    log.info("Google connection check: %s", check.summary)
    if wants_fragment():
        return render_template("admin/_google_connection_check.html", check=check)
    return _render_page(check=check)


def _back_to_page():
    """Reload the page: HX-Redirect for htmx, a 302 redirect for a plain form."""
    url = url_for("admin.edit_google_integration")
    if wants_fragment():
        return make_response(redirect=url)
    return redirect(url)
