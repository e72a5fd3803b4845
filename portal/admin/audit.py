"""The audit page: a filterable, read-only list of recorded actions."""

from datetime import UTC, datetime, time, timedelta

from flask import request
from sqlalchemy import func, or_, select

from ..auth.session import admin_required
from ..extensions import db
from ..models import AuditEvent
from ..templating import render_page_or_fragment
from . import bp

PAGE_SIZE = 50
OUTCOMES = ("success", "failure", "denied")


def _parse_date(value: str):
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        return None


@bp.get("/audit")
@admin_required
def list_audit_events():
    args = request.args
    filters = {
        "q": args.get("q", "").strip()[:100],
        "action": args.get("action", ""),
        "object_type": args.get("object_type", ""),
        "outcome": args.get("outcome", ""),
        "since": args.get("since", ""),
        "until": args.get("until", ""),
    }
    before = args.get("before", "")

    query = select(AuditEvent)
    if filters["q"]:
        pattern = f"%{filters['q'].lower()}%"
        query = query.where(
            or_(
                func.lower(AuditEvent.username).like(pattern),
                func.lower(AuditEvent.object_label).like(pattern),
                func.lower(AuditEvent.object_id).like(pattern),
                func.lower(AuditEvent.remote_addr).like(pattern),
                func.lower(AuditEvent.detail).like(pattern),
            )
        )
    for name in ("action", "object_type"):
        if filters[name]:
            query = query.where(getattr(AuditEvent, name) == filters[name])
    if filters["outcome"] in OUTCOMES:
        query = query.where(AuditEvent.outcome == filters["outcome"])
    errors = {}
    for name, shift in (("since", timedelta()), ("until", timedelta(days=1))):
        if filters[name]:
            day = _parse_date(filters[name])
            if day is None:
                errors[name] = "Enter a date as YYYY-MM-DD."
                continue
            moment = datetime.combine(day, time(), tzinfo=UTC) + shift
            condition = (
                AuditEvent.at >= moment if name == "since" else AuditEvent.at < moment
            )
            query = query.where(condition)
    if before.isdigit():
        query = query.where(AuditEvent.id < int(before))

    events = list(
        db.session.scalars(query.order_by(AuditEvent.id.desc()).limit(PAGE_SIZE + 1))
    )
    older = events[PAGE_SIZE - 1].id if len(events) > PAGE_SIZE else None
    actions = list(
        db.session.scalars(
            select(AuditEvent.action).distinct().order_by(AuditEvent.action)
        )
    )
    object_types = list(
        db.session.scalars(
            select(AuditEvent.object_type)
            .distinct()
            .where(AuditEvent.object_type != "")
            .order_by(AuditEvent.object_type)
        )
    )
    return render_page_or_fragment(
        "admin/list_audit_events.html",
        "admin/_audit_events.html",
        events=events[:PAGE_SIZE],
        older=older,
        filters=filters,
        errors=errors,
        actions=actions,
        object_types=object_types,
        outcomes=OUTCOMES,
        breadcrumbs=[
            ("Administration", None),
            ("System administration", None),
            ("Audit trail", None),
        ],
    )
