"""Field validation: host names, ports, addresses, header text, fingerprints."""

import socket

import pytest

from portal.transports.base import Security
from portal.validation import (
    ascii_email,
    check_header_value,
    display_host,
    normalise_email,
    normalise_fingerprint,
    normalise_host,
    parse_port,
    security_port_warning,
)

WRONG_TYPES = [b"mail.example.com", 25, 2.5, ["mail.example.com"], object()]

# A host name of exactly 253 characters: three 63-character labels, one of 61.
MAX_LENGTH_HOST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that resolves a name or opens a socket (dnspython too)."""
    attempts = []

    def fail(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("validation must not use the network or DNS")

    # A subclass rather than a function, because dnspython subclasses
    # socket.socket when it is imported.
    class NoSocket(socket.socket):
        __init__ = fail

    monkeypatch.setattr(socket, "socket", NoSocket)
    monkeypatch.setattr(socket, "getaddrinfo", fail)
    monkeypatch.setattr(socket, "gethostbyname", fail)
    yield

    # dnspython catches the AssertionError and retries, so check afterwards too.
    assert attempts == []


# -- normalise_host -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("smtp.example.com", "smtp.example.com"),
        ("  SMTP.Example.COM  ", "smtp.example.com"),
        ("smtp.example.com.", "smtp.example.com"),
        ("localhost", "localhost"),
        ("mail-01.example.com", "mail-01.example.com"),
        ("1e100.net", "1e100.net"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.Example", "xn--bcher-kva.example"),
        ("münchen.example", "xn--mnchen-3ya.example"),
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("例え。テスト", "xn--r8jz45g.xn--zckzah"),
        ("faß.de", "xn--fa-hia.de"),
        ("xn--mnchen-3ya.example", "xn--mnchen-3ya.example"),
        ("XN--MNCHEN-3YA.EXAMPLE", "xn--mnchen-3ya.example"),
        ("ｍａｉｌ．example.com", "mail.example.com"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        (MAX_LENGTH_HOST, MAX_LENGTH_HOST),
        ("192.0.2.10", "192.0.2.10"),
        ("192.0.2.10.", "192.0.2.10"),
        ("2001:DB8::25", "2001:db8::25"),
        ("2001:0db8:0000:0000:0000:0000:0000:0025", "2001:db8::25"),
        ("[2001:db8::25]", "2001:db8::25"),
        ("[::1]", "::1"),
        ("::1", "::1"),
    ],
)
def test_normalise_host_accepts(value, expected):
    assert normalise_host(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Enter the server's host name"),
        ("", "Enter the server's host name"),
        ("   ", "Enter the server's host name"),
        (".", "Enter the server's host name"),
        ("smtp://mail.example.com", 'Remove "smtp://"'),
        ("SMTPS://mail.example.com:465", 'Remove "SMTPS://"'),
        ("https://mail.example.com/owa", 'Remove "https://"'),
        ("mail.example.com/owa", "without a path"),
        ("mail.example.com\\share", "without a path"),
        ("mail.example.com?x=1", "without a path"),
        ("mail.example.com:25", "Port field"),
        ("mail.example.com:587", "without :587"),
        ("[2001:db8::25]:465", "without :465"),
        ("mail.example.com:smtp", 'cannot contain ":"'),
        ("mail example.com", "cannot contain spaces"),
        ("mail\u3000example.com", "cannot contain spaces"),
        ("mail\u00a0example.com", "cannot contain spaces"),
        ("mail.example.com\r\nRCPT TO:<eve@example.com>", "U+000D"),
        ("mail.example.com\nX", "U+000A"),
        ("mail\x00.example.com", "U+0000"),
        ("mail\t.example.com", "control characters"),
        ("bob@example.com", "looks like an email address"),
        ("mail_server.example.com", '"_" (U+005F)'),
        ("mail*.example.com", '"*"'),
        ("-mail.example.com", "start or end with a hyphen"),
        ("mail-.example.com", "start or end with a hyphen"),
        ("mail..example.com", "two dots in a row"),
        (".example.com", "two dots in a row"),
        ("a" * 64 + ".example", "at most 63 characters"),
        ("ü" * 60 + ".example", "at most 63 characters"),
        (MAX_LENGTH_HOST + "d", "the maximum is 253"),
        ("a." * 200 + "com", "the maximum is 253"),
        ("x" * 5000, "characters long"),
        ("☃.example", "not a valid internationalised host name"),
        ("xn--zz.example", "not a valid internationalised host name"),
        ("ab--cd.example", "not a valid internationalised host name"),
        ("256.0.0.1", "not a valid IPv4 address"),
        ("192.0.2", "not a valid IPv4 address"),
        ("127.1", "not a valid IPv4 address"),
        ("010.0.0.1", "not a valid IPv4 address"),
        ("0x7f.0.0.1", "not a valid IPv4 address"),
        ("2130706433", "not a valid IPv4 address"),
        ("2001:db8::zz", "not a valid IPv6 address"),
        ("2001:db8:::1", "not a valid IPv6 address"),
        ("[mail.example.com]", "not a valid IPv6 address"),
        ("[2001:db8::1", "Brackets are only used"),
        ("[[::1]]", "Brackets are only used"),
    ],
)
def test_normalise_host_rejects(value, message):
    with pytest.raises(ValueError) as excinfo:
        normalise_host(value)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    "value",
    ["mail.example.com\r\nX", "x" * 5000, "ü" * 60 + ".example", "a." * 200 + "com"],
)
def test_normalise_host_messages_stay_short(value):
    with pytest.raises(ValueError) as excinfo:
        normalise_host(value)
    message = str(excinfo.value)
    assert len(message) < 300
    assert "\r" not in message
    assert "\n" not in message


@pytest.mark.parametrize("value", WRONG_TYPES)
def test_normalise_host_wrong_type(value):
    with pytest.raises(TypeError):
        normalise_host(value)


# -- display_host -------------------------------------------------------------


@pytest.mark.parametrize(
    ("ascii_host", "expected"),
    [
        ("xn--bcher-kva.example", "bücher.example"),
        ("XN--BCHER-KVA.example", "bücher.example"),
        ("xn--mnchen-3ya.example", "münchen.example"),
        ("xn--r8jz45g.xn--zckzah", "例え.テスト"),
        ("smtp.example.com", "smtp.example.com"),
        ("192.0.2.10", "192.0.2.10"),
        ("2001:db8::25", "2001:db8::25"),
        ("xn--zz.example", "xn--zz.example"),
        ("xn--", "xn--"),
        ("xn--abc-!!.example", "xn--abc-!!.example"),
        ("xn--ü.example", "xn--ü.example"),
        ("xn--a" + "b" * 100, "xn--a" + "b" * 100),
        ("", ""),
    ],
)
def test_display_host(ascii_host, expected):
    assert display_host(ascii_host) == expected


@pytest.mark.parametrize(
    "typed",
    ["bücher.example", "münchen.example", "例え.テスト", "smtp.example.com"],
)
def test_display_host_round_trip(typed):
    assert display_host(normalise_host(typed)) == typed


@pytest.mark.parametrize("value", [None, *WRONG_TYPES[:1], 25])
def test_display_host_wrong_type(value):
    with pytest.raises(TypeError):
        display_host(value)


# -- parse_port ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("587", 587),
        (" 25 ", 25),
        ("1", 1),
        ("65535", 65535),
        ("00465", 465),
        (993, 993),
        (1, 1),
        (65535, 65535),
    ],
)
def test_parse_port_accepts(value, expected):
    assert parse_port(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Enter a port number"),
        ("", "Enter a port number"),
        ("  ", "Enter a port number"),
        ("0", "Port 0 is out of range"),
        ("00000", "Port 0 is out of range"),
        ("65536", "Port 65536 is out of range"),
        ("9" * 5000, "is out of range"),
        (0, "Port 0 is out of range"),
        (-25, "Port -25 is out of range"),
        (70000, "Port 70000 is out of range"),
        ("-1", "is not a port number"),
        ("+25", "is not a port number"),
        ("2_5", "is not a port number"),
        ("25.0", "is not a port number"),
        ("5 87", "is not a port number"),
        ("smtp", "is not a port number"),
        ("0x19", "is not a port number"),
        ("٢٥", "is not a port number"),
        ("２５", "is not a port number"),
    ],
)
def test_parse_port_rejects(value, message):
    with pytest.raises(ValueError) as excinfo:
        parse_port(value)
    assert message in str(excinfo.value)


def test_parse_port_message_names_range():
    with pytest.raises(ValueError) as excinfo:
        parse_port("70000")
    assert "from 1 to 65535" in str(excinfo.value)


@pytest.mark.parametrize("value", [True, False, 25.0, b"25", [25]])
def test_parse_port_wrong_type(value):
    with pytest.raises(TypeError):
        parse_port(value)


# -- normalise_email and ascii_email ------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bob@example.com", "bob@example.com"),
        ("  bob@example.com  ", "bob@example.com"),
        ("Bob@EXAMPLE.COM", "Bob@example.com"),
        ("bob+helpdesk@example.com", "bob+helpdesk@example.com"),
        ("bob@bücher.example", "bob@bücher.example"),
        ("bob@BÜCHER.example", "bob@bücher.example"),
        ("bob@xn--bcher-kva.example", "bob@bücher.example"),
        ("bob@münchen.example", "bob@münchen.example"),
        ("bob@例え.テスト", "bob@例え.テスト"),
        ("ü@bücher.example", "ü@bücher.example"),
        ("用户@例子.广告", "用户@例子.广告"),
        ("x" * 64 + "@example.com", "x" * 64 + "@example.com"),
    ],
)
def test_normalise_email_accepts(value, expected):
    assert normalise_email(value) == expected


def test_normalise_email_accepts_254_characters():
    domain = ".".join(["d" * 63, "d" * 63, "d" * 63, "d" * 57])
    address = "x" * 4 + "@" + domain
    assert len(address) == 254
    assert normalise_email(address) == address


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Enter an email address"),
        ("", "Enter an email address"),
        ("   ", "Enter an email address"),
        ("Bob <bob@example.com>", "without a name or angle brackets"),
        ('"Bob Smith" <bob@example.com>', "without a name or angle brackets"),
        ("<bob@example.com>", "without a name or angle brackets"),
        ("bob@example.com>", "without a name or angle brackets"),
        ("Bob bob@example.com", "cannot contain spaces"),
        ("bob@example.com\r\nBcc: eve@example.com", "U+000D"),
        ("bob@example.com\nBcc: eve@example.com", "U+000A"),
        ("bob\x00@example.com", "U+0000"),
        ("bob", "must have an @-sign"),
        ("bob@", "There must be something after the @-sign"),
        ("@example.com", "There must be something before the @-sign"),
        ("bob@@example.com", "invalid characters"),
        ("bob@localhost", "special-use or reserved name"),
        ("bob@site.test", "special-use or reserved name"),
        ("bob@[192.0.2.1]", "bracketed IP address"),
        ('"bob smith"@example.com', "cannot contain spaces"),
        ('"bob"@example.com', "Quoting the part before the @-sign"),
        ("bob@exa_mple.com", "invalid characters"),
        ("bob@☃.example", "The part after the @-sign is invalid"),
        ("x" * 65 + "@example.com", "too long before the @-sign"),
        (
            "x" * 5 + "@" + ".".join(["d" * 63, "d" * 63, "d" * 63, "d" * 57]),
            "too long",
        ),
        ("x" * 5000 + "@example.com", "characters long"),
    ],
)
def test_normalise_email_rejects(value, message):
    with pytest.raises(ValueError) as excinfo:
        normalise_email(value)
    assert message in str(excinfo.value)


def test_normalise_email_message_says_what_to_enter():
    with pytest.raises(ValueError) as excinfo:
        normalise_email("bob@localhost")
    assert "Enter an email address such as name@example.com." in str(excinfo.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bob@example.com", "bob@example.com"),
        ("Bob@EXAMPLE.com", "Bob@example.com"),
        ("bob@bücher.example", "bob@xn--bcher-kva.example"),
        ("bob@münchen.example", "bob@xn--mnchen-3ya.example"),
        ("bob@例え.テスト", "bob@xn--r8jz45g.xn--zckzah"),
        ("ü@bücher.example", "ü@xn--bcher-kva.example"),
        ("用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v"),
    ],
)
def test_ascii_email(value, expected):
    assert ascii_email(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Bob <bob@bücher.example>", "without a name or angle brackets"),
        ("bob@bücher.example\r\nBcc: eve@example.com", "U+000D"),
        ("", "Enter an email address"),
    ],
)
def test_ascii_email_rejects(value, message):
    with pytest.raises(ValueError) as excinfo:
        ascii_email(value)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("function", [normalise_email, ascii_email])
@pytest.mark.parametrize("value", WRONG_TYPES)
def test_email_wrong_type(function, value):
    with pytest.raises(TypeError):
        function(value)


# -- check_header_value -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "max_length", "expected"),
    [
        ("Helpdesk", 50, "Helpdesk"),
        ("  Service Desk  ", 50, "Service Desk"),
        ("Müller & Söhne IT", 50, "Müller & Söhne IT"),
        ("日本語サポート", 50, "日本語サポート"),
        ("👩\u200d💻 Support", 50, "👩\u200d💻 Support"),
        ("Re: [Ticket #42] Printer", 50, "Re: [Ticket #42] Printer"),
        ("x" * 50, 50, "x" * 50),
        (None, 10, ""),
        ("", 10, ""),
        ("   ", 10, ""),
    ],
)
def test_check_header_value_accepts(value, max_length, expected):
    assert check_header_value(value, max_length) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Support\r\nBcc: eve@example.com", "U+000D"),
        ("Support\nBcc: eve@example.com", "U+000A"),
        ("Support\rBcc: eve@example.com", "U+000D"),
        ("Support\tDesk", "U+0009"),
        ("Support\x00", "U+0000"),
        ("\x1b[31mSupport", "U+001B"),
        ("Support\x7f", "U+007F"),
        ("Support\x85Bcc: eve@example.com", "U+0085"),
        ("Support\u2028Bcc: eve@example.com", "U+2028"),
        ("Support\u2029Desk", "U+2029"),
        ("Support\u202eksed", "U+202E"),
        ("\u2066Support\u2069", "U+2066"),
        ("x" * 51, "Enter at most 50 characters. This text has 51."),
        ("x" * 100_000, "This text has 100000"),
    ],
)
def test_check_header_value_rejects(value, message):
    with pytest.raises(ValueError) as excinfo:
        check_header_value(value, 50)
    assert message in str(excinfo.value)


def test_check_header_value_measures_after_strip():
    assert check_header_value("  " + "x" * 10 + "  ", 10) == "x" * 10


@pytest.mark.parametrize(
    ("value", "max_length", "error"),
    [
        (b"Helpdesk", 50, TypeError),
        (42, 50, TypeError),
        ("Helpdesk", "50", TypeError),
        ("Helpdesk", True, TypeError),
        ("Helpdesk", None, TypeError),
        ("Helpdesk", 0, ValueError),
        ("Helpdesk", -1, ValueError),
    ],
)
def test_check_header_value_wrong_arguments(value, max_length, error):
    with pytest.raises(error):
        check_header_value(value, max_length)


# -- security_port_warning ----------------------------------------------------


@pytest.mark.parametrize(
    ("port", "security", "protocol"),
    [
        (465, "ssl", "smtp"),
        (587, "starttls", "smtp"),
        (587, "none", "smtp"),
        (25, "starttls", "smtp"),
        (25, "none", "smtp"),
        (2525, "ssl", "smtp"),
        (2525, "starttls", "smtp"),
        (993, "ssl", "imap"),
        (143, "starttls", "imap"),
        (143, "none", "imap"),
        (995, "ssl", "pop3"),
        (110, "starttls", "pop3"),
        (110, "none", "pop3"),
        (10993, "starttls", "imap"),
        (465, Security.SSL, "smtp"),
    ],
)
def test_security_port_warning_none(port, security, protocol):
    assert security_port_warning(port, security, protocol) is None


@pytest.mark.parametrize(
    ("port", "security", "protocol", "advice"),
    [
        (465, "starttls", "smtp", "Choose SSL/TLS, or use port 587 with STARTTLS."),
        (465, "none", "smtp", "Choose SSL/TLS, or use port 587 with STARTTLS."),
        (465, Security.NONE, "smtp", "not an unencrypted connection"),
        (587, "ssl", "smtp", "Choose STARTTLS, or use port 465 with SSL/TLS."),
        (25, "ssl", "smtp", "Choose STARTTLS, or use port 465 with SSL/TLS."),
        (993, "starttls", "imap", "Choose SSL/TLS, or use port 143 with STARTTLS."),
        (993, "none", "imap", "Choose SSL/TLS, or use port 143 with STARTTLS."),
        (143, "ssl", "imap", "Choose STARTTLS, or use port 993 with SSL/TLS."),
        (995, "starttls", "pop3", "Choose SSL/TLS, or use port 110 with STARTTLS."),
        (995, "none", "pop3", "Choose SSL/TLS, or use port 110 with STARTTLS."),
        (110, "ssl", "pop3", "Choose STARTTLS, or use port 995 with SSL/TLS."),
        (993, "ssl", "smtp", "Port 993 is normally used for IMAP, not SMTP."),
        (995, "ssl", "smtp", "Port 995 is normally used for POP3, not SMTP."),
        (587, "starttls", "imap", "Port 587 is normally used for SMTP, not IMAP."),
        (143, "starttls", "pop3", "Port 143 is normally used for IMAP, not POP3."),
        (25, "none", "pop3", "POP3 normally uses port 995 with SSL/TLS"),
    ],
)
def test_security_port_warning_mismatch(port, security, protocol, advice):
    warning = security_port_warning(port, security, protocol)
    assert warning is not None
    assert advice in warning
    assert f"Port {port}" in warning


@pytest.mark.parametrize(
    ("port", "security", "protocol", "error"),
    [
        (465, "tls", "smtp", ValueError),
        (465, "", "smtp", ValueError),
        (465, "ssl", "http", ValueError),
        (465, "ssl", "SMTP", ValueError),
        ("465", "ssl", "smtp", TypeError),
        (True, "ssl", "smtp", TypeError),
        (None, "ssl", "smtp", TypeError),
    ],
)
def test_security_port_warning_wrong_arguments(port, security, protocol, error):
    with pytest.raises(error):
        security_port_warning(port, security, protocol)


def test_security_port_warning_unknown_security_message():
    with pytest.raises(ValueError) as excinfo:
        security_port_warning(465, "tls", "smtp")
    assert "None, STARTTLS or SSL/TLS" in str(excinfo.value)


# -- normalise_fingerprint ----------------------------------------------------

# SHA-256 of the bytes b"test", in the form the portal stores.
CANONICAL = (
    "9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:"
    "A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08"
)
PLAIN = CANONICAL.replace(":", "")


@pytest.mark.parametrize(
    "value",
    [
        CANONICAL,
        CANONICAL.lower(),
        PLAIN,
        PLAIN.lower(),
        f"  {PLAIN}  ",
        CANONICAL.replace(":", " "),
        CANONICAL.replace(":", "-"),
        " ".join(PLAIN[index : index + 8] for index in range(0, 64, 8)),
        f"SHA256 Fingerprint={CANONICAL}",
        f"sha256 fingerprint = {CANONICAL.lower()}",
        f"SHA-256: {PLAIN}",
        f"sha256:{PLAIN}",
    ],
)
def test_normalise_fingerprint_accepts(value):
    assert normalise_fingerprint(value) == CANONICAL


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Enter the certificate's SHA-256 fingerprint"),
        ("", "Enter the certificate's SHA-256 fingerprint"),
        (PLAIN[:40], "That is a SHA-1 fingerprint"),
        (CANONICAL[:50], "this has 34"),
        (PLAIN[:62], "this has 62"),
        (PLAIN + "00", "this has 66"),
        (PLAIN[:63] + "G", "only the hex digits"),
        ("SHA256:n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=", "only the hex digits"),
        (f"{PLAIN}\r\nX", "only the hex digits"),
        ("０" * 64, "only the hex digits"),
    ],
)
def test_normalise_fingerprint_rejects(value, message):
    with pytest.raises(ValueError) as excinfo:
        normalise_fingerprint(value)
    assert message in str(excinfo.value)
    assert "openssl x509 -noout -fingerprint -sha256" in str(excinfo.value)


@pytest.mark.parametrize("value", WRONG_TYPES)
def test_normalise_fingerprint_wrong_type(value):
    with pytest.raises(TypeError):
        normalise_fingerprint(value)


@pytest.mark.parametrize("value", ["helpdesk@corp.local", "helpdesk@intranet"])
def test_normalise_email_accepts_intranet_domains(value):
    assert normalise_email(value) == value
