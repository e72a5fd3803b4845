"""Default server settings for popular mail providers (the Default settings menu).

The values live in ``data/presets.json`` so that a changed provider setting is
a data fix, not a code change. Each entry names the provider page that
documents it. The file is read and checked once, on first use.
"""

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from .transports.base import Security
from .validation import normalise_host

PRESETS_FILE = "data/presets.json"

_KEY_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_PRESET_FIELDS = {
    "key",
    "label",
    "smtp",
    "smtp_auth_required",
    "imap",
    "pop3",
    "note",
    "source",
}
_SERVER_FIELDS = {"host", "port", "security"}

# Host names on which Microsoft 365 (Exchange Online) serves SMTP, IMAP or POP.
# Outlook.com shares outlook.office365.com for IMAP and POP and also requires
# OAuth 2.0, so its own host names are included too.
_MICROSOFT365_HOSTS = frozenset(
    {
        "smtp.office365.com",
        "smtp-legacy.office365.com",
        "outlook.office365.com",
        "outlook.office.com",
        "smtp-mail.outlook.com",
        "imap-mail.outlook.com",
        "pop-mail.outlook.com",
    }
)
# Each tenant's inbound (direct send) endpoint, such as
# contoso-com.mail.protection.outlook.com.
_MICROSOFT365_SUFFIX = ".mail.protection.outlook.com"


class PresetFileError(ValueError):
    """An invalid presets file. The message names the preset and the field."""


@dataclass(frozen=True)
class PresetServer:
    """One server of a preset, with ``host`` in normalised ASCII form."""

    host: str
    port: int
    security: Security


@dataclass(frozen=True)
class Preset:
    """A provider's documented send and read settings.

    ``imap`` or ``pop3`` is ``None`` when the provider does not offer that
    protocol. ``note`` is shown to the user beside the settings and may be
    empty. ``source`` names the provider pages the values come from.
    """

    key: str
    label: str
    smtp: PresetServer
    smtp_auth_required: bool
    imap: PresetServer | None
    pop3: PresetServer | None
    note: str
    source: str


def all_presets() -> list[Preset]:
    """Return every preset, sorted by label."""
    return list(_load_presets())


def get_preset(key: str) -> Preset | None:
    """Return the preset with this key, or ``None`` if there is none."""
    for preset in _load_presets():
        if preset.key == key:
            return preset
    return None


def is_microsoft365_host(host: str) -> bool:
    """Return whether Microsoft 365 serves SMTP, IMAP or POP on ``host``.

    Case and one trailing dot are ignored. Microsoft 365 no longer accepts
    password sign-in for IMAP and POP, so an Internet account that uses one of
    these hosts should become a Microsoft 365 account.
    """
    if not isinstance(host, str):
        raise TypeError(f"expected a str host, got {type(host).__name__}")

    name = host.strip().lower().removesuffix(".")
    if name in _MICROSOFT365_HOSTS:
        return True
    return name.endswith(_MICROSOFT365_SUFFIX) and len(name) > len(_MICROSOFT365_SUFFIX)


def parse_presets(document: str) -> list[Preset]:
    """Return the presets in a presets file's JSON text, checked and sorted by label.

    Raises ``PresetFileError`` naming the preset key and field at fault.
    """
    try:
        data = json.loads(document)
    except json.JSONDecodeError as exc:
        raise PresetFileError(f"{PRESETS_FILE} is not valid JSON: {exc}") from None

    if not isinstance(data, dict) or set(data) != {"presets"}:
        raise PresetFileError(
            f'{PRESETS_FILE} must be an object with one field, "presets".'
        )
    entries = data["presets"]
    if not isinstance(entries, list) or not entries:
        raise PresetFileError(f'{PRESETS_FILE}: "presets" must be a non-empty list.')

    presets = []
    seen_keys = set()
    for index, entry in enumerate(entries):
        preset = _parse_preset(entry, index)
        if preset.key in seen_keys:
            raise PresetFileError(
                f'{PRESETS_FILE}: preset "{preset.key}" appears more than once. '
                "Each key must be unique."
            )
        seen_keys.add(preset.key)
        presets.append(preset)

    return sorted(presets, key=lambda preset: preset.label.casefold())


@cache
def _load_presets() -> tuple[Preset, ...]:
    path = resources.files(__package__).joinpath(*PRESETS_FILE.split("/"))
    return tuple(parse_presets(path.read_text(encoding="utf-8")))


def _parse_preset(entry: Any, index: int) -> Preset:
    if not isinstance(entry, dict):
        raise PresetFileError(f"{PRESETS_FILE}: preset #{index + 1} is not an object.")

    key = entry.get("key")
    name = f'preset "{key}"' if isinstance(key, str) else f"preset #{index + 1}"
    missing = _PRESET_FIELDS - set(entry)
    unknown = set(entry) - _PRESET_FIELDS
    if missing:
        raise _field_error(name, sorted(missing)[0], "is missing")
    if unknown:
        raise _field_error(name, sorted(unknown)[0], "is not a preset field")

    if not isinstance(key, str) or not key or not set(key) <= _KEY_CHARACTERS:
        raise _field_error(
            name, "key", "must be lower-case letters, digits and hyphens"
        )
    for field in ("label", "source"):
        if not isinstance(entry[field], str) or not entry[field].strip():
            raise _field_error(name, field, "must be a non-empty string")
    if not isinstance(entry["note"], str):
        raise _field_error(name, "note", "must be a string (it may be empty)")
    if not isinstance(entry["smtp_auth_required"], bool):
        raise _field_error(name, "smtp_auth_required", "must be true or false")

    return Preset(
        key=key,
        label=entry["label"],
        smtp=_parse_server(entry["smtp"], name, "smtp"),
        smtp_auth_required=entry["smtp_auth_required"],
        imap=_parse_optional_server(entry["imap"], name, "imap"),
        pop3=_parse_optional_server(entry["pop3"], name, "pop3"),
        note=entry["note"],
        source=entry["source"],
    )


def _parse_optional_server(value: Any, name: str, field: str) -> PresetServer | None:
    if value is None:
        return None
    return _parse_server(value, name, field)


def _parse_server(value: Any, name: str, field: str) -> PresetServer:
    if not isinstance(value, dict):
        raise _field_error(name, field, "must be an object with host, port, security")
    if set(value) != _SERVER_FIELDS:
        raise _field_error(name, field, "must have exactly host, port and security")

    host = value["host"]
    if not isinstance(host, str):
        raise _field_error(name, f"{field}.host", "must be a string")
    try:
        normalised = normalise_host(host)
    except ValueError as exc:
        raise _field_error(name, f"{field}.host", f"is not valid: {exc}") from None
    if normalised != host:
        raise _field_error(
            name, f"{field}.host", f'must be written in normalised form "{normalised}"'
        )

    port = value["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _field_error(name, f"{field}.port", "must be an integer from 1 to 65535")

    try:
        security = Security(value["security"])
    except ValueError:
        choices = ", ".join(f'"{choice.value}"' for choice in Security)
        raise _field_error(
            name, f"{field}.security", f"must be one of {choices}"
        ) from None

    return PresetServer(host=host, port=port, security=security)


def _field_error(name: str, field: str, problem: str) -> PresetFileError:
    return PresetFileError(
        f'{PRESETS_FILE}: {name}, field "{field}" {problem.rstrip(".")}.'
    )
