"""The audit trail: who did what, when, from where, to which object, with
which outcome.

``record`` adds an ``AuditEvent`` to the current session, so it is committed
with the change it describes. Secret fields are recorded as changed, never
with their values: pass their names in ``secret_fields``.
"""

import logging
from collections.abc import Iterable

from flask import has_request_context, request
from flask_login import current_user

from ..extensions import db
from ..models import AuditEvent

log = logging.getLogger("portal.audit")

SUCCESS = "success"
FAILURE = "failure"
DENIED = "denied"

SECRET_MARK = "(changed)"  # noqa: S105 (a label, not a password)


def diff(before: dict, after: dict, secret_fields: Iterable[str] = ()) -> dict:
    """The fields whose values differ, as {field: [old, new]}; secrets as changed only."""
    secrets = set(secret_fields)
    changes = {}
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name in secrets:
            changes[name] = SECRET_MARK
        else:
            changes[name] = [old, new]
    return changes


def record(
    action: str,
    *,
    object_type: str = "",
    object_id: object = "",
    label: str = "",
    changes: dict | None = None,
    outcome: str = SUCCESS,
    detail: str = "",
    staff=None,
) -> AuditEvent:
    """Add an audit event for the signed-in staff member (or ``staff``)."""
    actor = staff
    if actor is None and has_request_context() and current_user.is_authenticated:
        actor = current_user
    event = AuditEvent(
        staff_id=actor.id if actor is not None else None,
        username=actor.username if actor is not None else "",
        remote_addr=(request.remote_addr or "")[:45] if has_request_context() else "",
        action=action,
        object_type=object_type,
        object_id=str(object_id)[:50],
        object_label=label[:200],
        changes=changes or {},
        outcome=outcome,
        detail=detail[:1000],
    )
    db.session.add(event)
    log.info(
        "%s %s %s:%s by %s from %s: %s",
        action,
        outcome,
        object_type,
        object_id,
        event.username or "-",
        event.remote_addr or "-",
        sorted(event.changes),
    )
    return event
