"""Access tokens from the service account and from personal grants, against the fake."""

import json

import pytest

from portal.extensions import db
from portal.integrations import google as integration
from portal.transports.base import Step, TransportError
from tests.google.conftest import ALL_SCOPES, connect_workspace


@pytest.fixture(scope="module")
def database_url(tmp_path_factory):
    """Tokens and HTTP do not depend on the database, so SQLite alone serves."""
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'google.sqlite3'}"


def test_jwt_carries_scope_subject_and_key_id(workspace):
    tokens = integration.delegated_tokens(
        "helpdesk@example.com", (integration.SCOPE_SEND,)
    )
    token = tokens.access_token()

    assert token.startswith("ya29.")
    request = workspace.token_requests[-1]
    assert request["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert request["claims"]["sub"] == "helpdesk@example.com"
    assert request["claims"]["scope"] == integration.SCOPE_SEND
    assert request["claims"]["aud"] == workspace.token_url
    assert request["claims"]["exp"] - request["claims"]["iat"] <= 3600
    assert request["header"]["kid"] == tokens.key.private_key_id
    assert workspace.access_tokens[token].subject == "helpdesk@example.com"


def test_token_is_cached_until_forced(workspace):
    tokens = integration.delegated_tokens(
        "helpdesk@example.com", (integration.SCOPE_SEND,)
    )
    first = tokens.access_token()
    requests_before = len(workspace.token_requests)

    assert tokens.access_token() == first
    assert len(workspace.token_requests) == requests_before
    assert tokens.access_token(force_refresh=True) != first


def test_unauthorized_client_names_client_id_not_key(google):
    key_file = connect_workspace(google, scopes=(integration.SCOPE_DIRECTORY,))
    tokens = integration.delegated_tokens(
        "helpdesk@example.com", (integration.SCOPE_SEND,)
    )

    with pytest.raises(integration.DelegationNotAuthorised) as caught:
        tokens.access_token()

    error = caught.value
    assert error.step == Step.AUTHENTICATION
    assert key_file["client_id"] in error.summary
    assert "Admin console" in error.advice
    assert "while to apply" in error.advice
    assert error.reply.startswith("unauthorized_client")
    for text in (error.summary, error.advice, error.reply):
        assert "PRIVATE KEY" not in text
        assert key_file["private_key_id"] not in text


def test_unknown_subject_is_mailbox_not_found(workspace):
    tokens = integration.delegated_tokens(
        "nobody@example.com", (integration.SCOPE_SEND,)
    )
    with pytest.raises(TransportError) as caught:
        tokens.access_token()
    assert caught.value.step == Step.SENDER
    assert "no user nobody@example.com" in caught.value.summary


def test_deleted_key_is_explained(workspace):
    service_account = integration.load_service_account()
    workspace.delete_key(service_account.key.client_email)
    tokens = integration.delegated_tokens(
        "helpdesk@example.com", (integration.SCOPE_SEND,)
    )
    with pytest.raises(TransportError) as caught:
        tokens.access_token()
    assert "signature" in caught.value.summary
    assert "new JSON key" in caught.value.advice


def test_key_of_another_account_fails_signature(google):
    key_file = google.new_service_account("real", key_index=1)
    forged = dict(
        key_file,
        private_key=google.new_service_account("other", key_index=2)["private_key"],
    )
    key = integration.parse_service_account_key(json.dumps(forged).encode())
    integration.save_service_account(key, "admin@example.com")
    db.session.commit()
    google.allow_delegation(key_file["client_id"], ALL_SCOPES)

    tokens = integration.delegated_tokens(
        "helpdesk@example.com", (integration.SCOPE_SEND,)
    )
    with pytest.raises(TransportError) as caught:
        tokens.access_token()
    assert caught.value.reply == "invalid_grant: Invalid JWT Signature."


@pytest.mark.parametrize("address", ["someone@gmail.com", "Someone@GoogleMail.com"])
def test_consumer_address_refused_before_request(workspace, address):
    before = len(workspace.token_requests)
    with pytest.raises(TransportError) as caught:
        integration.delegated_tokens(address, (integration.SCOPE_SEND,))
    assert "consumer Gmail" in caught.value.summary
    assert "signing in with Google" in caught.value.advice
    assert len(workspace.token_requests) == before


def test_refresh_token_revoked_raises_grant_revoked(google, oauth_client):
    google.refresh_tokens["1//known"] = {
        "client_id": oauth_client.client_id,
        "subject": "alice@gmail.com",
        "scopes": frozenset({"openid", "email", integration.SCOPE_SEND}),
        "revoked": False,
    }
    tokens = integration.personal_tokens("alice@gmail.com", "1//known")
    assert tokens.access_token().startswith("ya29.")

    google.revoke_grants("alice@gmail.com")
    with pytest.raises(integration.GrantRevoked) as caught:
        tokens.access_token(force_refresh=True)
    assert caught.value.reply == "invalid_grant: Token has been expired or revoked."
    assert "Reconnect" in caught.value.advice


def test_service_account_key_parsing_rejects_other_files():
    with pytest.raises(ValueError, match="not JSON"):
        integration.parse_service_account_key(b"\x00\x01")
    with pytest.raises(ValueError, match="not a service account key"):
        integration.parse_service_account_key(json.dumps({"web": {}}).encode())
    with pytest.raises(ValueError, match="lacks private_key"):
        integration.parse_service_account_key(
            json.dumps(
                {
                    "type": "service_account",
                    "client_email": "a@b",
                    "client_id": "1",
                    "private_key_id": "k",
                }
            ).encode()
        )


def test_cache_expires_with_margin():
    cache = integration._TokenCache()
    cache.put(("k",), "token", 30)  # less than the margin: expired at once
    assert cache.get(("k",)) is None
    cache.put(("k",), "token", 3600)
    assert cache.get(("k",)) == "token"
