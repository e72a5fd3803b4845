"""The outbound connection policy: what it refuses, and its page."""

import pytest

from portal.services import outbound
from portal.transports import destinations
from portal.transports.base import TransportError
from tests.conftest import HTMX
from tests.web.test_accounts import GLOBAL, PERSONAL, account_form


def send_form(host, port, **overrides):
    values = dict(
        smtp_host=host,
        smtp_port=str(port),
        smtp_security="none",
        smtp_auth="none",
        test_to="someone@example.com",
        action="test-send",
    )
    values.update(overrides)
    return account_form(**values)


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "169.254.0.1", "fe80::1", "0.0.0.0", "fd00:ec2::254"],  # noqa: S104
)
def test_metadata_and_link_local_always_refused(address):
    with pytest.raises(TransportError) as raised:
        destinations.check("metadata", 80, address)
    assert "never allowed" in raised.value.summary


def test_ipv4_mapped_metadata_refused():
    with pytest.raises(TransportError):
        destinations.check("sneaky", 80, "::ffff:169.254.169.254")


@pytest.mark.parametrize(
    ("rule", "host", "address", "port", "matches"),
    [
        ("smtp.example.com", "SMTP.example.com", "203.0.113.5", 25, True),
        ("smtp.example.com:587", "smtp.example.com", "203.0.113.5", 25, False),
        ("*.corp.example:25,587", "mail.corp.example", "10.0.0.5", 587, True),
        ("*.corp.example", "corp.example", "10.0.0.5", 587, False),
        ("10.20.0.0/16:993", "anything", "10.20.3.4", 993, True),
        ("10.20.0.0/16:993", "anything", "10.21.3.4", 993, False),
        ("[fd00::/8]:25", "v6", "fd12::1", 25, True),
        ("bücher.example", "xn--bcher-kva.example", "203.0.113.9", 25, True),
    ],
)
def test_rule_matching(rule, host, address, port, matches):
    import ipaddress

    assert (
        outbound.parse_rule(rule).matches(host, ipaddress.ip_address(address), port)
        is matches
    )


@pytest.mark.parametrize(
    "line", ["smtp.example.com:0", "10.0.0.0/33", "a b", "[fd00::/8]25", "host:x"]
)
def test_invalid_rules_rejected(line):
    with pytest.raises(ValueError):
        outbound.parse_rule(line)


def test_personal_account_refused_loopback_without_rule(app, staff_client, plain_smtp):
    app.config["OUTBOUND_ALLOW"] = ""
    fragment = staff_client.post(
        f"{PERSONAL}/new/internet",
        data=send_form("127.0.0.1", plain_smtp.port),
        headers=HTMX,
    ).get_data(as_text=True)
    assert "failed at the connect step" in fragment
    assert "personal accounts may not connect to loopback" in fragment
    assert plain_smtp.messages == []


def test_personal_account_allowed_by_rule(app, admin_client, plain_smtp):
    app.config["OUTBOUND_ALLOW"] = ""
    response = admin_client.post(
        "/admin/settings/outbound-connections",
        data={"rules": f"127.0.0.1:{plain_smtp.port}"},
    )
    assert response.status_code == 302
    fragment = admin_client.post(
        f"{PERSONAL}/new/internet",
        data=send_form("127.0.0.1", plain_smtp.port),
        headers=HTMX,
    ).get_data(as_text=True)
    assert "Test send succeeded" in fragment


def test_global_account_allowed_unless_restricted(app, admin_client, plain_smtp):
    app.config["OUTBOUND_ALLOW"] = ""
    url = f"{GLOBAL}/new/internet"
    ok = admin_client.post(
        url, data=send_form("127.0.0.1", plain_smtp.port), headers=HTMX
    )
    assert "Test send succeeded" in ok.get_data(as_text=True)

    admin_client.post(
        "/admin/settings/outbound-connections",
        data={"rules": "smtp.example.com", "restrict_global": "1"},
    )
    refused = admin_client.post(
        url, data=send_form("127.0.0.1", plain_smtp.port), headers=HTMX
    )
    assert (
        "only to the destinations the outbound connection policy lists"
        in refused.get_data(as_text=True)
    )


def test_name_resolving_to_metadata_is_refused(app, staff_client):
    # "localhost" resolves to loopback; a rule allows loopback, yet a literal
    # metadata address stays refused for every account.
    fragment = staff_client.post(
        f"{PERSONAL}/new/internet", data=send_form("169.254.169.254", 80), headers=HTMX
    ).get_data(as_text=True)
    assert "never allowed" in fragment


def test_policy_page_reports_bad_lines(admin_client):
    page = admin_client.post(
        "/admin/settings/outbound-connections",
        data={"rules": "ok.example\nbad host\n10.0.0.0/99"},
    ).get_data(as_text=True)
    assert "Line 2:" in page
    assert "Line 3:" in page
    assert "bad host" in page  # what was typed stays
