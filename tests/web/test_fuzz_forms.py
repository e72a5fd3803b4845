"""Random input to every form and htmx endpoint: never a server error, and a
rejected request changes nothing in the database."""

import hashlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from portal.extensions import db
from tests.conftest import HTMX, sign_in
from tests.web import test_authorization
from tests.web.test_authorization import (
    ENDPOINT_POLICY,
    OWNER,
    PUBLIC,
    SENDER,
    SIGNED_IN,
)

# Tables whose rows a rejected request may still add: the audit trail records
# refusals, and test results are stored on the account whatever the outcome.
CHANGING_ANYWAY = {"audit_event"}
TEST_RESULT_COLUMNS = {
    "last_send_test_at",
    "last_send_test_ok",
    "last_send_test_summary",
    "last_read_test_at",
    "last_read_test_ok",
    "last_read_test_summary",
}

texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(
        [
            "\r\nBcc: victim@example.com",
            "\x00",
            "a" * 5000,
            "１２３",
            "-1",
            "0",
            "99999999999999999999",
            "<script>alert(1)</script>",
            "' OR 1=1 --",
            "%s%s%s",
            "{{ 7*7 }}",
            "ü@bücher.example",
        ]
    ),
)


def database_fingerprint() -> str:
    digest = hashlib.sha256()
    for table in db.metadata.sorted_tables:
        if table.name in CHANGING_ANYWAY:
            continue
        columns = [
            c
            for c in table.columns
            if c.name not in TEST_RESULT_COLUMNS and c.name != "updated_at"
        ]
        for row in db.session.execute(
            select(*columns).order_by(*table.primary_key.columns)
        ):
            digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def form_fields(page: str) -> list[str]:
    names = set(re.findall(r'name="([a-zA-Z_][\w-]*)"', page))
    return sorted(names - {"csrf_token"})


def post_endpoints(app):
    for rule in app.url_map.iter_rules():
        if "POST" in rule.methods and rule.endpoint != "auth.sign_out":
            yield rule


@pytest.fixture
def world(app):
    """The same accounts, groups and messages as the authorization test uses."""
    return test_authorization.world.__wrapped__(app)


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'fuzz.sqlite3'}"


def test_random_form_input(app, client, world):
    """Every endpoint that accepts POST gets random values, with and without htmx."""
    endpoints = sorted({rule.endpoint for rule in post_endpoints(app)})
    assert endpoints
    for endpoint in endpoints:
        fuzz_endpoint(app, client, world, endpoint)


def fuzz_endpoint(app, client, world, endpoint):
    rules = [r for r in post_endpoints(app) if r.endpoint == endpoint]
    policy = ENDPOINT_POLICY[endpoint]
    visitor = "alice" if policy in (SIGNED_IN, OWNER, SENDER) else "root"
    client.post("/sign-out")
    if policy != PUBLIC:
        sign_in(client, visitor)
    blueprint = endpoint.split(".")[0]
    values = world.values.get(blueprint, world.values[""])
    rule = rules[0]
    url = rule.build({name: values[name] for name in rule.arguments})[1]
    page = client.get(url).get_data(as_text=True) if "GET" in rule.methods else ""
    known = form_fields(page) or [
        "name",
        "q",
        "to",
        "subject",
        "body",
        "account_id",
        "kind",
        "target_id",
        "security",
        "enabled",
    ]

    @settings(
        max_examples=10,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(
        data=st.dictionaries(st.sampled_from(known), texts, max_size=len(known)),
        htmx=st.booleans(),
    )
    def post_random(data, htmx):
        before = database_fingerprint()
        response = client.post(url, data=data, headers=HTMX if htmx else {})
        status = response.status_code
        body = response.get_data(as_text=True)
        response.close()
        assert status < 500, f"{url} answered {status} for {data!r}"
        db.session.rollback()
        db.session.expire_all()
        rejected = status >= 400 or 'class="error' in body or "error-panel" in body
        if rejected:
            assert database_fingerprint() == before, (
                f"{url} changed data although it answered {status}"
            )

    post_random()
