"""Email templates: messages with placeholders that modules fill in and send.

A placeholder is written ``{{ name }}``, where the name has ASCII letters,
digits and underscores, with optional spaces or tabs inside the braces.
Filling in is plain text replacement in a single pass over the template: no
value is ever evaluated (no Jinja, no ``str.format``), and a value that itself
contains ``{{ other }}`` is inserted as typed, never filled in again.
"""

import logging
import re
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import joinedload

from .. import validation
from ..extensions import db
from ..models import EmailTemplate, OutboxMessage
from . import access, audit, modules, sending
from .access import Module, ModulePrincipal

log = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"\{\{[ \t]*([A-Za-z0-9_]+)[ \t]*\}\}")

MAX_NAME_LENGTH = 100
MAX_SUBJECT_LENGTH = 998  # RFC 5322 line limit, as the send path enforces

# The From override is checked as this module, whichever module sends.
TEMPLATES_PRINCIPAL = ModulePrincipal(Module.EMAIL_TEMPLATES)


class TemplateInvalid(ValueError):
    """Some fields of a template are invalid. ``errors`` maps field to message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {text}" for name, text in errors.items()))
        self.errors = errors


class OverrideNotUsable(PermissionError):
    """The Email Templates module may not use the chosen From account."""


class ValuesInvalid(ValueError):
    """Some placeholder values are missing or invalid. ``errors`` maps
    placeholder name to message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {text}" for name, text in errors.items()))
        self.errors = errors


# -- placeholders ----------------------------------------------------------------


def find_placeholders(*texts: str) -> list[str]:
    """Return the placeholder names in ``texts``, each once, in order of appearance."""
    names: dict[str, None] = {}
    for text in texts:
        for match in PLACEHOLDER.finditer(text):
            names.setdefault(match[1])
    return list(names)


def has_value(value: str | None) -> bool:
    """Return True when ``value`` fills a placeholder. Blank text is no value."""
    return bool(value and value.strip())


def fill(text: str, values: dict[str, str]) -> str:
    """Replace each placeholder that has a value, and leave the others as written.

    ``re.sub`` with a function inserts the returned text literally, and the
    scan continues after the inserted text, so values are never filled in.
    """

    def replacement(match: re.Match) -> str:
        value = values.get(match[1])
        return value if has_value(value) else match[0]

    return PLACEHOLDER.sub(replacement, text)


@dataclass
class Rendered:
    """A template's subject and body with the values filled in."""

    subject: str
    body: str
    placeholders: list[str]
    missing: list[str]  # placeholders without a value, left as written
    errors: dict[str, str] = field(default_factory=dict)  # placeholder -> message


def render(subject: str, body: str, values: dict[str, str]) -> Rendered:
    """Fill in ``subject`` and ``body`` and report missing and invalid values.

    A value used in the subject must be one line without control characters,
    because a line break in a header would let the value add headers of its
    own (header injection).
    """
    placeholders = find_placeholders(subject, body)
    missing = [name for name in placeholders if not has_value(values.get(name))]

    errors = {}
    for name in find_placeholders(subject):
        if name in missing:
            continue
        try:
            validation.check_header_value(values[name], MAX_SUBJECT_LENGTH)
        except ValueError as error:
            errors[name] = f"This value is used in the subject. {error}"

    return Rendered(
        subject=fill(subject, values),
        body=fill(body, values),
        placeholders=placeholders,
        missing=missing,
        errors=errors,
    )


def parse_sample_values(text: str) -> tuple[dict[str, str], list[int]]:
    """Read ``name = value`` lines into a dict.

    Returns the values and the numbers of the lines that could not be read.
    Blank lines are skipped, and the value keeps everything after the first
    ``=``, stripped.
    """
    values: dict[str, str] = {}
    unreadable = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, equals, value = line.partition("=")
        name = name.strip()
        if name.startswith("{{") and name.endswith("}}"):
            name = name[2:-2].strip()
        if not equals or not re.fullmatch(r"[A-Za-z0-9_]+", name):
            unreadable.append(number)
            continue
        values[name] = value.strip()
    return values, unreadable


# -- the templates ---------------------------------------------------------------


@dataclass
class TemplateListing:
    template: EmailTemplate
    override_problem: str  # why the From override is ignored, or ""


def list_templates() -> list[TemplateListing]:
    """Return every template by name, with any problem of its From override.

    Two queries, whatever the numbers of templates and accounts.
    """
    templates = db.session.scalars(
        select(EmailTemplate)
        .options(joinedload(EmailTemplate.from_account))
        .order_by(func.lower(EmailTemplate.name), EmailTemplate.id)
    ).all()
    usable_ids = {row.id for row in access.usable_accounts(TEMPLATES_PRINCIPAL)}
    return [
        TemplateListing(template, override_problem(template, usable_ids))
        for template in templates
    ]


def override_problem(
    template: EmailTemplate, usable_ids: set[int] | None = None
) -> str:
    """Explain why the template's From override is ignored, or return "".

    ``usable_ids`` are the ids of the accounts the Email Templates module may
    use; when None, the rule is asked for this one account.
    """
    account = template.from_account
    if account is None:
        return ""
    if usable_ids is None:
        usable = access.may_use(TEMPLATES_PRINCIPAL, account.id)
    else:
        usable = account.id in usable_ids
    if usable:
        return ""
    return (
        f"{modules.unusable_cause(account)}, so this template ignores its From "
        "override and sends from the sending module's account. Choose another "
        "account."
    )


def check_fields(
    name: str, subject: str, body: str, template_id: int | None = None
) -> tuple[str, str, str]:
    """Return the name, subject and body cleaned for storage.

    Raises ``TemplateInvalid`` with a message for each invalid field. The
    name must be unique ignoring case. ``template_id`` is the template being
    edited, which may keep its own name.
    """
    errors = {}
    try:
        name = validation.check_header_value(name, MAX_NAME_LENGTH)
    except ValueError as error:
        errors["name"] = str(error)
    else:
        if not name:
            errors["name"] = "Enter a name for the template."
        elif _name_taken(name, template_id):
            errors["name"] = (
                f"A template named {name!r} already exists. Choose another name."
            )

    try:
        subject = validation.check_header_value(subject, MAX_SUBJECT_LENGTH)
    except ValueError as error:
        errors["subject"] = str(error)
    else:
        if not subject:
            errors["subject"] = "Enter a subject."

    # Browsers send a textarea's line breaks as CRLF. Storing LF lets the
    # message builder choose the line endings itself.
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.strip():
        errors["body"] = "Enter the text of the message."
    elif len(body) > sending.MAX_BODY_CHARACTERS:
        errors["body"] = (
            f"The text is {len(body):,} characters long, and the maximum is "
            f"{sending.MAX_BODY_CHARACTERS:,}."
        )

    if errors:
        raise TemplateInvalid(errors)
    return name, subject, body


def _name_taken(name: str, template_id: int | None) -> bool:
    query = select(EmailTemplate.id).where(
        func.lower(EmailTemplate.name) == name.lower()
    )
    if template_id is not None:
        query = query.where(EmailTemplate.id != template_id)
    return db.session.scalar(query.limit(1)) is not None


def save_template(
    template: EmailTemplate | None,
    *,
    name: str,
    subject: str,
    body: str,
    from_account_id: int | None,
) -> EmailTemplate:
    """Create a template, or update ``template``, from checked values.

    Raises ``TemplateInvalid`` for invalid fields and ``OverrideNotUsable``
    when the Email Templates module may not use ``from_account_id``. Nothing
    is changed when either is raised. The caller commits.
    """
    name, subject, body = check_fields(
        name, subject, body, template.id if template else None
    )
    if from_account_id is not None and not access.may_use(
        TEMPLATES_PRINCIPAL, from_account_id
    ):
        raise OverrideNotUsable(from_account_id)

    before = _snapshot(template) if template else {}
    if template is None:
        template = EmailTemplate()
        db.session.add(template)
    template.name = name
    template.subject = subject
    template.body = body
    template.from_account_id = from_account_id
    db.session.flush()
    audit.record(
        "template.update" if before else "template.create",
        object_type="template",
        object_id=template.id,
        label=template.name,
        changes=audit.diff(before, _snapshot(template)),
    )
    return template


def _snapshot(template: EmailTemplate) -> dict:
    return {
        "name": template.name,
        "subject": template.subject,
        "body": template.body,
        "from_account_id": template.from_account_id,
    }


def delete_template(template: EmailTemplate) -> None:
    """Delete the template. The caller commits."""
    audit.record(
        "template.delete",
        object_type="template",
        object_id=template.id,
        label=template.name,
        changes={name: [value, None] for name, value in _snapshot(template).items()},
    )
    db.session.delete(template)
    db.session.flush()


def send_template(
    template: EmailTemplate, module: Module, to: list[str], values: dict[str, str]
) -> OutboxMessage:
    """Fill in the template and queue it as ``module``.

    The message is sent from the template's From override when the Email
    Templates module may still use it, and otherwise from the module's own
    account. Raises ``ValuesInvalid`` when a placeholder has no value or an
    invalid one, ``modules.NoModuleAccount`` when the module has no usable
    account, and whatever ``sending.queue_message`` raises. The caller commits.
    """
    rendered = render(template.subject, template.body, values)
    errors = {name: "Enter a value." for name in rendered.missing}
    errors.update(rendered.errors)
    if errors:
        raise ValuesInvalid(errors)
    draft = sending.Draft(to=to, subject=rendered.subject, body=rendered.body)

    override = template.from_account_id
    if override is not None:
        if access.may_use(TEMPLATES_PRINCIPAL, override):
            return sending.queue_message(TEMPLATES_PRINCIPAL, override, draft)
        log.warning(
            "Email template %s: the From override account %s may no longer be "
            "used; sending from the account of module %s",
            template.id,
            override,
            module,
        )
    return modules.send_as_module(module, draft)
