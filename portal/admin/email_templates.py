"""Email template pages: list, create, edit, delete, preview and send.

The edit page contains the editor, whose preview fills in sample values as they
are typed, and a panel that sends the saved template as a module. Both
previews also work without JavaScript through a Preview button, which renders
the page again with nothing saved or sent.
"""

import logging

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from wtforms import SelectChoice, SelectField, StringField, TextAreaField

from ..auth.session import admin_required
from ..extensions import db
from ..models import EmailTemplate
from ..services import access, email_templates, modules, sending
from ..services.access import MODULE_LABELS, Module
from ..templating import render_page_or_fragment, wants_fragment
from . import bp

log = logging.getLogger(__name__)

PREVIEW = "preview"  # the value of the Preview buttons' ``action``


# -- forms ---------------------------------------------------------------------


class EmailTemplateForm(FlaskForm):
    """The template editor, whose values ``email_templates.save_template`` checks."""

    name = StringField("Name")
    subject = StringField("Subject")
    body = TextAreaField("Text", render_kw={"rows": 12})
    # Offered from the accounts the Email Templates module may use. The service
    # checks the submitted id again, and the view returns 403 for a forged one.
    from_account_id = SelectField("From account", choices=[], validate_choice=False)
    sample_values = TextAreaField(
        "Sample values for the preview", render_kw={"rows": 4}
    )


class SendTemplateForm(FlaskForm):
    """The send panel, to which ``send_form`` adds one field per placeholder."""

    to = StringField("To")
    module = SelectField(
        "Send as",
        choices=[
            SelectChoice(str(module), MODULE_LABELS[module])
            for module in modules.SENDING_MODULES
        ],
        default=str(Module.AUTOMATION_SERVICE),
    )


def value_field_name(placeholder: str) -> str:
    # The prefix keeps placeholder names clear of the form's own attributes.
    return f"value_{placeholder}"


def send_form(placeholders: list[str], **options) -> SendTemplateForm:
    """Build the send form with a value field for each placeholder.

    Placeholder names contain only ASCII letters, digits and underscores, so
    each field name is a valid attribute name.
    """
    fields = {
        value_field_name(name): StringField(f"{{{{ {name} }}}}")
        for name in placeholders
    }
    form_class = type("TemplateSendForm", (SendTemplateForm,), fields)
    return form_class(prefix="send", **options)


def placeholder_values(form: SendTemplateForm, placeholders: list[str]) -> dict:
    return {name: form[value_field_name(name)].data or "" for name in placeholders}


def _override_choices() -> list[SelectChoice]:
    rows = access.usable_accounts(email_templates.TEMPLATES_PRINCIPAL)
    return [SelectChoice("", "None: the sending module's account")] + [
        SelectChoice(str(row.id), f"{row.friendly_name} <{row.email_address}>")
        for row in rows
    ]


def _editor_form(
    template: EmailTemplate | None, submitted: bool = True
) -> EmailTemplateForm:
    """Return the editor filled from the request when it was ``submitted``
    on a POST, else from ``template``."""
    from_request = submitted and request.method == "POST"
    if from_request:
        form = EmailTemplateForm()
    else:
        form = EmailTemplateForm(formdata=None, obj=template)
    form.from_account_id.choices = _override_choices()

    if not from_request and template is not None:
        # An override the rule no longer allows is not offered, so none is
        # selected, and the page shows why (``override_problem``).
        offered = {choice.value for choice in form.from_account_id.choices}
        selected = str(template.from_account_id or "")
        form.from_account_id.data = selected if selected in offered else ""
    return form


def _optional_id(value: str | None) -> int | None:
    if not value:
        return None
    if not value.isdigit():
        abort(400, "Choose an account from the list.")
    return int(value)


def _crumbs(*extra) -> list:
    return [
        ("Administration", None),
        ("System administration", None),
        ("Email templates", url_for("admin.list_email_templates") if extra else None),
        *extra,
    ]


# -- list, create, edit, delete ---------------------------------------------------


@bp.get("/email-templates")
@admin_required
def list_email_templates():
    return render_template(
        "admin/list_email_templates.html",
        listings=email_templates.list_templates(),
        breadcrumbs=_crumbs(),
    )


@bp.route("/email-templates/new", methods=["GET", "POST"])
@admin_required
def create_email_template():
    form = _editor_form(None)
    if form.validate_on_submit() and request.form.get("action") != PREVIEW:
        template = _save(form, None)
        if template is not None:
            flash(f"Created the template {template.name}.", "success")
            return redirect(
                url_for("admin.edit_email_template", template_id=template.id)
            )

    return render_template(
        "admin/create_email_template.html",
        form=form,
        preview=_editor_preview(form),
        breadcrumbs=_crumbs(("New template", None)),
    )


@bp.route("/email-templates/<int:template_id>", methods=["GET", "POST"])
@admin_required
def edit_email_template(template_id: int):
    template = db.get_or_404(EmailTemplate, template_id)
    form = _editor_form(template)
    if form.validate_on_submit() and request.form.get("action") != PREVIEW:
        if _save(form, template) is not None:
            flash(f"Saved the template {template.name}.", "success")
            return redirect(
                url_for("admin.edit_email_template", template_id=template.id)
            )

    return _render_edit_page(template, form)


def _save(form: EmailTemplateForm, template: EmailTemplate | None):
    """Save the editor's values and commit.

    Returns the template, or None after putting the errors beside their fields.
    """
    creating = template is None
    try:
        template = email_templates.save_template(
            template,
            name=form.name.data or "",
            subject=form.subject.data or "",
            body=form.body.data or "",
            from_account_id=_optional_id(form.from_account_id.data),
        )
        db.session.commit()
    except email_templates.TemplateInvalid as error:
        db.session.rollback()
        for name, message in error.errors.items():
            form[name].errors.append(message)
        return None
    except email_templates.OverrideNotUsable as error:
        db.session.rollback()
        log.warning(
            "Rejected staff member %s setting account %s as a template's From "
            "override, because the usage rule does not allow it",
            current_user.id,
            error.args[0],
        )
        abort(
            403,
            "Modules may not use that account. Choose a From account from the list.",
        )
    except IntegrityError:
        # Another request saved a template with the same name first.
        db.session.rollback()
        form.name.errors.append(
            "A template with this name was saved at the same time. Choose another name."
        )
        return None

    log.info(
        "Staff member %s %s email template %s %r (From override: %s)",
        current_user.id,
        "created" if creating else "saved",
        template.id,
        template.name,
        template.from_account_id,
    )
    return template


@bp.route("/email-templates/<int:template_id>/delete", methods=["GET", "POST"])
@admin_required
def delete_email_template(template_id: int):
    template = db.get_or_404(EmailTemplate, template_id)
    if request.method == "GET":
        return render_template(
            "admin/delete_email_template.html",
            email_template=template,
            breadcrumbs=_crumbs((template.name, None)),
        )

    name = template.name
    email_templates.delete_template(template)
    db.session.commit()
    log.info(
        "Staff member %s deleted email template %s %r",
        current_user.id,
        template_id,
        name,
    )

    if wants_fragment():
        return ""  # htmx removes the row
    flash(f"Deleted the template {name}.", "success")
    return redirect(url_for("admin.list_email_templates"))


# -- previews --------------------------------------------------------------------


def _editor_preview(form: EmailTemplateForm) -> dict:
    values, unreadable = email_templates.parse_sample_values(
        form.sample_values.data or ""
    )
    rendered = email_templates.render(
        form.subject.data or "", form.body.data or "", values
    )
    return {"rendered": rendered, "unreadable": unreadable}


@bp.post("/email-templates/preview")
@admin_required
def preview_email_template():
    """Fill in the editor's subject and text with its sample values."""
    form = EmailTemplateForm()
    return render_page_or_fragment(
        "admin/preview_email_template.html",
        "admin/_email_template_preview.html",
        preview=_editor_preview(form),
        breadcrumbs=_crumbs(("Preview", None)),
    )


@bp.post("/email-templates/<int:template_id>/send/preview")
@admin_required
def preview_email_template_message(template_id: int):
    """Fill in the saved template with the send panel's values."""
    template = db.get_or_404(EmailTemplate, template_id)
    placeholders = email_templates.find_placeholders(template.subject, template.body)
    form = send_form(placeholders)
    values = placeholder_values(form, placeholders)
    return render_page_or_fragment(
        "admin/preview_email_template.html",
        "admin/_email_template_preview.html",
        preview=_message_preview(template, values),
        breadcrumbs=_crumbs((template.name, None), ("Preview", None)),
    )


def _message_preview(template: EmailTemplate, values: dict) -> dict:
    rendered = email_templates.render(template.subject, template.body, values)
    return {"rendered": rendered, "unreadable": []}


# -- send ------------------------------------------------------------------------


@bp.post("/email-templates/<int:template_id>/send")
@admin_required
def send_email_template(template_id: int):
    """Send the saved template, or with ``action=preview`` only preview it."""
    template = db.get_or_404(EmailTemplate, template_id)
    placeholders = email_templates.find_placeholders(template.subject, template.body)
    form = send_form(placeholders)
    values = placeholder_values(form, placeholders)

    if request.form.get("action") == PREVIEW or not form.validate():
        return _send_response(template, placeholders, form, values)

    try:
        message = email_templates.send_template(
            template,
            Module(form.module.data),
            sending.split_addresses(form.to.data or ""),
            values,
        )
        db.session.commit()
    except email_templates.ValuesInvalid as error:
        db.session.rollback()
        for name, text in error.errors.items():
            form[value_field_name(name)].errors.append(text)
        return _send_response(template, placeholders, form, values)
    except sending.MessageInvalid as error:
        db.session.rollback()
        return _send_response(
            template, placeholders, form, values, error=_describe(form, error)
        )
    except modules.NoModuleAccount as error:
        db.session.rollback()
        form.module.errors.append(str(error))
        return _send_response(template, placeholders, form, values)
    except sending.SendNotAllowed:
        # The rule changed between the account lookup and the send.
        db.session.rollback()
        return _send_response(
            template,
            placeholders,
            form,
            values,
            error="The sending account may no longer be used by modules. Reload "
            "the page and try again.",
        )

    log.info(
        "Staff member %s queued message %s from email template %s as module %s",
        current_user.id,
        message.id,
        template.id,
        form.module.data,
    )
    sent = f"Queued message {message.id} from {message.sender} for delivery."
    if wants_fragment():
        return _send_response(template, placeholders, form, values, sent=sent)
    flash(sent, "success")
    return redirect(
        url_for("admin.edit_email_template", template_id=template.id) + "#send-panel"
    )


def _describe(form: SendTemplateForm, error: sending.MessageInvalid) -> str:
    """Put recipient errors beside To and return the others as one message."""
    others = []
    for name, text in error.errors.items():
        if name in ("to", "cc", "bcc"):
            form.to.errors.append(text)
        elif name == "subject":
            others.append(f"The filled-in subject is invalid: {text}")
        elif name == "body":
            others.append(f"The filled-in text is invalid: {text}")
        else:
            others.append(text)
    return " ".join(others)


def _send_context(
    template: EmailTemplate,
    placeholders: list[str],
    form: SendTemplateForm | None = None,
    values: dict | None = None,
    error: str = "",
    sent: str = "",
) -> dict:
    """Return what the send panel shows; without ``form``, an empty form."""
    if form is None:
        form = send_form(placeholders, formdata=None)
    return {
        "email_template": template,
        "placeholders": placeholders,
        "override": _usable_override(template),
        "send_form": form,
        "send_preview": _message_preview(template, values or {}),
        "send_error": error,
        "sent": sent,
    }


def _send_response(
    template: EmailTemplate,
    placeholders: list[str],
    form: SendTemplateForm,
    values: dict,
    **extra,
):
    """Return the send panel to htmx, or the whole edit page without it."""
    context = _send_context(template, placeholders, form, values, **extra)
    if wants_fragment():
        return render_template("admin/_email_template_send.html", **context)
    return _render_edit_page(template, _editor_form(template, submitted=False), context)


def _usable_override(template: EmailTemplate):
    """Return the template's From override if the rule still allows it."""
    account = template.from_account
    if account is None:
        return None
    if not access.may_use(email_templates.TEMPLATES_PRINCIPAL, account.id):
        return None
    return account


def _render_edit_page(
    template: EmailTemplate, form: EmailTemplateForm, send_context: dict | None = None
):
    placeholders = email_templates.find_placeholders(template.subject, template.body)
    send_context = send_context or _send_context(template, placeholders)
    return render_template(
        "admin/edit_email_template.html",
        form=form,
        preview=_editor_preview(form),
        override_problem=email_templates.override_problem(template),
        breadcrumbs=_crumbs((template.name, None)),
        **send_context,
    )
