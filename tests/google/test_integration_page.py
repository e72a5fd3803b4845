"""Integrations › Google Workspace: key upload, OAuth client, Check connection."""

import io
import json
import logging

from sqlalchemy import select

from portal.extensions import db
from portal.integrations import google as integration
from portal.models import AuditEvent, IntegrationSecret
from tests.conftest import HTMX
from tests.google.conftest import ALL_SCOPES, connect_workspace

PAGE = "/admin/integrations/google"


def upload(client, key_file, admin="admin@example.com", raw=None):
    data = raw if raw is not None else json.dumps(key_file).encode()
    return client.post(
        f"{PAGE}/service-account",
        data={"key_file": (io.BytesIO(data), "key.json"), "admin_address": admin},
        content_type="multipart/form-data",
    )


def test_page_lists_scopes_warning_and_redirect_uri(admin_client, google):
    page = admin_client.get(PAGE).get_data(as_text=True)

    for scope in ALL_SCOPES:
        assert scope in page
    assert "Domain-wide delegation reaches every mailbox in the domain" in page
    assert "http://localhost/preferences/email/accounts/google/callback" in page
    assert "No service account is connected." in page


def test_upload_stores_key_encrypted_and_shows_ids_only(admin_client, google, caplog):
    caplog.set_level(logging.DEBUG)
    key_file = google.new_service_account()

    response = upload(admin_client, key_file)
    assert response.status_code == 302
    page = admin_client.get(PAGE).get_data(as_text=True)

    assert key_file["client_email"] in page
    assert key_file["client_id"] in page
    assert key_file["private_key_id"] in page
    assert "admin@example.com" in page
    assert "PRIVATE KEY" not in page
    (secret,) = db.session.scalars(select(IntegrationSecret)).all()
    assert secret.name == "service_account_key"
    assert "PRIVATE KEY" not in secret.ciphertext
    assert integration.load_service_account().key.private_key == key_file["private_key"]
    event = db.session.scalars(
        select(AuditEvent).where(
            AuditEvent.action == "integration.google.service-account"
        )
    ).one()
    assert event.changes["private_key"] == "(changed)"
    assert "PRIVATE KEY" not in json.dumps(event.changes)
    assert "PRIVATE KEY" not in caplog.text


def test_upload_rejects_other_files_beside_field(admin_client, google):
    response = upload(admin_client, None, raw=b'{"installed": {"client_id": "x"}}')
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "not a service account key" in page
    assert "key_file-error" in page
    assert integration.load_service_account() is None


def test_first_save_requires_key(admin_client, google):
    response = admin_client.post(
        f"{PAGE}/service-account", data={"admin_address": "admin@example.com"}
    )
    assert response.status_code == 400
    assert "Choose the service account" in response.get_data(as_text=True)


def test_consumer_admin_address_refused(admin_client, google):
    response = upload(admin_client, google.new_service_account(), admin="ada@gmail.com")
    assert response.status_code == 400
    assert "consumer Gmail address" in response.get_data(as_text=True)
    assert integration.load_service_account() is None


def test_admin_address_changes_without_new_key(admin_client, google):
    key_file = connect_workspace(google)
    response = admin_client.post(
        f"{PAGE}/service-account", data={"admin_address": "hannah@example.com"}
    )
    assert response.status_code == 302
    stored = integration.load_service_account()
    assert stored.admin_address == "hannah@example.com"
    assert stored.key.private_key_id == key_file["private_key_id"]


def test_check_connection_all_scopes_work(admin_client, workspace):
    response = admin_client.post(f"{PAGE}/check", headers=HTMX)
    fragment = response.get_data(as_text=True)

    assert "<html" not in fragment
    assert "Connection works" in fragment
    assert fragment.count("Allowed") >= len(ALL_SCOPES)
    # One token per scope, each a JWT for the administrator with the scope claim.
    jwts = [
        r for r in workspace.token_requests if r["grant_type"].endswith("jwt-bearer")
    ]
    assert [r["claims"]["scope"] for r in jwts] == list(ALL_SCOPES)
    assert {r["claims"]["sub"] for r in jwts} == {"admin@example.com"}
    assert workspace.directory_requests[-1]["maxResults"] == "1"


def test_check_connection_explains_unauthorized_client(admin_client, google):
    key_file = connect_workspace(
        google, scopes=(integration.SCOPE_DIRECTORY, integration.SCOPE_SEND)
    )

    fragment = admin_client.post(f"{PAGE}/check", headers=HTMX).get_data(as_text=True)

    assert "Connection check failed" in fragment
    assert f"client id {key_file['client_id']}" in fragment
    assert integration.SCOPE_SETTINGS in fragment
    assert integration.SCOPE_READ in fragment
    assert "can take a while to apply" in fragment
    assert "Not allowed" in fragment
    assert key_file["private_key_id"] not in fragment
    assert "PRIVATE KEY" not in fragment
    event = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "integration.google.check")
    ).one()
    assert event.outcome == "failure"


def test_check_connection_administrator_without_directory_rights(admin_client, google):
    connect_workspace(google, admin="hannah@example.com")
    fragment = admin_client.post(f"{PAGE}/check", headers=HTMX).get_data(as_text=True)
    assert "hannah@example.com may not read the Google Workspace directory" in fragment
    assert "Not Authorized to access this resource/api" in fragment


def test_check_connection_without_javascript_renders_page(admin_client, workspace):
    response = admin_client.post(f"{PAGE}/check")
    page = response.get_data(as_text=True)
    assert "<html" in page
    assert "Connection works" in page
    later = admin_client.get(PAGE).get_data(as_text=True)
    assert "Last checked" in later


def test_oauth_client_secret_is_stored_encrypted(admin_client, google):
    response = admin_client.post(
        f"{PAGE}/oauth-client",
        data={
            "client_id": "123-abc.apps.googleusercontent.com",
            "client_secret": "GOCSPX-very-secret",
        },
    )
    assert response.status_code == 302
    page = admin_client.get(PAGE).get_data(as_text=True)

    assert "123-abc.apps.googleusercontent.com" in page
    assert "GOCSPX-very-secret" not in page
    assert "A value is stored" in page
    assert integration.load_oauth_client().client_secret == "GOCSPX-very-secret"
    # Saving again without a secret keeps the stored one.
    admin_client.post(
        f"{PAGE}/oauth-client", data={"client_id": "456-def.apps.googleusercontent.com"}
    )
    assert integration.load_oauth_client().client_secret == "GOCSPX-very-secret"


def test_oauth_client_requires_secret_first(admin_client, google):
    response = admin_client.post(
        f"{PAGE}/oauth-client", data={"client_id": "123-abc.apps.googleusercontent.com"}
    )
    assert response.status_code == 400
    assert "Enter the client secret." in response.get_data(as_text=True)


def test_remove_service_account(admin_client, workspace):
    response = admin_client.post(f"{PAGE}/service-account/remove", headers=HTMX)
    assert response.headers["HX-Redirect"] == PAGE
    assert integration.load_service_account() is None
    assert db.session.scalars(select(IntegrationSecret)).all() == []


def test_integration_pages_forbidden_to_staff(staff_client, google):
    assert staff_client.get(PAGE).status_code == 403
    assert staff_client.post(f"{PAGE}/check").status_code == 403
