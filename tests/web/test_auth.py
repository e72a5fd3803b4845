from portal.auth.routes import SIGN_IN_FAILED
from tests.conftest import PASSWORD, sign_in


def test_sign_in_redirects_to_accounts(client, staff):
    response = sign_in(client, "alice")
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_sign_in_failure_is_generic(client, staff):
    wrong_password = sign_in(client, "alice", "not the password")
    unknown_user = sign_in(client, "nobody-here", PASSWORD)
    for response in (wrong_password, unknown_user):
        page = response.get_data(as_text=True)
        assert response.status_code == 200
        assert SIGN_IN_FAILED in page
        assert "not the password" not in page


def test_sign_in_rejects_disabled_staff(client, staff, app):
    from portal.extensions import db

    staff.active = False
    db.session.commit()
    page = sign_in(client, "alice").get_data(as_text=True)
    assert SIGN_IN_FAILED in page


def test_sign_in_ignores_offsite_next(client, staff):
    client.csrf = None
    response = client.post(
        "/sign-in?next=https://evil.example/",
        data={"username": "alice", "password": PASSWORD},
    )
    assert response.headers["Location"] == "/"


def test_sign_in_follows_local_next(client, staff):
    response = client.post(
        "/sign-in?next=/preferences/email/accounts",
        data={"username": "alice", "password": PASSWORD},
    )
    assert response.headers["Location"] == "/preferences/email/accounts"


def test_sign_out_ends_session(staff_client):
    assert staff_client.get("/preferences/email/accounts").status_code == 200
    response = staff_client.post("/sign-out")
    assert response.status_code == 302
    after = staff_client.get("/preferences/email/accounts")
    assert after.status_code == 302
    assert "/sign-in" in after.headers["Location"]


def test_sign_in_post_without_csrf_is_rejected(client, staff):
    response = client.post(
        "/sign-in", data={"username": "alice", "password": PASSWORD}, without_csrf=True
    )
    assert response.status_code == 400
    assert "expired" in response.get_data(as_text=True)


def test_anonymous_is_sent_to_sign_in(client):
    response = client.get("/admin/email-accounts")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/sign-in")


def test_staff_cannot_reach_admin_pages(staff_client):
    assert staff_client.get("/admin/email-accounts").status_code == 403
    assert staff_client.get("/admin/email-accounts/new/internet").status_code == 403


def test_unknown_page_is_404_page(staff_client):
    response = staff_client.get("/no/such/page")
    assert response.status_code == 404
    assert "Page not found" in response.get_data(as_text=True)


def test_change_password(staff_client):
    form = {
        "current_password": PASSWORD,
        "new_password": "a new passphrase",
        "confirm_password": "a new passphrase",
    }
    response = staff_client.post("/preferences/password", data=form)
    assert response.status_code == 302
    staff_client.post("/sign-out")
    assert sign_in(staff_client, "alice", "a new passphrase").status_code == 302


def test_change_password_checks_current_and_repeat(staff_client):
    form = {
        "current_password": "wrong",
        "new_password": "a new passphrase",
        "confirm_password": "different",
    }
    page = staff_client.post("/preferences/password", data=form).get_data(as_text=True)
    assert (
        "The current password is incorrect." in page
        or "The two new passwords differ." in page
    )
    assert 'id="confirm_password-error"' in page
    assert "a new passphrase" not in page
