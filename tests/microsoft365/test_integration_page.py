"""Integrations › Microsoft 365: settings, admin consent, Check connection, expiry."""

from datetime import date, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.integrations import microsoft
from portal.models import AuditEvent, IntegrationSecret
from tests.conftest import HTMX, make_staff, sign_in
from tests.fakes import microsoft as fake_tenant
from tests.microsoft365.conftest import configure_tenant, follow

PAGE = "/admin/integrations/microsoft365"


def settings_form(**overrides):
    values = {
        "tenant_id": fake_tenant.TENANT_ID,
        "client_id": fake_tenant.CLIENT_ID,
        "client_secret": fake_tenant.CLIENT_SECRET,
        "secret_expires": (date.today() + timedelta(days=200)).isoformat(),
        "cloud": "global",
    }
    values.update(overrides)
    return values


def test_page_shows_redirect_uris_and_permissions(admin_client, microsoft_app):
    page = admin_client.get(PAGE).get_data(as_text=True)
    assert "http://localhost/admin/integrations/microsoft365/consent/callback" in page
    assert "http://localhost/preferences/email/accounts/microsoft365/callback" in page
    for permission in ("User.Read.All", "Mail.Send", "Mail.ReadWrite"):
        assert permission in page
    assert "Not set up" in page


def test_public_url_sets_redirect_uris(admin_client, microsoft_app):
    microsoft_app.config["PUBLIC_URL"] = "https://portal.example.com"
    page = admin_client.get(PAGE).get_data(as_text=True)
    assert (
        "https://portal.example.com/admin/integrations/microsoft365/consent/callback"
        in page
    )


def test_save_encrypts_secret_and_never_shows_it(admin_client, microsoft_app):
    response = admin_client.post(PAGE, data=settings_form())
    assert response.status_code == 302

    stored = db.session.scalar(select(IntegrationSecret))
    assert stored.kind == "microsoft365"
    assert fake_tenant.CLIENT_SECRET not in stored.ciphertext
    page = admin_client.get(PAGE).get_data(as_text=True)
    assert fake_tenant.CLIENT_SECRET not in page
    assert "A value is stored" in page

    event = db.session.scalar(select(AuditEvent).filter_by(action="integration.update"))
    assert event.changes["client_secret"] == "(changed)"
    assert fake_tenant.CLIENT_SECRET not in str(event.changes)


def test_blank_secret_keeps_stored_one(admin_client, microsoft_app):
    admin_client.post(PAGE, data=settings_form())
    admin_client.post(PAGE, data=settings_form(client_secret="", cloud="usgov"))
    assert (
        microsoft.get_integration_secret("client_secret") == fake_tenant.CLIENT_SECRET
    )
    assert microsoft.current_settings()["cloud"] == "usgov"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tenant_id", "", "Directory (tenant) ID"),
        ("tenant_id", "not a tenant!", "GUID"),
        ("client_id", "my-app", "Application (client) ID"),
        ("client_secret", "", "client secret"),
        ("secret_expires", "tomorrow", "Not a valid date"),
    ],
)
def test_invalid_settings_are_rejected(
    admin_client, microsoft_app, field, value, message
):
    response = admin_client.post(PAGE, data=settings_form(**{field: value}))
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "The settings were not saved" in page
    assert message in page
    assert microsoft.current_settings() == {}


def test_consent_round_trip_then_checklist(admin_client, microsoft_app, microsoft_fake):
    admin_client.post(PAGE, data=settings_form())

    response = admin_client.post(f"{PAGE}/consent")
    location = response.headers["Location"]
    assert location.startswith(
        f"{microsoft_fake.url}/{fake_tenant.TENANT_ID}/v2.0/adminconsent?"
    )
    query = parse_qs(urlsplit(location).query)
    assert query["client_id"] == [fake_tenant.CLIENT_ID]
    assert query["scope"] == ["https://graph.microsoft.com/.default"]
    assert query["redirect_uri"] == [
        "http://localhost/admin/integrations/microsoft365/consent/callback"
    ]

    back = follow(microsoft_fake, location)
    response = admin_client.get(back)
    assert response.status_code == 302
    page = admin_client.get(PAGE).get_data(as_text=True)
    assert "Consent granted in the tenant" in page
    assert "Connection works" in page
    assert page.count("✓ Granted") == 3
    assert microsoft.is_connected()
    assert microsoft_fake.token_count("client_credentials") == 1


@pytest.mark.parametrize("case", ["missing", "reused", "other session", "forged"])
def test_consent_state_is_checked(
    admin_client, client, microsoft_app, microsoft_fake, case
):
    admin_client.post(PAGE, data=settings_form())
    location = admin_client.post(f"{PAGE}/consent").headers["Location"]
    back = follow(microsoft_fake, location)
    state = parse_qs(urlsplit(back).query)["state"][0]

    if case == "missing":
        back = back.replace(f"state={state}", "state=")
    elif case == "forged":
        back = back.replace(f"state={state}", "state=forged-state")
    elif case == "reused":
        assert admin_client.get(back).status_code == 302
        microsoft.get_integration().settings = {
            **microsoft.current_settings(),
            "consent": {},
        }
        db.session.commit()
    else:
        other = microsoft_app.test_client()
        make_staff("root2", administrator=True)
        sign_in(other, "root2")
        admin_client = other

    response = admin_client.get(back, follow_redirects=True)
    page = response.get_data(as_text=True)
    assert "did not match a consent request started in this browser session" in page
    assert not (microsoft.current_settings().get("consent") or {}).get("granted_at")
    denied = db.session.scalars(
        select(AuditEvent).filter_by(action="integration.consent", outcome="denied")
    )
    assert len(list(denied)) == 1


def test_consent_declined_is_explained(admin_client, microsoft_app, microsoft_fake):
    admin_client.post(PAGE, data=settings_form())
    microsoft_fake.consent_answer = "access_denied"
    location = admin_client.post(f"{PAGE}/consent").headers["Location"]
    back = follow(microsoft_fake, location)
    page = admin_client.get(back, follow_redirects=True).get_data(as_text=True)
    assert "declined to grant the requested permissions" in page
    assert "AADSTS65004" not in page  # explained, not echoed


def test_check_lists_missing_permissions(admin_client, microsoft_app, microsoft_fake):
    admin_client.post(PAGE, data=settings_form())
    microsoft_fake.app.configured = {"Mail.Send"}
    microsoft_fake.grant_consent()
    fragment = admin_client.post(f"{PAGE}/check", headers=HTMX).get_data(as_text=True)
    assert "<html" not in fragment
    assert (
        "these permissions are not granted: User.Read.All, Mail.ReadWrite" in fragment
    )
    assert fragment.count("✓ Granted") == 1
    assert fragment.count("✗ Missing") == 2
    assert "press Grant consent" in fragment


@pytest.mark.parametrize(
    ("setup", "explanation", "code"),
    [
        ("expired secret", "client secret has expired", "AADSTS7000222"),
        ("wrong secret", "client secret is not valid", "AADSTS7000215"),
        (
            "unknown application",
            "No application with this application (client) ID",
            "AADSTS700016",
        ),
        ("unknown tenant", "The tenant was not found", "AADSTS90002"),
    ],
)
def test_check_explains_sign_in_errors(
    admin_client, microsoft_app, microsoft_fake, setup, explanation, code
):
    form = settings_form()
    if setup == "wrong secret":
        form["client_secret"] = "not-the-secret"
    elif setup == "unknown application":
        form["client_id"] = "99999999-aaaa-2222-bbbb-3333cccc4444"
    elif setup == "unknown tenant":
        form["tenant_id"] = "fabrikam.onmicrosoft.com"
    admin_client.post(PAGE, data=form)
    if setup == "expired secret":
        microsoft_fake.app.secret_expired = True

    fragment = admin_client.post(f"{PAGE}/check", headers=HTMX).get_data(as_text=True)
    assert "Connection failed" in fragment
    assert explanation in fragment
    assert code in fragment  # the code alone, for support
    assert "Trace ID:" not in fragment  # the description is not echoed
    assert not microsoft.is_connected()


def test_consent_not_granted_is_explained(connected_tenant, admin_client):
    """Check connection after consent was revoked: signed in, nothing granted."""
    connected_tenant.revoke_consent()
    fragment = admin_client.post(f"{PAGE}/check", headers=HTMX).get_data(as_text=True)
    assert fragment.count("✗ Missing") == 3
    assert "press Grant consent" in fragment


@pytest.mark.parametrize(
    ("days", "level", "words"),
    [
        (45, None, None),
        (30, "info", "expires in 30 days"),
        (7, "warning", "expires in 7 days"),
        (1, "error", "expires tomorrow"),
        (0, "error", "expires today"),
        (-3, "error", "expired on"),
    ],
)
def test_secret_expiry_notice(days, level, words):
    today = date(2026, 3, 1)
    settings = {"secret_expires": (today + timedelta(days=days)).isoformat()}
    notice = microsoft.expiry_notice(settings, today=today)
    if level is None:
        assert notice is None
    else:
        assert notice.level == level
        assert words in notice.message


def test_expiry_warning_on_page_and_global_grid(admin_client, microsoft_app):
    configure_tenant(expires=date.today() + timedelta(days=6))
    page = admin_client.get(PAGE).get_data(as_text=True)
    assert "client secret expires in 6 days" in page
    grid = admin_client.get("/admin/email-accounts").get_data(as_text=True)
    assert "client secret expires in 6 days" in grid
