"""Integrations › Microsoft 365: the tenant connection, admin consent, Check connection."""

import logging
import re

from flask import flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import DateField, PasswordField, SelectChoice, SelectField, StringField
from wtforms.validators import Optional, ValidationError

from .. import validation
from ..accounts.pages import external_url
from ..auth.session import admin_required
from ..extensions import db
from ..integrations import microsoft
from ..templating import wants_fragment
from . import bp

log = logging.getLogger(__name__)

GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
PAGE = "admin.edit_microsoft365_integration"


def tenant_identifier(form, field) -> None:
    """Accept a tenant GUID or one of the tenant's domains."""
    value = (field.data or "").strip()
    if not value:
        raise ValidationError(
            "Enter the Directory (tenant) ID from the app registration's Overview page."
        )
    if GUID.match(value):
        field.data = value.lower()
        return
    try:
        field.data = validation.normalise_host(value)
    except ValueError:
        raise ValidationError(
            "Enter the tenant ID as a GUID, such as 72f988bf-86f1-41af-91ab-2d7cd011db47, "
            "or as a domain, such as contoso.onmicrosoft.com."
        ) from None


def application_identifier(form, field) -> None:
    value = (field.data or "").strip()
    if not GUID.match(value):
        raise ValidationError(
            "Enter the Application (client) ID from the app registration's Overview "
            "page: a GUID such as 00001111-aaaa-2222-bbbb-3333cccc4444."
        )
    field.data = value.lower()


class IntegrationForm(FlaskForm):
    tenant_id = StringField("Directory (tenant) ID", validators=[tenant_identifier])
    client_id = StringField(
        "Application (client) ID", validators=[application_identifier]
    )
    client_secret = PasswordField("Client secret")
    secret_expires = DateField(
        "Client secret expires on",
        validators=[Optional()],
        render_kw={"type": "date"},
    )
    cloud = SelectField(
        "Cloud",
        choices=[
            SelectChoice(cloud.key, cloud.label) for cloud in microsoft.CLOUDS.values()
        ],
        default="global",
    )


def _redirect_uris() -> dict[str, str]:
    return {
        "consent": external_url("admin.finish_microsoft365_consent"),
        "sign_in": external_url("personal.microsoft365_sign_in_callback"),
    }


def _render_page(form: IntegrationForm | None = None, check: dict | None = None):
    settings = microsoft.current_settings()
    if form is None:
        form = IntegrationForm(
            data={
                "tenant_id": settings.get("tenant_id", ""),
                "client_id": settings.get("client_id", ""),
                "secret_expires": microsoft.secret_expiry(settings),
                "cloud": settings.get("cloud", "global"),
            }
        )
    return render_template(
        "admin/integration_microsoft365.html",
        form=form,
        settings=settings,
        has_secret=microsoft.has_client_secret(),
        configured=microsoft.is_configured(settings),
        connected=microsoft.is_connected(),
        check=check if check is not None else settings.get("check") or {},
        checklist=microsoft.checklist(settings),
        permissions=microsoft.APP_PERMISSIONS,
        delegated=microsoft.DELEGATED_PERMISSIONS,
        notice=microsoft.expiry_notice(settings),
        redirect_uris=_redirect_uris(),
        breadcrumbs=[
            ("Administration", None),
            ("Integrations", None),
            ("Microsoft 365", None),
        ],
    )


@bp.route("/integrations/microsoft365", methods=["GET", "POST"])
@admin_required
def edit_microsoft365_integration():
    if request.method == "GET":
        return _render_page()

    form = IntegrationForm()
    valid = form.validate()
    if not form.client_secret.data and not microsoft.has_client_secret():
        form.client_secret.errors.append(
            "Enter the client secret's Value from Certificates & secrets."
        )
        valid = False
    if not valid:
        form.form_errors.append(
            "The settings were not saved. Correct the fields marked below."
        )
        return _render_page(form)

    changed = microsoft.save_settings(
        tenant_id=form.tenant_id.data,
        client_id=form.client_id.data,
        cloud=form.cloud.data,
        secret_expires=form.secret_expires.data,
        client_secret=form.client_secret.data or "",
    )
    db.session.commit()
    if changed:
        flash(
            "Saved the Microsoft 365 settings. Grant consent if you have not yet, "
            "then check the connection.",
            "success",
        )
    else:
        flash("Nothing changed.", "info")
    return redirect(url_for(PAGE))


@bp.post("/integrations/microsoft365/consent")
@admin_required
def grant_microsoft365_consent():
    try:
        url = microsoft.start_admin_consent(_redirect_uris()["consent"])
    except microsoft.ConsentRefused as refusal:
        flash(str(refusal), "error")
        return redirect(url_for(PAGE))
    return redirect(url)


@bp.get("/integrations/microsoft365/consent/callback")
@admin_required
def finish_microsoft365_consent():
    try:
        tenant = microsoft.finish_admin_consent(request.args)
    except microsoft.ConsentRefused as refusal:
        db.session.commit()  # the audit record of the refusal
        flash(str(refusal), "error")
        return redirect(url_for(PAGE))

    # Consent only matters if a token now carries the roles, so check at once.
    check = microsoft.check_connection()
    db.session.commit()
    log.info("Admin consent granted in tenant %s", tenant)
    flash(
        f"Consent granted in the tenant {tenant}. {check['summary']}",
        "success" if check["ok"] else "error",
    )
    return redirect(url_for(PAGE))


@bp.post("/integrations/microsoft365/check")
@admin_required
def check_microsoft365_connection():
    check = microsoft.check_connection()
    db.session.commit()
    if wants_fragment():
        return render_template(
            "admin/_integration_microsoft365_check.html",
            check=check,
            checklist=microsoft.checklist(),
        )
    return _render_page(check=check)
