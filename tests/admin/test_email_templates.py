"""Email templates: placeholders, the pages, the From override and sending."""

import email
import email.policy
import logging
import re

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import EmailTemplate, OutboxMessage
from portal.services import delivery, email_templates, modules
from portal.services.access import Module
from tests import factories
from tests.conftest import HTMX, make_staff, sign_in
from tests.queries import count_queries
from tests.services.test_modules import smtp_account

LIST = "/admin/email-templates"
NEW = f"{LIST}/new"
PREVIEW = f"{LIST}/preview"


def make_template(
    name="Job done", subject="Job {{ job }} is done", body=None, **fields
):
    template = EmailTemplate(
        name=name,
        subject=subject,
        body=body if body is not None else "Dear {{ name }},\nJob {{ job }} is done.",
        **fields,
    )
    db.session.add(template)
    db.session.commit()
    return template


def templates_by_name():
    db.session.expire_all()
    rows = db.session.scalars(select(EmailTemplate).order_by(EmailTemplate.name))
    return {row.name: row for row in rows}


def outbox():
    db.session.expire_all()
    return db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()


def editor_data(**fields):
    data = {
        "name": "Job done",
        "subject": "Job {{ job }} is done",
        "body": "Dear {{ name }},\nJob {{ job }} is done.",
        "from_account_id": "",
        "sample_values": "",
    }
    data.update(fields)
    return data


def send_data(to="customer@example.com", module="automation_service", **values):
    data = {"send-to": to, "send-module": module}
    for name, value in values.items():
        data[f"send-value_{name}"] = value
    return data


def error_beside(page: str, field_id: str) -> str:
    match = re.search(rf'id="{field_id}-error">([^<]*)<', page)
    return match.group(1) if match else ""


def options(page: str, field_id: str) -> list[str]:
    match = re.search(rf'<select[^>]*id="{field_id}"[^>]*>(.*?)</select>', page, re.S)
    assert match, f"no select {field_id}"
    return re.findall(r'<option[^>]*value="([^"]*)"', match.group(1))


def parsed(received) -> email.message.EmailMessage:
    return email.message_from_bytes(received.content, policy=email.policy.default)


# -- placeholders --------------------------------------------------------------


def test_find_placeholders_in_order_once():
    found = email_templates.find_placeholders(
        "{{ a }} {{b}} {{\tc_1 }}", "{{ b }} {{ D2 }} {{ a }}"
    )
    assert found == ["a", "b", "c_1", "D2"]


@pytest.mark.parametrize(
    "text",
    [
        "{ name }",
        "{{ na-me }}",
        "{{ }}",
        "{{ name.attr }}",
        "{{ name|upper }}",
        "{% x %}",
    ],
)
def test_text_that_is_not_a_placeholder(text):
    assert email_templates.find_placeholders(text) == []
    assert email_templates.fill(text, {"name": "Bob", "x": "y"}) == text


def test_fill_replaces_each_occurrence():
    text = "{{ name }} and {{name}} and {{  name  }}"
    assert email_templates.fill(text, {"name": "Bob"}) == "Bob and Bob and Bob"


def test_fill_does_not_substitute_twice():
    values = {"first": "{{ second }}", "second": "two"}
    filled = email_templates.fill("1: {{ first }}, 2: {{ second }}", values)
    assert filled == "1: {{ second }}, 2: two"


def test_fill_inserts_values_literally():
    values = {"name": r"\1 \g<0> {0} {name} {{ name }} {% raw %}"}
    assert email_templates.fill("Hi {{ name }}", values) == f"Hi {values['name']}"


def test_fill_leaves_missing_and_blank_as_written():
    values = {"name": "", "job": "   "}
    text = "{{ name }} {{ job }} {{ other }}"
    assert email_templates.fill(text, values) == text


def test_render_reports_missing_values():
    rendered = email_templates.render(
        "Job {{ job }}", "Dear {{ name }}, {{ job }} {{ other }}", {"job": "42"}
    )
    assert rendered.subject == "Job 42"
    assert rendered.body == "Dear {{ name }}, 42 {{ other }}"
    assert rendered.placeholders == ["job", "name", "other"]
    assert rendered.missing == ["name", "other"]
    assert rendered.errors == {}


@pytest.mark.parametrize(
    "value", ["42\r\nBcc: x@example.com", "a\nb", "a\x00b", "a\u2028b"]
)
def test_render_rejects_subject_line_breaks(value):
    rendered = email_templates.render("Job {{ job }}", "{{ job }}", {"job": value})
    assert "job" in rendered.errors
    assert "used in the subject" in rendered.errors["job"]


def test_render_allows_body_line_breaks():
    rendered = email_templates.render("Hello", "{{ address }}", {"address": "a\nb"})
    assert rendered.errors == {}
    assert rendered.body == "a\nb"


def test_parse_sample_values():
    values, unreadable = email_templates.parse_sample_values(
        "name = Bob\n\njob=42 = x\n{{ other }} = o\nno equals sign\nbad name = 1\n"
    )
    assert values == {"name": "Bob", "job": "42 = x", "other": "o"}
    assert unreadable == [5, 6]


# -- who may reach the pages ---------------------------------------------------


def template_routes(app, template_id):
    routes = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if view.__module__ != "portal.admin.email_templates":
            continue
        url = rule.build({name: template_id for name in rule.arguments})[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, url))
    return routes


def test_routes_are_listed(app):
    urls = {(method, url) for method, url in template_routes(app, 1)}
    assert urls == {
        ("GET", LIST),
        ("GET", NEW),
        ("POST", NEW),
        ("GET", f"{LIST}/1"),
        ("POST", f"{LIST}/1"),
        ("GET", f"{LIST}/1/delete"),
        ("POST", f"{LIST}/1/delete"),
        ("POST", PREVIEW),
        ("POST", f"{LIST}/1/send"),
        ("POST", f"{LIST}/1/send/preview"),
    }


def test_staff_get_403_on_every_route(app, staff_client):
    template = make_template()
    account = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    db.session.commit()
    data = {**editor_data(name="Changed"), **send_data(job="1", name="Bob")}
    for method, url in template_routes(app, template.id):
        response = staff_client.open(url, method=method, data=data)
        assert response.status_code == 403, f"{method} {url}"
    assert list(templates_by_name()) == ["Job done"]
    assert outbox() == []


def test_anonymous_sent_to_sign_in(app, client):
    template = make_template()
    for method, url in template_routes(app, template.id):
        response = client.open(url, method=method)
        assert response.status_code == 302, f"{method} {url}"
        assert "/sign-in" in response.headers["Location"]


def test_nav_link_only_for_administrators(admin_client):
    page = admin_client.get(LIST).get_data(as_text=True)
    assert f'href="{LIST}"' in page

    make_staff("bob")
    sign_in(admin_client, "bob")
    page = admin_client.get("/preferences/email/accounts").get_data(as_text=True)
    assert f'href="{LIST}"' not in page


def test_post_without_csrf_rejected(admin_client):
    response = admin_client.post(NEW, data=editor_data(), without_csrf=True)
    assert response.status_code == 400
    assert templates_by_name() == {}


# -- list ----------------------------------------------------------------------


def test_empty_list_says_how_to_add(admin_client):
    page = admin_client.get(LIST).get_data(as_text=True)
    assert "No email templates yet" in page


def test_list_shows_templates_and_overrides(admin_client):
    account = factories.account(name="Helpdesk", security="system")
    make_template("Welcome", from_account_id=account.id)
    make_template("Job done")
    page = admin_client.get(LIST).get_data(as_text=True)
    assert page.index("Job done") < page.index("Welcome")
    assert "Helpdesk" in page
    assert "The sending module's account" in page


def test_list_query_count_is_constant(admin_client):
    def add(count, start):
        for number in range(start, start + count):
            account = factories.account()
            make_template(f"Template {number:02}", from_account_id=account.id)

    add(3, 0)
    with count_queries() as few:
        assert admin_client.get(LIST).status_code == 200
    add(27, 3)
    with count_queries() as many:
        page = admin_client.get(LIST).get_data(as_text=True)
    assert many.count == few.count
    assert "Template 29" in page


# -- create and edit -----------------------------------------------------------


def test_create_redirects_to_edit_page(admin_client):
    response = admin_client.post(NEW, data=editor_data(name="  Job done "))
    template = templates_by_name()["Job done"]
    assert response.status_code == 302
    assert response.headers["Location"] == f"{LIST}/{template.id}"
    assert template.subject == "Job {{ job }} is done"
    assert template.body == "Dear {{ name }},\nJob {{ job }} is done."
    assert template.from_account_id is None


def test_create_normalises_line_endings(admin_client):
    admin_client.post(NEW, data=editor_data(body="One\r\nTwo\rThree"))
    assert templates_by_name()["Job done"].body == "One\nTwo\nThree"


@pytest.mark.parametrize(
    ("fields", "field_id", "message"),
    [
        ({"name": ""}, "name", "Enter a name"),
        ({"name": "x" * 101}, "name", "at most 100 characters"),
        ({"name": "Two\nlines"}, "name", "Line breaks"),
        ({"subject": ""}, "subject", "Enter a subject"),
        ({"subject": "Hi\r\nBcc: x@example.com"}, "subject", "Line breaks"),
        ({"subject": "x" * 999}, "subject", "at most 998 characters"),
        ({"body": "  \n "}, "body", "Enter the text"),
    ],
    ids=[
        "no-name",
        "long-name",
        "name-break",
        "no-subject",
        "subject-break",
        "long-subject",
        "blank-body",
    ],
)
def test_create_rejects_invalid_fields(admin_client, fields, field_id, message):
    response = admin_client.post(NEW, data=editor_data(**fields))
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert message in error_beside(page, field_id)
    assert templates_by_name() == {}


def test_create_keeps_typed_values_after_error(admin_client):
    page = admin_client.post(
        NEW, data=editor_data(name="", body="Kept {{ text }}")
    ).get_data(as_text=True)
    assert "Kept {{ text }}</textarea>" in page


def test_name_must_be_unique_ignoring_case(admin_client):
    make_template("Job done")
    page = admin_client.post(NEW, data=editor_data(name="JOB DONE")).get_data(
        as_text=True
    )
    assert "already exists" in error_beside(page, "name")
    assert list(templates_by_name()) == ["Job done"]


def test_edit_saves_changes(admin_client, caplog):
    template = make_template()
    account = factories.account(security="system")
    db.session.commit()

    with caplog.at_level(logging.INFO, logger="portal.admin.email_templates"):
        response = admin_client.post(
            f"{LIST}/{template.id}",
            data=editor_data(
                name="Job closed",
                subject="Closed: {{ job }}",
                body="Bye",
                from_account_id=str(account.id),
            ),
        )
    assert response.status_code == 302
    saved = templates_by_name()["Job closed"]
    assert saved.subject == "Closed: {{ job }}"
    assert saved.body == "Bye"
    assert saved.from_account_id == account.id
    assert f"saved email template {template.id} 'Job closed'" in caplog.text


def test_edit_may_keep_its_own_name(admin_client):
    template = make_template()
    response = admin_client.post(
        f"{LIST}/{template.id}", data=editor_data(body="New text")
    )
    assert response.status_code == 302
    assert templates_by_name()["Job done"].body == "New text"


def test_edit_missing_template_is_404(admin_client):
    assert admin_client.get(f"{LIST}/999").status_code == 404


# -- the From override ---------------------------------------------------------


def test_override_offers_module_accounts(admin_client):
    everyone = factories.account(security="everyone")
    system = factories.account(security="system")
    factories.account(security="all_staff")
    factories.account(security="permissions")
    factories.account(security="system", enabled=False)
    factories.account(owner=factories.staff_member())
    db.session.commit()

    page = admin_client.get(NEW).get_data(as_text=True)
    assert options(page, "from_account_id") == ["", str(everyone.id), str(system.id)]


@pytest.mark.parametrize(
    "fields",
    [{"security": "all_staff"}, {"security": "permissions"}, {"enabled": False}],
    ids=["all-staff", "permissions", "disabled"],
)
def test_forged_override_is_403(admin_client, caplog, fields):
    account = factories.account(**fields)
    db.session.commit()
    with caplog.at_level(logging.WARNING, logger="portal.admin.email_templates"):
        response = admin_client.post(
            NEW, data=editor_data(from_account_id=str(account.id))
        )
    assert response.status_code == 403
    assert templates_by_name() == {}
    assert f"setting account {account.id} as a template" in caplog.text


def test_forged_override_on_edit_changes_nothing(admin_client):
    template = make_template()
    account = factories.account(owner=factories.staff_member())
    db.session.commit()
    response = admin_client.post(
        f"{LIST}/{template.id}",
        data=editor_data(name="Changed", from_account_id=str(account.id)),
    )
    assert response.status_code == 403
    assert list(templates_by_name()) == ["Job done"]


def test_malformed_override_is_400(admin_client):
    response = admin_client.post(NEW, data=editor_data(from_account_id="x"))
    assert response.status_code == 400
    assert templates_by_name() == {}


def test_unusable_override_is_reported(admin_client):
    account = factories.account(name="Helpdesk", security="system")
    template = make_template(from_account_id=account.id)
    account.security = "all_staff"
    db.session.commit()

    page = admin_client.get(f"{LIST}/{template.id}").get_data(as_text=True)
    assert "is now All staff members" in page
    assert "ignores its From override" in page
    assert options(page, "from_account_id") == [""]
    assert "It is sent from the account of the module chosen below" in page

    listing = admin_client.get(LIST).get_data(as_text=True)
    assert "Ignored:" in listing
    assert "is now All staff members" in listing


# -- delete --------------------------------------------------------------------


def test_delete_confirmation_page(admin_client):
    template = make_template()
    page = admin_client.get(f"{LIST}/{template.id}/delete").get_data(as_text=True)
    assert "Delete the email template Job done?" in page
    assert f'action="{LIST}/{template.id}/delete"' in page
    assert list(templates_by_name()) == ["Job done"]


def test_delete_without_javascript_redirects(admin_client):
    template = make_template()
    response = admin_client.post(f"{LIST}/{template.id}/delete")
    assert response.status_code == 302
    assert response.headers["Location"] == LIST
    assert templates_by_name() == {}


def test_htmx_delete_removes_row(admin_client):
    template = make_template()
    page = admin_client.get(LIST).get_data(as_text=True)
    assert f'hx-post="{LIST}/{template.id}/delete"' in page
    assert "hx-confirm=" in page

    response = admin_client.post(f"{LIST}/{template.id}/delete", headers=HTMX)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == ""
    assert templates_by_name() == {}


def test_delete_missing_template_is_404(admin_client):
    assert admin_client.post(f"{LIST}/999/delete").status_code == 404


# -- previews ------------------------------------------------------------------


def test_editor_preview_fragment(admin_client):
    response = admin_client.post(
        PREVIEW,
        data=editor_data(
            sample_values="job = 42\nname = {{ other }}\nnot a value",
            body="Dear {{ name }}, {{ job }} {{ other }}",
        ),
        headers=HTMX,
    )
    fragment = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<html" not in fragment
    assert "<dd>Job 42 is done</dd>" in fragment
    assert "Dear {{ other }}, 42 {{ other }}</pre>" in fragment
    assert "No value for <code>{{ other }}</code>, so it is left as written" in fragment
    assert "line 3 is not written as name = value" in fragment


def test_editor_preview_escapes_html(admin_client):
    fragment = admin_client.post(
        PREVIEW,
        data=editor_data(sample_values="job = <b>x</b>"),
        headers=HTMX,
    ).get_data(as_text=True)
    assert "&lt;b&gt;x&lt;/b&gt;" in fragment
    assert "<b>x</b>" not in fragment


def test_editor_preview_without_javascript(admin_client):
    template = make_template()
    page = admin_client.post(
        f"{LIST}/{template.id}",
        data=editor_data(
            name="Not saved",
            body="Hi {{ name }}",
            sample_values="name=Bob",
            action="preview",
        ),
    ).get_data(as_text=True)
    assert "<html" in page
    assert "Hi Bob</pre>" in page
    assert 'value="Not saved"' in page
    assert list(templates_by_name()) == ["Job done"]


def test_create_preview_saves_nothing(admin_client):
    page = admin_client.post(
        NEW, data=editor_data(sample_values="job=7", action="preview")
    ).get_data(as_text=True)
    assert "<dd>Job 7 is done</dd>" in page
    assert templates_by_name() == {}


def test_editor_has_live_preview(admin_client):
    page = admin_client.get(NEW).get_data(as_text=True)
    assert f'hx-post="{PREVIEW}"' in page
    assert 'hx-trigger="input delay:400ms from:#email-template-form"' in page


def test_message_preview_fragment(admin_client):
    template = make_template()
    response = admin_client.post(
        f"{LIST}/{template.id}/send/preview",
        data=send_data(job="7", name="{{ job }}"),
        headers=HTMX,
    )
    fragment = response.get_data(as_text=True)
    assert "<html" not in fragment
    assert "<dd>Job 7 is done</dd>" in fragment
    assert "Dear {{ job }},\nJob 7 is done.</pre>" in fragment
    assert "No value for" not in fragment


def test_message_preview_reports_subject_line_break(admin_client):
    template = make_template()
    fragment = admin_client.post(
        f"{LIST}/{template.id}/send/preview",
        data=send_data(job="7\nBcc: x@example.com", name="Bob"),
        headers=HTMX,
    ).get_data(as_text=True)
    assert "This value is used in the subject" in fragment


# -- send ----------------------------------------------------------------------


def test_send_delivers_from_module_account(admin_client, plain_smtp):
    module_account = smtp_account(plain_smtp, name="Automation", security="system")
    modules.assign(Module.AUTOMATION_SERVICE, module_account.id)
    template = make_template()

    response = admin_client.post(
        f"{LIST}/{template.id}/send",
        data=send_data(to="a@example.com, b@example.com", job="42", name="{{ job }}"),
        headers=HTMX,
    )
    fragment = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<html" not in fragment
    (row,) = outbox()
    assert f"Queued message {row.id} from {module_account.email_address}" in fragment
    assert row.module == "automation_service"
    assert row.account_id == module_account.id

    assert delivery.run_once("test-worker") == 1
    (received,) = plain_smtp.messages
    assert received.mail_from == module_account.email_address
    assert received.rcpt_tos == ["a@example.com", "b@example.com"]
    message = parsed(received)
    assert message["From"].addresses[0].addr_spec == module_account.email_address
    assert message["Subject"] == "Job 42 is done"
    assert message.get_content().splitlines() == ["Dear {{ job }},", "Job 42 is done."]


def test_send_uses_chosen_module(admin_client):
    automation = factories.account()
    portal = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, automation.id)
    modules.assign(Module.WEB_PORTAL, portal.id)
    template = make_template()

    admin_client.post(
        f"{LIST}/{template.id}/send",
        data=send_data(module="web_portal", job="1", name="Bob"),
        headers=HTMX,
    )
    (row,) = outbox()
    assert row.module == "web_portal"
    assert row.account_id == portal.id


def test_send_defaults_to_automation_service(admin_client):
    template = make_template()
    page = admin_client.get(f"{LIST}/{template.id}").get_data(as_text=True)
    assert re.search(r'<option selected value="automation_service">', page)


def test_send_from_override_account(admin_client, plain_smtp):
    module_account = smtp_account(plain_smtp, name="Automation")
    override = smtp_account(plain_smtp, name="Billing", security="system")
    modules.assign(Module.AUTOMATION_SERVICE, module_account.id)
    template = make_template(from_account_id=override.id)

    page = admin_client.get(f"{LIST}/{template.id}").get_data(as_text=True)
    assert "It is sent from Billing" in page

    admin_client.post(
        f"{LIST}/{template.id}/send", data=send_data(job="42", name="Bob")
    )
    (row,) = outbox()
    assert row.account_id == override.id
    assert row.module == "email_templates"

    delivery.run_once("test-worker")
    (received,) = plain_smtp.messages
    assert received.mail_from == override.email_address
    assert parsed(received)["From"].addresses[0].addr_spec == override.email_address


def test_override_works_without_module_account(admin_client):
    override = factories.account(security="system")
    template = make_template(from_account_id=override.id)
    admin_client.post(
        f"{LIST}/{template.id}/send", data=send_data(job="42", name="Bob")
    )
    (row,) = outbox()
    assert row.account_id == override.id


@pytest.mark.parametrize(
    "change",
    [{"security": "all_staff"}, {"enabled": False}],
    ids=["all-staff", "disabled"],
)
def test_unusable_override_falls_back_to_module(admin_client, caplog, change):
    module_account = factories.account()
    override = factories.account(security="system")
    modules.assign(Module.AUTOMATION_SERVICE, module_account.id)
    template = make_template(from_account_id=override.id)
    for name, value in change.items():
        setattr(override, name, value)
    db.session.commit()

    with caplog.at_level(logging.WARNING, logger="portal.services.email_templates"):
        admin_client.post(
            f"{LIST}/{template.id}/send", data=send_data(job="42", name="Bob")
        )
    (row,) = outbox()
    assert row.account_id == module_account.id
    assert row.module == "automation_service"
    assert f"From override account {override.id} may no longer be used" in caplog.text


def test_send_without_javascript_redirects(admin_client):
    account = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    template = make_template()

    response = admin_client.post(
        f"{LIST}/{template.id}/send", data=send_data(job="42", name="Bob")
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"{LIST}/{template.id}#send-panel"
    (row,) = outbox()
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert f"Queued message {row.id}" in page


def test_send_missing_values_reported(admin_client):
    account = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    template = make_template()

    fragment = admin_client.post(
        f"{LIST}/{template.id}/send", data=send_data(job="42", name="  "), headers=HTMX
    ).get_data(as_text=True)
    assert "<html" not in fragment
    assert error_beside(fragment, "send-value_name") == "Enter a value."
    assert error_beside(fragment, "send-value_job") == ""
    assert "No value for <code>{{ name }}</code>" in fragment
    assert outbox() == []


def test_send_rejects_subject_line_break(admin_client):
    account = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    template = make_template()

    fragment = admin_client.post(
        f"{LIST}/{template.id}/send",
        data=send_data(job="42\r\nBcc: victim@example.com", name="Bob"),
        headers=HTMX,
    ).get_data(as_text=True)
    assert "used in the subject" in error_beside(fragment, "send-value_job")
    assert outbox() == []


def test_send_allows_body_line_break(admin_client):
    account = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    template = make_template(body="Dear {{ name }}")

    admin_client.post(
        f"{LIST}/{template.id}/send",
        data=send_data(job="42", name="Bob\nand Alice"),
        headers=HTMX,
    )
    assert len(outbox()) == 1


def test_send_rejects_invalid_address(admin_client):
    account = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    template = make_template()

    fragment = admin_client.post(
        f"{LIST}/{template.id}/send",
        data=send_data(to="not an address", job="42", name="Bob"),
        headers=HTMX,
    ).get_data(as_text=True)
    assert "not an address" in error_beside(fragment, "send-to")
    assert outbox() == []


def test_send_requires_a_recipient(admin_client):
    account = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    template = make_template()
    fragment = admin_client.post(
        f"{LIST}/{template.id}/send",
        data=send_data(to="", job="1", name="Bob"),
        headers=HTMX,
    ).get_data(as_text=True)
    assert "at least one recipient" in error_beside(fragment, "send-to")
    assert outbox() == []


def test_send_without_module_account(admin_client):
    template = make_template()
    fragment = admin_client.post(
        f"{LIST}/{template.id}/send", data=send_data(job="42", name="Bob"), headers=HTMX
    ).get_data(as_text=True)
    assert "has no email account" in error_beside(fragment, "send-module")
    assert outbox() == []


def test_send_with_unusable_module_account(admin_client):
    account = factories.account(name="Notifications")
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    account.enabled = False
    template = make_template()
    db.session.commit()

    fragment = admin_client.post(
        f"{LIST}/{template.id}/send", data=send_data(job="42", name="Bob"), headers=HTMX
    ).get_data(as_text=True)
    assert "is disabled" in error_beside(fragment, "send-module")
    assert outbox() == []


@pytest.mark.parametrize("module", ["email_templates", "nobody"])
def test_send_rejects_unknown_module(admin_client, module):
    account = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    template = make_template()
    fragment = admin_client.post(
        f"{LIST}/{template.id}/send",
        data=send_data(module=module, job="42", name="Bob"),
        headers=HTMX,
    ).get_data(as_text=True)
    assert error_beside(fragment, "send-module")
    assert outbox() == []


def test_send_preview_button_sends_nothing(admin_client):
    account = factories.account()
    modules.assign(Module.AUTOMATION_SERVICE, account.id)
    template = make_template()

    page = admin_client.post(
        f"{LIST}/{template.id}/send",
        data={**send_data(job="42", name="Bob"), "action": "preview"},
    ).get_data(as_text=True)
    assert "<html" in page
    assert "Dear Bob,\nJob 42 is done.</pre>" in page
    assert 'value="Bob"' in page
    assert outbox() == []


def test_send_field_per_placeholder(admin_client):
    template = make_template(subject="{{ a }}", body="{{ b }} {{ a }} {{ c_3 }}")
    page = admin_client.get(f"{LIST}/{template.id}").get_data(as_text=True)
    for name in ("a", "b", "c_3"):
        assert f'<label for="send-value_{name}">{{{{ {name} }}}}</label>' in page
    assert 'hx-trigger="input delay:400ms from:#send-form"' in page
