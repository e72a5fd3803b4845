"""SOAP Autodiscover against the fake: settings, redirects and refusals."""

import pytest

from portal.transports import ews
from portal.transports import ews_autodiscover as autodiscover
from tests.exchange.conftest import MAILBOX, SECRET, USERNAME
from tests.fakes.ews import (
    AUTODISCOVER_PATH,
    HttpRedirect,
    RedirectAddress,
    RedirectUrl,
    Settings,
    Status,
)
from tests.servers.ports import free_port

FIRST = ("127.0.0.1", AUTODISCOVER_PATH)


@pytest.fixture
def discover(exchange, certificates):
    """Run Autodiscover for alice against the fake, with keyword overrides."""

    def run(address=MAILBOX, **overrides):
        options = {
            "username": USERNAME,
            "password": SECRET,
            "authentication": ews.Authentication.BASIC,
            "candidates": [exchange.autodiscover_url],
            "tls_policy": ews.TlsPolicy(cafile=str(certificates.ca_path)),
            "timeout": 3.0,
            "srv_lookup": lambda name, timeout: [],
        }
        options.update(overrides)
        return autodiscover.discover(address, **options)

    return run


def answers(attempts):
    return [attempt.answer for attempt in attempts]


def test_settings_give_endpoint_version_and_authentication(exchange, discover):
    found = discover()

    assert found.ews_url == exchange.ews_url
    assert found.authentication == ews.Authentication.BASIC
    assert found.server_version == "15.2.1544.4"
    assert found.display_name == "Alice"
    assert found.address == MAILBOX
    assert found.for_address == MAILBOX
    assert found.offered == ["NTLM", "Basic"]
    assert found.note == ""
    assert answers(found.attempts)[0] == "NoError: settings returned."
    (request,) = exchange.requests_for("GetUserSettings")
    assert request.authorization_scheme == "Basic"


def test_result_survives_round_trip(discover):
    found = discover()

    again = autodiscover.Discovery.from_dict(found.to_dict())

    assert again == found


def test_internal_url_is_preferred(exchange, discover):
    exchange.autodiscover[FIRST] = Settings(
        internal_ews_url=exchange.ews_url,
        external_ews_url="https://mail.example.com/EWS/Exchange.asmx",
    )

    assert discover().ews_url == exchange.ews_url


def test_same_host_redirect_url_is_followed(exchange, discover):
    second = exchange.url("/mailbox-server" + AUTODISCOVER_PATH)
    exchange.autodiscover[FIRST] = RedirectUrl(second)

    found = discover()

    assert found.ews_url == exchange.ews_url
    assert answers(found.attempts)[:2] == [
        f"RedirectUrl to {second}",
        "NoError: settings returned.",
    ]


def test_same_host_http_redirect_is_followed(exchange, discover):
    second = exchange.url("/ex2019" + AUTODISCOVER_PATH)
    exchange.autodiscover[FIRST] = HttpRedirect(second)

    found = discover()

    assert found.ews_url == exchange.ews_url
    assert [request.path for request in exchange.requests_for("GetUserSettings")] == [
        AUTODISCOVER_PATH,
        "/ex2019" + AUTODISCOVER_PATH,
    ]


def test_redirect_to_plain_http_is_refused(exchange, discover):
    target = exchange.http_url(AUTODISCOVER_PATH)
    exchange.autodiscover[FIRST] = RedirectUrl(target)

    with pytest.raises(autodiscover.AutodiscoverFailed) as caught:
        discover()

    assert (
        caught.value.summary == "Autodiscover found no Exchange server for example.com."
    )
    assert "Not followed: a plain-HTTP address never receives credentials." in answers(
        caught.value.attempts
    )
    assert [request for request in exchange.received if request.scheme == "http"] == []


def test_redirect_to_other_host_needs_confirmation(exchange, discover):
    target = exchange.url(AUTODISCOVER_PATH, host="localhost")
    exchange.autodiscover[FIRST] = RedirectUrl(target)

    with pytest.raises(autodiscover.RedirectNeedsConfirmation) as caught:
        discover()

    assert caught.value.host == "localhost"
    assert caught.value.target == target
    assert caught.value.source == exchange.autodiscover_url
    assert [request.host for request in exchange.requests_for("GetUserSettings")] == [
        "127.0.0.1"
    ]

    found = discover(allowed_hosts={"localhost"})

    assert found.ews_url == exchange.ews_url
    assert exchange.requests_for("GetUserSettings")[-1].host == "localhost"


@pytest.mark.parametrize(
    "answer",
    [
        RedirectAddress("alice@contoso.mail.onmicrosoft.com"),
        RedirectUrl("https://autodiscover-s.outlook.com/autodiscover/autodiscover.svc"),
        Settings(internal_ews_url="https://outlook.office365.com/EWS/Exchange.asmx"),
    ],
    ids=["address", "url", "ews-url"],
)
def test_exchange_online_answer_is_refused(exchange, discover, answer):
    exchange.autodiscover[FIRST] = answer

    with pytest.raises(autodiscover.MailboxInMicrosoft365) as caught:
        discover()

    assert caught.value.summary.startswith("The mailbox lives in Microsoft 365")
    assert "Use a Microsoft 365 account" in caught.value.advice
    assert "Points to Exchange Online" in answers(caught.value.attempts)[-1]
    assert len(exchange.requests_for("GetUserSettings")) == 1


def test_exchange_online_allowed_still_needs_confirmation(exchange, discover):
    exchange.autodiscover[FIRST] = RedirectUrl(
        "https://autodiscover-s.outlook.com/autodiscover/autodiscover.svc"
    )

    with pytest.raises(autodiscover.RedirectNeedsConfirmation) as caught:
        discover(keep_on_premises=False)

    assert caught.value.host == "autodiscover-s.outlook.com"


def test_redirect_address_in_same_domain_restarts(exchange, discover):
    exchange.add_mailbox("alice.smith@example.com", USERNAME + "2", "other")
    exchange.autodiscover[FIRST] = RedirectAddress("alice.smith@example.com")
    exchange.autodiscover[("127.0.0.1", "/second" + AUTODISCOVER_PATH)] = Settings()

    with pytest.raises(autodiscover.AutodiscoverFailed):
        # The same URL again would be a loop: the fake keeps redirecting it.
        discover()

    found = discover(
        candidates=[
            exchange.autodiscover_url,
            exchange.url("/second" + AUTODISCOVER_PATH),
        ]
    )
    assert found.address == "alice.smith@example.com"
    assert found.for_address == MAILBOX


def test_redirect_address_to_other_domain_needs_confirmation(exchange, discover):
    exchange.autodiscover[FIRST] = RedirectAddress("alice@example.net")

    with pytest.raises(autodiscover.RedirectNeedsConfirmation) as caught:
        discover()

    assert caught.value.host == "example.net"


def test_unknown_mailbox_is_reported(discover):
    with pytest.raises(autodiscover.AutodiscoverFailed) as caught:
        discover("nobody@example.com")

    assert caught.value.summary == (
        "Autodiscover found no mailbox with the address nobody@example.com."
    )
    assert answers(caught.value.attempts) == [
        "InvalidUser: Invalid user: 'nobody@example.com'"
    ]


def test_wrong_password_is_reported_with_attempts(discover):
    with pytest.raises(autodiscover.AutodiscoverFailed) as caught:
        discover(password="wrong")

    assert caught.value.step == "authentication"
    assert "rejected the user name EXAMPLE\\alice" in caught.value.summary
    assert answers(caught.value.attempts) == [
        "HTTP 401: the user name or password was rejected."
    ]


def test_each_candidate_is_listed_with_its_answer(exchange, discover):
    closed = f"https://127.0.0.1:{free_port()}{AUTODISCOVER_PATH}"
    missing = exchange.url("/missing" + AUTODISCOVER_PATH)
    exchange.autodiscover[("127.0.0.1", "/missing" + AUTODISCOVER_PATH)] = Status(404)

    found = discover(candidates=[closed, missing, exchange.autodiscover_url])

    assert [attempt.url for attempt in found.attempts[:3]] == [
        closed,
        missing,
        exchange.autodiscover_url,
    ]
    assert "refused the connection" in found.attempts[0].answer
    assert found.attempts[1].answer == "HTTP 404: not an Autodiscover service."


def test_failure_lists_every_candidate(exchange, discover):
    closed = f"https://127.0.0.1:{free_port()}{AUTODISCOVER_PATH}"

    with pytest.raises(autodiscover.AutodiscoverFailed) as caught:
        discover(candidates=[closed, "srv"])

    assert [attempt.url for attempt in caught.value.attempts] == [
        closed,
        "DNS SRV _autodiscover._tcp.example.com",
    ]
    assert caught.value.attempts[1].answer == "No record."
    assert "Enter the EWS URL" in caught.value.advice


def test_certificate_problem_is_kept_for_trust(certificates):
    from tests.fakes.ews import FakeExchange

    with FakeExchange(certificates.self_signed) as exchange:
        exchange.add_mailbox(MAILBOX, USERNAME, SECRET)
        with pytest.raises(autodiscover.AutodiscoverFailed) as caught:
            autodiscover.discover(
                MAILBOX,
                username=USERNAME,
                password=SECRET,
                authentication=ews.Authentication.BASIC,
                candidates=[exchange.autodiscover_url],
                timeout=3.0,
            )
        assert caught.value.certificate.sha256 == certificates.self_signed.sha256
        assert exchange.requests_for("GetUserSettings") == []

        found = autodiscover.discover(
            MAILBOX,
            username=USERNAME,
            password=SECRET,
            authentication=ews.Authentication.BASIC,
            candidates=[exchange.autodiscover_url],
            tls_policy=ews.TlsPolicy(
                trusted_fingerprint=certificates.self_signed.sha256
            ),
            timeout=3.0,
        )
    assert found.ews_url == exchange.ews_url


def test_http_step_redirect_is_followed_without_credentials(exchange, discover):
    exchange.http_answers["/autodiscover/autodiscover.xml"] = HttpRedirect(
        exchange.url("/autodiscover/autodiscover.xml", host="localhost")
    )
    candidates = [exchange.http_url("/autodiscover/autodiscover.xml")]

    with pytest.raises(autodiscover.RedirectNeedsConfirmation) as caught:
        discover(candidates=candidates)
    assert caught.value.host == "localhost"

    found = discover(candidates=candidates, allowed_hosts={"localhost"})

    assert found.ews_url == exchange.ews_url
    plain = [request for request in exchange.received if request.scheme == "http"]
    assert [request.method for request in plain] == ["GET", "GET"]
    assert {request.authorization_scheme for request in plain} == {""}
    assert exchange.requests_for("GetUserSettings")[-1].host == "localhost"


def test_http_step_redirect_to_http_is_refused(exchange, discover):
    exchange.http_answers["/autodiscover/autodiscover.xml"] = HttpRedirect(
        "http://mail.example.com/autodiscover/autodiscover.xml"
    )

    with pytest.raises(autodiscover.AutodiscoverFailed) as caught:
        discover(candidates=[exchange.http_url("/autodiscover/autodiscover.xml")])

    assert answers(caught.value.attempts)[-1] == (
        "Not followed: a plain-HTTP address never receives credentials."
    )


def test_srv_record_with_lowest_priority_is_used(exchange, discover):
    records = [
        (20, 100, exchange.port, "unused.example.com."),
        (10, 0, exchange.port, "localhost."),
    ]

    found = discover(
        candidates=["srv"],
        srv_lookup=lambda name, timeout: records,
        allowed_hosts={"localhost"},
    )

    assert found.ews_url == exchange.ews_url
    assert found.attempts[0].answer == f"Points to localhost port {exchange.port}."


def test_srv_record_needs_confirmation(exchange, discover):
    records = [(0, 0, exchange.port, "localhost.")]

    with pytest.raises(autodiscover.RedirectNeedsConfirmation) as caught:
        discover(candidates=["srv"], srv_lookup=lambda name, timeout: records)

    assert caught.value.host == "localhost"
    assert caught.value.source == "DNS SRV _autodiscover._tcp.example.com"


def test_authentication_not_offered_by_ews_is_switched(exchange, discover):
    exchange.ews_offered = ("Negotiate", "NTLM")

    found = discover()

    assert found.authentication == ews.Authentication.NTLM
    assert found.note == "The EWS endpoint does not offer Basic, so NTLM is used."


def test_ews_without_usable_authentication_fails(exchange, discover):
    exchange.ews_offered = ("Negotiate",)

    with pytest.raises(autodiscover.AutodiscoverFailed) as caught:
        discover()

    assert caught.value.step == "authentication"
    assert "offers only Negotiate" in caught.value.summary


def test_plain_http_ews_url_is_refused(exchange, discover):
    exchange.autodiscover[FIRST] = Settings(
        internal_ews_url=exchange.http_url("/EWS/Exchange.asmx")
    )

    with pytest.raises(autodiscover.AutodiscoverFailed) as caught:
        discover()

    assert "plain-HTTP EWS URL" in caught.value.summary


def test_redirect_loop_stops(exchange, discover):
    exchange.autodiscover[FIRST] = RedirectUrl(exchange.autodiscover_url)

    with pytest.raises(autodiscover.AutodiscoverFailed) as caught:
        discover()

    assert "Already tried: a redirect loop." in answers(caught.value.attempts)


def test_ntlm_autodiscover(exchange, discover):
    found = discover(authentication=ews.Authentication.NTLM)

    assert found.authentication == ews.Authentication.NTLM
    assert exchange.requests_for("GetUserSettings")[-1].user == USERNAME


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("outlook.office365.com", True),
        ("autodiscover-s.outlook.com", True),
        ("alice@contoso.mail.onmicrosoft.com", True),
        ("outlook.office365.us", True),
        ("mail.example.com", False),
        ("notoutlook.com", False),
    ],
)
def test_exchange_online_names(name, expected):
    assert autodiscover.is_microsoft_365(name) is expected
