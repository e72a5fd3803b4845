"""Checks for the values people type into account settings.

Each ``normalise_*`` or ``parse_*`` function returns the value in the form the
portal stores, or raises ``ValueError`` whose message can be shown beside the
field as it is: what is wrong with the value and what to enter instead. The
functions suit WTForms validators (which show a ``ValueError``'s message) and
services alike.

``None`` counts as an empty field. Any other value that is not ``str`` (or
``int`` for ports) is a programming error and raises ``TypeError``.
"""

import ipaddress
import re
import unicodedata

import email_validator
import idna
from email_validator import EmailNotValidError, ValidatedEmail, validate_email

from .transports.base import Security

# Active Directory domains often end in .local, so intranet mailboxes such as
# helpdesk@corp.local are valid here; email-validator lists .local among the
# special-use names it rejects, and documents editing that list.
if "local" in email_validator.SPECIAL_USE_DOMAIN_NAMES:
    email_validator.SPECIAL_USE_DOMAIN_NAMES.remove("local")

# RFC 1035 limits: 255 octets on the wire, which is 253 characters written out
# without the trailing dot, and 63 octets a label.
MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63

# RFC 5321 caps a path at 256 octets including the angle brackets, which
# leaves 254 for the address.
MAX_EMAIL_LENGTH = 254

# Input longer than this is rejected before any parsing work is done.
_MAX_INPUT_LENGTH = 1024

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_ASCII_DIGITS = re.compile(r"[0-9]+")
_BRACKETED = re.compile(r"\[([^\[\]]*)\](?::(.*))?")

# Characters that reorder how text is displayed. In a From name they can make
# one sender look like another.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

SECURITY_LABELS = {
    Security.NONE: "None",
    Security.STARTTLS: "STARTTLS",
    Security.SSL: "SSL/TLS",
}

# The security choices as they read inside a sentence.
_SECURITY_PHRASES = {
    Security.NONE: "an unencrypted connection",
    Security.STARTTLS: "STARTTLS",
    Security.SSL: "SSL/TLS",
}

PROTOCOL_LABELS = {"smtp": "SMTP", "imap": "IMAP", "pop3": "POP3"}

# For each protocol: the implicit-TLS port and the ports that use STARTTLS,
# the first of which is the one to suggest.
_STANDARD_PORTS = {
    "smtp": (465, (587, 25)),
    "imap": (993, (143,)),
    "pop3": (995, (110,)),
}

_OTHER_PROTOCOL_PORTS = {
    "smtp": {143: "imap", 993: "imap", 110: "pop3", 995: "pop3"},
    "imap": {25: "smtp", 465: "smtp", 587: "smtp", 110: "pop3", 995: "pop3"},
    "pop3": {25: "smtp", 465: "smtp", 587: "smtp", 143: "imap", 993: "imap"},
}

_USUAL_PAIRINGS = {
    "smtp": "SMTP normally uses port 587 with STARTTLS or port 465 with SSL/TLS.",
    "imap": "IMAP normally uses port 993 with SSL/TLS or port 143 with STARTTLS.",
    "pop3": "POP3 normally uses port 995 with SSL/TLS or port 110 with STARTTLS.",
}

_FINGERPRINT_PREFIX = re.compile(
    r"^(?:sha-?256\s*(?:fingerprint)?\s*[=:]\s*)", re.IGNORECASE
)

_FINGERPRINT_HELP = (
    "Copy it from the certificate viewer of a web browser, where it is called "
    'the SHA-256 fingerprint, or run "openssl x509 -noout -fingerprint -sha256 '
    '-in server.crt".'
)


def normalise_host(value: str | None) -> str:
    """Return a server host name in the ASCII form that connections use.

    Accepts DNS names, internationalised names (converted to IDNA 2008 A-labels
    with UTS #46 mapping, so ``Bücher.example`` becomes
    ``xn--bcher-kva.example``), IPv4 addresses and IPv6 addresses with or
    without brackets. Names come back in lower case and without a trailing dot;
    IPv6 addresses come back compressed and without brackets.
    """
    text = _text_or_empty(value).strip()
    if not text:
        raise ValueError("Enter the server's host name, such as smtp.example.com.")

    if len(text) > _MAX_INPUT_LENGTH:
        raise ValueError(
            f"The host name is {len(text)} characters long, and the maximum is "
            f"{MAX_HOST_LENGTH}. Enter only the server's host name."
        )
    _reject_control_characters(text, "A host name")
    if any(character.isspace() for character in text):
        raise ValueError(
            "A host name cannot contain spaces. Enter one name, such as "
            "smtp.example.com."
        )

    scheme = _SCHEME.match(text)
    if scheme:
        raise ValueError(
            f'Remove "{scheme.group(0)}" and enter only the host name, such as '
            "smtp.example.com."
        )
    if "@" in text:
        raise ValueError(
            "That looks like an email address. Enter the mail server's host "
            "name instead, such as smtp.example.com."
        )
    if any(character in text for character in "/\\?#"):
        raise ValueError(
            "Enter only the host name, without a path or anything after it, "
            "such as smtp.example.com."
        )

    if text.startswith("["):
        return _bracketed_ipv6(text)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        raise ValueError(_port_in_host_message(host, port))
    if ":" in text:
        return _ipv6(text)
    return _host_name(text)


def display_host(ascii_host: str) -> str:
    """Return the Unicode form of a host stored by ``normalise_host``.

    ``xn--`` labels are decoded for display. A label that does not decode
    (stored before validation existed, say) is shown as it is, so this never
    raises for a string.
    """
    if not isinstance(ascii_host, str):
        raise TypeError(f"expected a str host, got {type(ascii_host).__name__}")
    if ":" in ascii_host or _is_ipv4(ascii_host):
        return ascii_host

    labels = []
    for label in ascii_host.split("."):
        if label[:4].lower() == "xn--":
            try:
                label = idna.ulabel(label)
            except (idna.IDNAError, UnicodeError):
                pass
        labels.append(label)
    return ".".join(labels)


def parse_port(value: str | int | None) -> int:
    """Return a TCP port number from 1 to 65535, given as text or an int."""
    if isinstance(value, bool) or not isinstance(value, str | int | None):
        raise TypeError(f"expected str, int or None, got {type(value).__name__}")
    if isinstance(value, int):
        number = value
    else:
        text = (value or "").strip()
        if not text:
            raise ValueError("Enter a port number, such as 587.")
        # int() would also accept "+25", "2_5" and non-ASCII digits.
        if not _ASCII_DIGITS.fullmatch(text):
            raise ValueError(
                f'"{_shorten(text)}" is not a port number. Enter a whole number '
                "from 1 to 65535, such as 587."
            )
        digits = text.lstrip("0") or "0"
        if len(digits) > 5:
            raise ValueError(
                f"Port {_shorten(digits)} is out of range. Enter a number from "
                "1 to 65535."
            )
        number = int(digits)

    if not 1 <= number <= 65535:
        raise ValueError(
            f"Port {number} is out of range. Enter a number from 1 to 65535."
        )
    return number


def normalise_email(value: str | None) -> str:
    """Return an email address normalised for storage and display.

    Internationalised addresses keep their Unicode form (``bob@bücher.example``);
    use ``ascii_email`` for the SMTP envelope. Checks syntax only: no DNS
    lookup is made.
    """
    return _validate_email(value).normalized


def ascii_email(value: str | None) -> str:
    """Return an address with its domain in IDNA form, for the SMTP envelope.

    A non-ASCII local part stays as it is, because it has no ASCII form. Such
    an address can only be sent to servers that offer SMTPUTF8 (RFC 6531).
    """
    validated = _validate_email(value)
    return f"{validated.local_part}@{validated.ascii_domain}"


def check_header_value(value: str | None, max_length: int) -> str:
    """Return a one-line header text, such as a display name or subject, stripped.

    Rejects CR, LF and every other control character, because a line break in
    a header lets the text add headers of its own (header injection). Also
    rejects Unicode line and paragraph separators and bidirectional override
    characters. An empty value is allowed: the caller decides whether the
    field is required.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError("max_length must be an int")
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")

    text = _text_or_empty(value).strip()
    for character in text:
        category = unicodedata.category(character)
        if category in ("Cc", "Zl", "Zp"):
            raise ValueError(
                f"Line breaks and other control characters (here "
                f"{_codepoint(character)}) are not allowed. Enter the text on "
                "one line."
            )
        if character in _BIDI_CONTROLS:
            raise ValueError(
                f"The text contains an invisible direction-control character "
                f"({_codepoint(character)}). Retype it without copying and "
                "pasting."
            )

    if len(text) > max_length:
        raise ValueError(
            f"Enter at most {max_length} characters. This text has {len(text)}."
        )
    return text


def security_port_warning(
    port: int, security: str | Security, protocol: str
) -> str | None:
    """Return a warning when a port and a security choice do not usually match.

    A mismatch is a warning, not an error, because servers can listen anywhere.
    The usual pairings are those of RFC 8314: implicit TLS on 465, 993 and 995,
    and STARTTLS on 587 and 25 (SMTP), 143 (IMAP) and 110 (POP3). ``protocol``
    is ``"smtp"``, ``"imap"`` or ``"pop3"``; a port used by one of the other two
    protocols also gets a warning.
    """
    if protocol not in PROTOCOL_LABELS:
        raise ValueError(f"unknown protocol {protocol!r}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError("port must be an int")
    try:
        security = Security(security)
    except ValueError:
        raise ValueError(
            "Choose the connection security: None, STARTTLS or SSL/TLS."
        ) from None

    other_protocol = _OTHER_PROTOCOL_PORTS[protocol].get(port)
    if other_protocol:
        return (
            f"Port {port} is normally used for {PROTOCOL_LABELS[other_protocol]}, "
            f"not {PROTOCOL_LABELS[protocol]}. {_USUAL_PAIRINGS[protocol]}"
        )

    implicit_port, starttls_ports = _STANDARD_PORTS[protocol]
    if port == implicit_port and security is not Security.SSL:
        return (
            f"Port {port} normally uses SSL/TLS from the first byte, not "
            f"{_SECURITY_PHRASES[security]}. Choose SSL/TLS, or use port "
            f"{starttls_ports[0]} with STARTTLS."
        )
    if port in starttls_ports and security is Security.SSL:
        return (
            f"Port {port} normally starts unencrypted and switches to TLS with "
            f"STARTTLS. Choose STARTTLS, or use port {implicit_port} with SSL/TLS."
        )
    return None


def normalise_fingerprint(value: str | None) -> str:
    """Return a SHA-256 certificate fingerprint as upper-case pairs and colons.

    Accepts 64 hex digits in any case, with or without colons, spaces or
    hyphens, and with the ``SHA256 Fingerprint=`` prefix that OpenSSL prints.
    """
    text = _text_or_empty(value).strip()
    if not text:
        raise ValueError(
            f"Enter the certificate's SHA-256 fingerprint. {_FINGERPRINT_HELP}"
        )

    text = _FINGERPRINT_PREFIX.sub("", text)
    digits = re.sub(r"[\s:-]", "", text)
    if not re.fullmatch(r"[0-9A-Fa-f]*", digits):
        raise ValueError(
            "A fingerprint contains only the hex digits 0-9 and A-F, optionally "
            f"separated by colons. {_FINGERPRINT_HELP}"
        )
    if len(digits) == 40:
        raise ValueError(
            "That is a SHA-1 fingerprint (40 hex digits). Enter the SHA-256 "
            f"fingerprint instead, which has 64. {_FINGERPRINT_HELP}"
        )
    if len(digits) != 64:
        raise ValueError(
            f"A SHA-256 fingerprint has 64 hex digits, but this has {len(digits)}. "
            f"{_FINGERPRINT_HELP}"
        )

    digits = digits.upper()
    return ":".join(digits[index : index + 2] for index in range(0, 64, 2))


# -- host names ---------------------------------------------------------------


def _host_name(text: str) -> str:
    # UTS #46 mapping lower-cases the name, folds full-width forms and turns
    # ideographic full stops into dots before the labels are checked.
    try:
        mapped = idna.uts46_remap(text, std3_rules=True, transitional=False)
    except idna.IDNAError:
        raise ValueError(_bad_character_message(text)) from None

    if mapped.endswith("."):
        mapped = mapped[:-1]
    if _ASCII_DIGITS.fullmatch(mapped.rpartition(".")[2]):
        return _ipv4(mapped)
    if not mapped:
        raise ValueError("Enter the server's host name, such as smtp.example.com.")

    labels = [_ascii_label(label) for label in mapped.split(".")]
    host = ".".join(labels).lower()
    if len(host) > MAX_HOST_LENGTH:
        raise ValueError(
            f"The host name is {len(host)} characters long in its ASCII form, "
            f"and the maximum is {MAX_HOST_LENGTH}. Check it for mistakes."
        )
    return host


def _ascii_label(label: str) -> str:
    if not label:
        raise ValueError(
            "The host name starts with a dot, ends with two dots or contains two "
            "dots in a row. Remove the extra dot."
        )
    if label.startswith("-") or label.endswith("-"):
        raise ValueError(
            "A part of a host name cannot start or end with a hyphen: "
            f'"{_shorten(label)}".'
        )

    try:
        return idna.alabel(label).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        pass

    if _encoded_length(label) > MAX_LABEL_LENGTH:
        raise ValueError(
            f'The part "{_shorten(label)}" is too long. Each part of a host name '
            f"can have at most {MAX_LABEL_LENGTH} characters in its ASCII form."
        )
    raise ValueError(
        f'The part "{_shorten(label)}" is not a valid internationalised host '
        "name. Check it for typing mistakes, or enter its xn-- form."
    )


def _encoded_length(label: str) -> int:
    if label.isascii():
        return len(label)
    return len("xn--") + len(label.encode("punycode"))


def _bad_character_message(text: str) -> str:
    for character in dict.fromkeys(text):
        try:
            idna.uts46_remap(character, std3_rules=True, transitional=False)
        except idna.IDNAError:
            return (
                f'A host name cannot contain "{character}" '
                f"({_codepoint(character)}). Use letters, digits and hyphens, "
                "with dots between the parts, such as mail.example.com."
            )
    return (
        "The host name contains a character that host names cannot use. Use "
        "letters, digits and hyphens, with dots between the parts."
    )


# -- IP addresses -------------------------------------------------------------


def _ipv4(text: str) -> str:
    # ipaddress accepts only four decimal parts without leading zeros, unlike
    # inet_aton, which would read "127.1" or "010.0.0.1" as other addresses.
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(
            f'"{_shorten(text)}" is not a valid IPv4 address. Enter four numbers '
            "from 0 to 255 separated by dots, such as 192.0.2.10, or a host name."
        ) from None


def _ipv6(text: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ValueError(
            f'"{_shorten(text)}" is not a valid IPv6 address. Check it for typing '
            "mistakes, and enter the port in the Port field, not here."
        ) from None


def _bracketed_ipv6(text: str) -> str:
    match = _BRACKETED.fullmatch(text)
    if match is None:
        raise ValueError(
            "Brackets are only used around an IPv6 address, such as "
            "[2001:db8::25]. Enter a host name or an IP address."
        )
    address, port = match.groups()
    if port is not None:
        raise ValueError(_port_in_host_message(address, port))
    return _ipv6(address)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _port_in_host_message(host: str, port: str) -> str:
    if _ASCII_DIGITS.fullmatch(port):
        return (
            f"Enter only the host name or address here, without :{_shorten(port)}. "
            "Put the port number in the Port field."
        )
    return (
        f'A host name cannot contain ":" ("{_shorten(host)}:{_shorten(port)}"). '
        "Enter only the host name, and the port number in the Port field."
    )


# -- email addresses ----------------------------------------------------------


def _validate_email(value: str | None) -> ValidatedEmail:
    text = _text_or_empty(value).strip()
    if not text:
        raise ValueError("Enter an email address, such as name@example.com.")
    if len(text) > _MAX_INPUT_LENGTH:
        raise ValueError(
            f"The email address is {len(text)} characters long, and the maximum "
            f"is {MAX_EMAIL_LENGTH}."
        )
    _reject_control_characters(text, "An email address")
    if "<" in text or ">" in text:
        raise ValueError(
            "Enter only the email address, such as bob@example.com, without a "
            "name or angle brackets."
        )
    if any(character.isspace() for character in text):
        raise ValueError(
            "An email address cannot contain spaces. Enter only the address, "
            "such as name@example.com."
        )

    # check_deliverability=False: syntax only, never a DNS query. email-validator
    # 2.4.0 checks the 254-octet limit on the typed, normalised and IDNA forms,
    # and strict=True adds the limit of 64 on the part before the @.
    # globally_deliverable=False accepts domains without a dot, such as an
    # intranet's "helpdesk@intranet".
    try:
        return validate_email(
            text,
            check_deliverability=False,
            allow_smtputf8=True,
            globally_deliverable=False,
            strict=True,
        )
    except EmailNotValidError as exc:
        raise ValueError(
            f"{exc} Enter an email address such as name@example.com."
        ) from None


# -- shared helpers -----------------------------------------------------------


def _text_or_empty(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"expected str or None, got {type(value).__name__}")
    return value


def _reject_control_characters(text: str, subject: str) -> None:
    for character in text:
        if unicodedata.category(character) == "Cc":
            raise ValueError(
                f"{subject} cannot contain line breaks or other control "
                f"characters (here {_codepoint(character)}). Retype the value."
            )


def _codepoint(character: str) -> str:
    return f"U+{ord(character):04X}"


def _shorten(text: str, limit: int = 40) -> str:
    """Return text cut to ``limit`` characters, so a message stays readable."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"
