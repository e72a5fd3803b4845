"""Portal-wide settings stored in the ``setting`` table."""

import logging

from ..extensions import db
from ..models import Setting
from . import audit

log = logging.getLogger(__name__)

ALLOW_PERSONAL_ACCOUNTS = "allow_personal_accounts"

DEFAULTS = {
    ALLOW_PERSONAL_ACCOUNTS: "1",
    "outbound_policy": '{"rules": "", "restrict_global": false}',
}


def get_setting(key: str) -> str:
    row = db.session.get(Setting, key)
    return row.value if row is not None else DEFAULTS[key]


def set_setting(key: str, value: str) -> None:
    """Store a setting; the caller commits."""
    row = db.session.get(Setting, key)
    old = row.value if row is not None else DEFAULTS.get(key)
    if row is None:
        db.session.add(Setting(key=key, value=value))
    else:
        row.value = value
    if old != value:
        audit.record(
            "setting.change",
            object_type="setting",
            object_id=key,
            label=key,
            changes={key: [old, value]},
        )
    log.info("Setting %s changed to %r", key, value)


def personal_accounts_allowed() -> bool:
    return get_setting(ALLOW_PERSONAL_ACCOUNTS) == "1"
