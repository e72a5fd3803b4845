"""Default settings presets: the shipped file, its checks, Microsoft 365 hosts."""

import copy
import dataclasses
import json
from importlib import resources

import pytest

from portal.presets import (
    Preset,
    PresetFileError,
    PresetServer,
    all_presets,
    get_preset,
    is_microsoft365_host,
    parse_presets,
)
from portal.transports.base import Security
from portal.validation import normalise_host, security_port_warning

REQUIRED_KEYS = {
    "gmail",
    "outlook",
    "microsoft365",
    "yahoo",
    "icloud",
    "zoho",
    "fastmail",
    "gmx",
    "aol",
}

PRESETS = all_presets()


def servers(preset: Preset):
    """Yield (protocol, server) for each server the preset has."""
    for protocol in ("smtp", "imap", "pop3"):
        server = getattr(preset, protocol)
        if server is not None:
            yield protocol, server


# -- the shipped file ---------------------------------------------------------


def test_presets_include_required_providers():
    keys = {preset.key for preset in PRESETS}
    assert REQUIRED_KEYS <= keys


def test_preset_keys_are_unique():
    keys = [preset.key for preset in PRESETS]
    assert len(keys) == len(set(keys))


def test_presets_sorted_by_label():
    labels = [preset.label.casefold() for preset in PRESETS]
    assert labels == sorted(labels)


def test_presets_file_matches_loaded_presets():
    text = resources.files("portal").joinpath("data", "presets.json").read_text()
    assert parse_presets(text) == PRESETS


@pytest.mark.parametrize("preset", PRESETS, ids=lambda preset: preset.key)
def test_preset_fields(preset):
    assert isinstance(preset, Preset)
    assert preset.label.strip()
    assert preset.source.strip()
    assert isinstance(preset.note, str)
    assert isinstance(preset.smtp, PresetServer)
    assert isinstance(preset.smtp_auth_required, bool)
    assert preset.imap is not None or preset.pop3 is not None


@pytest.mark.parametrize("preset", PRESETS, ids=lambda preset: preset.key)
def test_preset_servers_valid(preset):
    for protocol, server in servers(preset):
        assert 1 <= server.port <= 65535, protocol
        assert isinstance(server.security, Security), protocol
        assert normalise_host(server.host) == server.host, protocol


@pytest.mark.parametrize("preset", PRESETS, ids=lambda preset: preset.key)
def test_preset_ports_match_security(preset):
    for protocol, server in servers(preset):
        warning = security_port_warning(server.port, server.security, protocol)
        assert warning is None, f"{protocol}: {warning}"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda preset: preset.key)
def test_preset_servers_encrypted(preset):
    for protocol, server in servers(preset):
        assert server.security is not Security.NONE, protocol


# Documented values, so that an accidental edit of the data file shows up here.
@pytest.mark.parametrize(
    ("key", "smtp", "imap", "pop3"),
    [
        (
            "gmail",
            ("smtp.gmail.com", 465, Security.SSL),
            ("imap.gmail.com", 993, Security.SSL),
            ("pop.gmail.com", 995, Security.SSL),
        ),
        (
            "outlook",
            ("smtp-mail.outlook.com", 587, Security.STARTTLS),
            ("outlook.office365.com", 993, Security.SSL),
            ("outlook.office365.com", 995, Security.SSL),
        ),
        (
            "microsoft365",
            ("smtp.office365.com", 587, Security.STARTTLS),
            ("outlook.office365.com", 993, Security.SSL),
            ("outlook.office365.com", 995, Security.SSL),
        ),
        (
            "icloud",
            ("smtp.mail.me.com", 587, Security.STARTTLS),
            ("imap.mail.me.com", 993, Security.SSL),
            None,
        ),
        (
            "fastmail",
            ("smtp.fastmail.com", 465, Security.SSL),
            ("imap.fastmail.com", 993, Security.SSL),
            ("pop.fastmail.com", 995, Security.SSL),
        ),
    ],
)
def test_preset_documented_values(key, smtp, imap, pop3):
    preset = get_preset(key)
    assert preset is not None
    assert preset.smtp == PresetServer(*smtp)
    assert preset.imap == PresetServer(*imap)
    assert preset.pop3 == (PresetServer(*pop3) if pop3 else None)


@pytest.mark.parametrize(
    "key", ["gmail", "yahoo", "icloud", "aol", "gmx", "gmx-net", "fastmail"]
)
def test_preset_note_mentions_app_password(key):
    note = get_preset(key).note.lower()
    assert "app password" in note or "app-specific" in note or "application" in note


@pytest.mark.parametrize("key", ["outlook", "microsoft365"])
def test_preset_note_explains_password_sign_in(key):
    assert "OAuth 2.0" in get_preset(key).note


def test_microsoft365_note_offers_conversion():
    assert "Microsoft 365 account" in get_preset("microsoft365").note


@pytest.mark.parametrize("key", ["outlook", "microsoft365"])
def test_microsoft_presets_use_microsoft365_hosts(key):
    for protocol, server in servers(get_preset(key)):
        assert is_microsoft365_host(server.host), protocol


@pytest.mark.parametrize(
    "preset",
    [preset for preset in PRESETS if preset.key not in ("outlook", "microsoft365")],
    ids=lambda preset: preset.key,
)
def test_other_presets_not_microsoft365(preset):
    for protocol, server in servers(preset):
        assert not is_microsoft365_host(server.host), protocol


# -- get_preset and all_presets -----------------------------------------------


def test_get_preset_returns_listed_preset():
    assert get_preset("gmail") is next(p for p in all_presets() if p.key == "gmail")


@pytest.mark.parametrize("key", ["", "GMAIL", "unknown", " gmail"])
def test_get_preset_unknown(key):
    assert get_preset(key) is None


def test_all_presets_returns_new_list():
    presets = all_presets()
    presets.clear()
    assert all_presets() == PRESETS


def test_all_presets_loads_once():
    assert all_presets()[0] is all_presets()[0]


def test_preset_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("gmail").smtp.port = 25


# -- is_microsoft365_host -----------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("smtp.office365.com", True),
        ("SMTP.Office365.COM", True),
        ("smtp.office365.com.", True),
        ("  outlook.office365.com  ", True),
        ("outlook.office365.com", True),
        ("outlook.office.com", True),
        ("smtp-mail.outlook.com", True),
        ("smtp-legacy.office365.com", True),
        ("contoso-com.mail.protection.outlook.com", True),
        ("CONTOSO-COM.MAIL.PROTECTION.OUTLOOK.COM.", True),
        ("mail.protection.outlook.com", False),
        (".mail.protection.outlook.com", False),
        ("smtp.office365.com..", False),
        ("office365.com", False),
        ("evilsmtp.office365.com", False),
        ("smtp.office365.com.example", False),
        ("smtp.gmail.com", False),
        ("outlook.com", False),
        ("", False),
    ],
)
def test_is_microsoft365_host(host, expected):
    assert is_microsoft365_host(host) is expected


@pytest.mark.parametrize("host", [None, b"smtp.office365.com", 25])
def test_is_microsoft365_host_wrong_type(host):
    with pytest.raises(TypeError):
        is_microsoft365_host(host)


# -- parse_presets checks -----------------------------------------------------

VALID_ENTRY = {
    "key": "example",
    "label": "Example Mail",
    "smtp": {"host": "smtp.example.com", "port": 465, "security": "ssl"},
    "smtp_auth_required": True,
    "imap": {"host": "imap.example.com", "port": 993, "security": "ssl"},
    "pop3": None,
    "note": "",
    "source": "Example Help: Server settings",
}


def document(*entries: dict) -> str:
    return json.dumps({"presets": list(entries or [VALID_ENTRY])})


def changed(path: str, value) -> dict:
    """Return a copy of VALID_ENTRY with one field, such as "smtp.port", set."""
    entry = copy.deepcopy(VALID_ENTRY)
    target = entry
    *parents, field = path.split(".")
    for parent in parents:
        target = target[parent]
    target[field] = value
    return entry


def without(field: str) -> dict:
    entry = copy.deepcopy(VALID_ENTRY)
    del entry[field]
    return entry


def test_parse_presets_valid_document():
    (preset,) = parse_presets(document())
    assert preset.key == "example"
    assert preset.smtp == PresetServer("smtp.example.com", 465, Security.SSL)
    assert preset.pop3 is None


def test_parse_presets_sorts_by_label():
    second = changed("label", "aaa Mail") | {"key": "second"}
    presets = parse_presets(document(VALID_ENTRY, second))
    assert [preset.key for preset in presets] == ["second", "example"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "is not valid JSON"),
        ("[]", 'one field, "presets"'),
        ('{"presets": [], "extra": 1}', 'one field, "presets"'),
        ('{"presets": []}', '"presets" must be a non-empty list'),
        ('{"presets": {}}', '"presets" must be a non-empty list'),
        ('{"presets": [1]}', "preset #1 is not an object"),
    ],
)
def test_parse_presets_rejects_document(text, expected):
    with pytest.raises(PresetFileError) as excinfo:
        parse_presets(text)
    assert expected in str(excinfo.value)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (without("note"), 'preset "example", field "note" is missing'),
        (without("pop3"), 'preset "example", field "pop3" is missing'),
        (without("key"), 'preset #1, field "key" is missing'),
        (changed("smtp_port", 25), 'field "smtp_port" is not a preset field'),
        (changed("key", "Gmail!"), 'field "key" must be lower-case letters'),
        (changed("key", ""), 'field "key" must be lower-case letters'),
        (changed("key", 7), 'field "key" must be lower-case letters'),
        (changed("label", ""), 'field "label" must be a non-empty string'),
        (changed("source", "  "), 'field "source" must be a non-empty string'),
        (changed("note", None), 'field "note" must be a string'),
        (changed("smtp_auth_required", "yes"), 'field "smtp_auth_required"'),
        (changed("smtp", None), 'field "smtp" must be an object'),
        (changed("smtp", "smtp.example.com"), 'field "smtp" must be an object'),
        (changed("imap.tls", True), 'field "imap" must have exactly host'),
        (changed("smtp.port", "465"), 'field "smtp.port" must be an integer'),
        (changed("smtp.port", 0), 'field "smtp.port" must be an integer'),
        (changed("smtp.port", 65536), 'field "smtp.port" must be an integer'),
        (changed("smtp.port", True), 'field "smtp.port" must be an integer'),
        (changed("smtp.port", 465.0), 'field "smtp.port" must be an integer'),
        (changed("imap.security", "tls"), 'field "imap.security" must be one of'),
        (changed("imap.security", "SSL"), 'field "imap.security" must be one of'),
        (changed("smtp.host", 7), 'field "smtp.host" must be a string'),
        (changed("smtp.host", "smtp://x.example"), 'field "smtp.host" is not valid'),
        (changed("smtp.host", "mail.example.com:25"), 'field "smtp.host" is not valid'),
        (changed("smtp.host", ""), 'field "smtp.host" is not valid'),
        (changed("smtp.host", "SMTP.Example.com"), 'form "smtp.example.com"'),
        (changed("imap.host", "bücher.example"), 'form "xn--bcher-kva.example"'),
        (changed("pop3", {"host": "pop.example.com", "port": 995}), 'field "pop3"'),
    ],
)
def test_parse_presets_rejects_entry(entry, expected):
    with pytest.raises(PresetFileError) as excinfo:
        parse_presets(document(entry))
    assert expected in str(excinfo.value)
    assert "presets.json" in str(excinfo.value)


def test_parse_presets_rejects_duplicate_keys():
    with pytest.raises(PresetFileError) as excinfo:
        parse_presets(document(VALID_ENTRY, VALID_ENTRY))
    assert 'preset "example" appears more than once' in str(excinfo.value)


def test_preset_file_error_is_value_error():
    assert issubclass(PresetFileError, ValueError)
