from portal.extensions import db
from portal.models import ModuleAccount, EmailTemplate
from tests import factories
from tests.conftest import PASSWORD


def test_scratch(page, live_server):
    with live_server.app.app_context():
        account = factories.account(name="Sys scratch", security="system")
        db.session.add(EmailTemplate(name="Scratch", subject="Job {{ job }}", body="Dear {{ name }}"))
        db.session.commit()
        account_id = account.id
        template_id = db.session.query(EmailTemplate.id).filter_by(name="Scratch").scalar()
    page.goto("/sign-in")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/email-accounts")
    page.goto("/admin/modules")
    page.select_option("#web_portal-account_id", str(account_id))
    page.wait_for_timeout(1500)
    print("MODULE", page.inner_html("#module-web_portal")[-400:])
    page.goto(f"/admin/email-templates/{template_id}")
    page.fill("#sample_values", "job = 77\nname = Zed")
    page.wait_for_timeout(1500)
    print("PREVIEW", page.inner_html("#email-template-preview"))
    page.fill("#send-value_job", "88")
    page.wait_for_timeout(1500)
    print("SENDPREVIEW", page.inner_html("#send-preview"))
    page.fill("#send-to", "x@example.com")
    page.get_by_role("button", name="Send", exact=True).click()
    page.wait_for_timeout(1500)
    print("PANEL", page.inner_html("#send-panel"))
