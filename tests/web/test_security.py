"""Security headers, session cookies and rate limits."""

import re

import pytest

from tests.conftest import HTMX, PASSWORD, sign_in
from tests.web.test_accounts import PERSONAL, account_form


def test_security_headers_on_pages_and_fragments(staff_client):
    for headers in ({}, HTMX):
        response = staff_client.get(PERSONAL, headers=headers)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"


def test_headers_on_error_pages(client):
    response = client.get("/no/such/page")
    assert response.status_code in (302, 404)
    assert "Content-Security-Policy" in response.headers


def test_pages_have_no_inline_script_or_style(staff_client):
    for url in (
        PERSONAL,
        f"{PERSONAL}/new/internet",
        "/compose",
        "/deliveries",
        "/preferences/password",
    ):
        page = staff_client.get(url).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), url
        assert "style=" not in page, url
        assert " on" + "click=" not in page, url


def test_session_cookie_flags(client, staff):
    response = sign_in(client, "alice")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_secure_over_https(app, client, staff):
    client.csrf = None
    token_page = client.get("/sign-in", base_url="https://localhost").get_data(
        as_text=True
    )
    token = re.search(r'"X-CSRFToken": "([^"]+)"', token_page).group(1)
    response = client.post(
        "/sign-in",
        data={"username": "alice", "password": PASSWORD},
        headers={"X-CSRFToken": token, "Referer": "https://localhost/sign-in"},
        base_url="https://localhost",
    )
    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"]


def test_sign_in_rotates_session(client, staff):
    client.get("/sign-in")
    with client.session_transaction() as session:
        session["planted"] = "by an attacker"
    sign_in_response = client.post(
        "/sign-in", data={"username": "alice", "password": PASSWORD}
    )
    assert sign_in_response.status_code == 302
    with client.session_transaction() as session:
        assert "planted" not in session


def test_sign_in_rate_limited_per_user_name(app, client, staff):
    app.config["SIGN_IN_LIMIT"] = "3/minute"
    for _ in range(3):
        assert sign_in(client, "alice", "wrong password").status_code == 200
    response = sign_in(client, "alice", PASSWORD)  # even the right password waits
    page = response.get_data(as_text=True)
    assert response.status_code == 429
    assert "Too many failed sign-ins. Try again in" in page


def test_sign_in_limit_counts_failures_only(app, client, staff):
    app.config["SIGN_IN_LIMIT"] = "2/minute"
    for _ in range(4):
        assert sign_in(client, "alice").status_code == 302


def test_sign_in_rate_limited_per_address(app, client, staff):
    app.config["SIGN_IN_ADDRESS_LIMIT"] = "3/minute"
    for number in range(3):
        sign_in(client, f"nobody{number}", "wrong")
    assert sign_in(client, "alice").status_code == 429


@pytest.mark.parametrize("action", ["test-send", "test-read"])
def test_tests_are_rate_limited(app, staff_client, closed_port, action):
    app.config["TEST_LIMIT"] = "2/minute"
    form = account_form(
        smtp_host="127.0.0.1",
        smtp_port=str(closed_port),
        smtp_security="none",
        smtp_auth="none",
        read_protocol="imap",
        read_host="127.0.0.1",
        read_port=str(closed_port),
        read_username="x",
        read_password="y",
        test_to="someone@example.com",
        action=action,
    )
    url = f"{PERSONAL}/new/internet"
    for _ in range(2):
        assert staff_client.post(url, data=form, headers=HTMX).status_code == 200
    response = staff_client.post(url, data=form, headers=HTMX)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    fragment = response.get_data(as_text=True)
    assert "Too many tests in a short time. Try again in" in fragment
    assert "<html" not in fragment


def test_forms_may_lead_to_sign_in_pages_only(staff_client):
    csp = staff_client.get(PERSONAL).headers["Content-Security-Policy"]
    form_action = next(
        part for part in csp.split("; ") if part.startswith("form-action")
    )
    assert "'self'" in form_action
    assert "https://login.microsoftonline.com" in form_action
    assert "https://accounts.google.com" in form_action
    assert "*" not in form_action
