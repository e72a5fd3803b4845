"""Every route, requested as each kind of visitor, gets the intended response.

ENDPOINT_POLICY names the rule of every endpoint in the app's URL map; an
endpoint missing from it fails the suite, so each new route needs a decision.
"""

from dataclasses import dataclass

import pytest

from portal.extensions import db
from portal.models import EmailTemplate
from portal.services import sending
from tests import factories
from tests.conftest import make_staff, sign_in

PUBLIC = "public"  # anyone, signed in or not
SIGNED_IN = "signed in"  # any signed-in staff member
OWNER = "owner"  # only the staff member who owns the personal account
ADMIN = "admin"  # administrators only
SENDER = "sender"  # the staff member who queued the message, or an administrator
SIGN_OUT = "sign out"  # anyone, and the response is always the sign-in page

ENDPOINT_POLICY = {
    "static": PUBLIC,
    "auth.sign_in": PUBLIC,
    "auth.sign_out": SIGN_OUT,
    "main.index": SIGNED_IN,
    "personal.list_accounts": SIGNED_IN,
    "personal.choose_account_type": SIGNED_IN,
    "personal.create_account": SIGNED_IN,
    "personal.edit_account": OWNER,
    "personal.set_account_enabled": OWNER,
    "personal.delete_account": OWNER,
    "personal.set_default_account": SIGNED_IN,
    "personal.change_password": SIGNED_IN,
    "compose.compose_message": SIGNED_IN,
    "compose.list_deliveries": SIGNED_IN,
    "compose.retry_delivery": SENDER,
    "admin.list_accounts": ADMIN,
    "admin.choose_account_type": ADMIN,
    "admin.create_account": ADMIN,
    "admin.edit_account": ADMIN,
    "admin.set_account_enabled": ADMIN,
    "admin.delete_account": ADMIN,
    "admin.set_account_security": ADMIN,
    "admin.add_account_grant": ADMIN,
    "admin.delete_account_grant": ADMIN,
    "admin.search_grant_candidates": ADMIN,
    "admin.preview_account_access": ADMIN,
    "admin.staff_access": ADMIN,
    "admin.list_audit_events": ADMIN,
    "admin.outbound_policy": ADMIN,
    "admin.personal_accounts_setting": ADMIN,
    "admin.list_personal_accounts": ADMIN,
    "admin.list_skillgroups": ADMIN,
    "admin.create_skillgroup": ADMIN,
    "admin.skillgroup_members": ADMIN,
    "admin.skillgroup_name": ADMIN,
    "admin.edit_skillgroup": ADMIN,
    "admin.delete_skillgroup": ADMIN,
    "admin.add_skillgroup_member": ADMIN,
    "admin.remove_skillgroup_member": ADMIN,
    "admin.list_roles": ADMIN,
    "admin.create_role": ADMIN,
    "admin.role_members": ADMIN,
    "admin.role_name": ADMIN,
    "admin.edit_role": ADMIN,
    "admin.delete_role": ADMIN,
    "admin.add_role_member": ADMIN,
    "admin.remove_role_member": ADMIN,
    "admin.list_modules": ADMIN,
    "admin.assign_module_account": ADMIN,
    "admin.list_email_templates": ADMIN,
    "admin.create_email_template": ADMIN,
    "admin.edit_email_template": ADMIN,
    "admin.delete_email_template": ADMIN,
    "admin.preview_email_template": ADMIN,
    "admin.preview_email_template_message": ADMIN,
    "admin.send_email_template": ADMIN,
    # The Google Workspace / Gmail account type and its integration page.
    "personal.complete_google_connection": SIGNED_IN,
    "admin.search_google_mailboxes": ADMIN,
    "admin.edit_google_integration": ADMIN,
    "admin.save_google_service_account": ADMIN,
    "admin.remove_google_service_account": ADMIN,
    "admin.save_google_oauth_client": ADMIN,
    "admin.remove_google_oauth_client": ADMIN,
    "admin.check_google_connection": ADMIN,
    # The Microsoft 365 account type and its integration page.
    "personal.convert_account_to_microsoft365": OWNER,
    "personal.microsoft365_sign_in_callback": SIGNED_IN,
    "admin.convert_account_to_microsoft365": ADMIN,
    "admin.search_microsoft365_mailboxes": ADMIN,
    "admin.edit_microsoft365_integration": ADMIN,
    "admin.grant_microsoft365_consent": ADMIN,
    "admin.finish_microsoft365_consent": ADMIN,
    "admin.check_microsoft365_connection": ADMIN,
}

VISITORS = ("anonymous", "alice", "bob", "root")

# What each visitor gets under each policy: "allowed" (the view ran),
# "sign-in" (sent to sign in), "forbidden" (403) or "hidden" (404).
EXPECTED = {
    PUBLIC: dict.fromkeys(VISITORS, "allowed"),
    SIGNED_IN: {
        "anonymous": "sign-in",
        "alice": "allowed",
        "bob": "allowed",
        "root": "allowed",
    },
    OWNER: {
        "anonymous": "sign-in",
        "alice": "allowed",
        "bob": "hidden",
        "root": "hidden",
    },
    ADMIN: {
        "anonymous": "sign-in",
        "alice": "forbidden",
        "bob": "forbidden",
        "root": "allowed",
    },
    SENDER: {
        "anonymous": "sign-in",
        "alice": "allowed",
        "bob": "hidden",
        "root": "allowed",
    },
    SIGN_OUT: dict.fromkeys(VISITORS, "sign-in"),
}


@dataclass
class World:
    values: dict[str, dict[str, object]]  # blueprint -> URL argument -> value


@pytest.fixture
def database_url(tmp_path):
    """Authorization does not depend on the database, so SQLite alone serves."""
    return f"sqlite:///{tmp_path / 'authorization.sqlite3'}"


@pytest.fixture
def world(app) -> World:
    alice = make_staff("alice")
    make_staff("bob")
    make_staff("root", administrator=True)
    own = factories.account("Alice's own", owner=alice)
    shared = factories.account("Shared", security="permissions")
    group = factories.skillgroup("Networks", members=[alice])
    role = factories.role("Supervisors", members=[alice])
    grant = factories.grant(shared, skillgroup=group)
    message = sending.queue_message(
        sending.access.StaffPrincipal(alice.id),
        own.id,
        sending.Draft(to=["someone@example.com"], subject="Hello", body="Hi"),
    )
    message.status = "failed"
    template = EmailTemplate(
        name="Welcome", subject="Hello {{ name }}", body="Hi {{ name }}"
    )
    db.session.add(template)
    db.session.commit()
    common = {
        "grant_id": grant.id,
        "skillgroup_id": group.id,
        "role_id": role.id,
        "staff_id": alice.id,
        "message_id": message.id,
        "template_id": template.id,
        "module_name": "email_manager",
        "filename": "css/portal.css",
        "type_key": "internet",
    }
    return World(
        values={
            "personal": {**common, "account_id": own.id},
            "admin": {**common, "account_id": shared.id},
            "": common,
        }
    )


def cases():
    for endpoint, policy in sorted(ENDPOINT_POLICY.items()):
        for visitor in VISITORS:
            yield pytest.param(endpoint, visitor, policy, id=f"{endpoint}-{visitor}")


def outcome(response) -> str:
    location = response.headers.get("Location", "")
    if response.status_code in (301, 302, 303) and "/sign-in" in location:
        return "sign-in"
    if response.status_code == 403:
        return "forbidden"
    if response.status_code == 404:
        return "hidden"
    if response.status_code >= 500:
        return f"error {response.status_code}"
    return "allowed"


def test_every_endpoint_has_a_policy(app):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints - ENDPOINT_POLICY.keys() == set(), (
        "routes without an authorization decision"
    )
    assert ENDPOINT_POLICY.keys() - endpoints == set(), (
        "policies for routes that no longer exist"
    )


@pytest.mark.parametrize(("endpoint", "visitor", "policy"), list(cases()))
def test_endpoint_authorization(app, client, world, endpoint, visitor, policy):
    if visitor != "anonymous":
        sign_in(client, visitor)
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint == endpoint]
    expected = EXPECTED[policy][visitor]
    blueprint = endpoint.split(".")[0] if "." in endpoint else ""
    values = world.values.get(blueprint, world.values[""])

    for rule in rules:
        arguments = {name: values[name] for name in rule.arguments}
        url = rule.build(arguments)[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if endpoint == "auth.sign_in" and visitor != "anonymous":
                continue  # signing in again while signed in is a redirect home
            response = client.open(url, method=method)
            result = outcome(response)
            response.close()
            assert result == expected, (
                f"{method} {url} as {visitor}: {response.status_code}"
            )


CSRF_MESSAGE = "The form had expired or was sent from another site."


def unsafe_cases():
    for endpoint, policy in sorted(ENDPOINT_POLICY.items()):
        if policy in (PUBLIC, SIGN_OUT, SIGNED_IN, OWNER, SENDER):
            visitor = "alice"
        else:
            visitor = "root"
        if endpoint == "auth.sign_in":
            visitor = "anonymous"
        yield pytest.param(endpoint, visitor, id=endpoint)


@pytest.mark.parametrize(("endpoint", "visitor"), list(unsafe_cases()))
def test_unsafe_requests_need_csrf_token(app, client, world, endpoint, visitor):
    if visitor != "anonymous":
        sign_in(client, visitor)
    blueprint = endpoint.split(".")[0] if "." in endpoint else ""
    values = world.values.get(blueprint, world.values[""])
    for rule in (r for r in app.url_map.iter_rules() if r.endpoint == endpoint):
        unsafe = sorted(rule.methods & {"POST", "PUT", "PATCH", "DELETE"})
        url = rule.build({name: values[name] for name in rule.arguments})[1]
        for method in unsafe:
            refused = client.open(url, method=method, without_csrf=True)
            assert refused.status_code == 400, f"{method} {url} without a token"
            assert CSRF_MESSAGE in refused.get_data(as_text=True)

            accepted = client.open(url, method=method)
            body = accepted.get_data(as_text=True)
            accepted.close()
            assert CSRF_MESSAGE not in body, f"{method} {url} with a token"
