"""Advice after a refused Google sign-in of an Internet account.

The Internet account form has no Connect button: its sign-in button is
"Save and sign in with Google", and the address signed in as is the SMTP
user name, not the email address.
"""

from tests.oauth2.conftest import oauth_form
from tests.oauth2.test_google_xoauth2 import edit_url, save_and_sign_in, the_account


def account_page(client) -> str:
    return client.get(edit_url(the_account())).get_data(as_text=True)


def test_wrong_user_advice_names_button(
    staff_client, google_sign_in, gmail_smtp, certificates
):
    google_sign_in.add_user("mallory@portal.test", "Mallory")
    google_sign_in.sign_in_as = "mallory@portal.test"
    save_and_sign_in(staff_client, oauth_form(gmail_smtp, certificates))

    page = account_page(staff_client)

    assert "You signed in to Google as mallory@portal.test" in page
    assert "Press Connect again" not in page


def test_declined_scope_advice_names_button(
    staff_client, google_sign_in, gmail_smtp, certificates
):
    google_sign_in.declined_scopes = {"https://mail.google.com/"}
    save_and_sign_in(staff_client, oauth_form(gmail_smtp, certificates))

    page = account_page(staff_client)

    assert "consent left out https://mail.google.com/" in page
    assert "Press Connect again" not in page
