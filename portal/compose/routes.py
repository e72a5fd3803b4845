import logging

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import func, select
from wtforms.fields.choices import SelectChoice

from ..extensions import db
from ..models import EmailAccount, OutboxMessage
from ..services import access, delivery, preferences, sending
from ..templating import render_page_or_fragment
from . import bp
from .forms import ComposeForm

log = logging.getLogger(__name__)

LOG_LIMIT = 100
STATUSES = ("queued", "sending", "sent", "failed")


@bp.route("/compose", methods=["GET", "POST"])
@login_required
def compose_message():
    usable, default_id = preferences.sending_accounts(current_user.id)
    form = ComposeForm()
    form.account_id.choices = [
        SelectChoice(
            str(account.id), f"{account.friendly_name} <{account.email_address}>"
        )
        for account in usable
    ]
    if request.method == "GET" and default_id:
        form.account_id.data = str(default_id)

    if form.validate_on_submit():
        raw_id = form.account_id.data or ""
        if not raw_id.isdigit():
            form.account_id.errors.append("Choose the account to send from.")
        else:
            draft = sending.Draft(
                to=sending.split_addresses(form.to.data or ""),
                cc=sending.split_addresses(form.cc.data or ""),
                bcc=sending.split_addresses(form.bcc.data or ""),
                subject=form.subject.data or "",
                body=form.body.data or "",
            )
            try:
                row = sending.queue_message(
                    access.StaffPrincipal(current_user.id), int(raw_id), draft
                )
            except sending.SendNotAllowed:
                log.warning(
                    "Staff member %s posted account %s, which they may not use",
                    current_user.id,
                    raw_id,
                )
                abort(403, description="You may not send from that account.")
            except sending.MessageInvalid as error:
                for name, message in error.errors.items():
                    form[name].errors.append(message)
            else:
                db.session.commit()
                flash(
                    f"Your message “{row.subject or '(no subject)'}” is queued for delivery.",
                    "success",
                )
                return redirect(url_for("compose.list_deliveries"))

    return render_template(
        "compose/compose_message.html",
        form=form,
        has_accounts=bool(usable),
        breadcrumbs=[("Compose", None)],
    )


def _visible_messages():
    """Administrators see every message; staff see the ones they queued."""
    query = select(OutboxMessage)
    if not current_user.is_administrator:
        query = query.where(OutboxMessage.staff_id == current_user.id)
    return query


@bp.get("/deliveries")
@login_required
def list_deliveries():
    status = request.args.get("status", "")
    query = _visible_messages()
    if status in STATUSES:
        query = query.where(OutboxMessage.status == status)
    rows = db.session.execute(
        query.add_columns(EmailAccount.friendly_name)
        .outerjoin(EmailAccount, EmailAccount.id == OutboxMessage.account_id)
        .order_by(OutboxMessage.id.desc())
        .limit(LOG_LIMIT)
    ).all()
    pending = db.session.scalar(
        _visible_messages()
        .with_only_columns(func.count(OutboxMessage.id))
        .where(OutboxMessage.status.in_(("queued", "sending")))
    )
    return render_page_or_fragment(
        "compose/list_deliveries.html",
        "compose/_deliveries.html",
        rows=rows,
        pending=pending,
        status=status,
        statuses=STATUSES,
        limit=LOG_LIMIT,
        breadcrumbs=[("Delivery log", None)],
    )


@bp.post("/deliveries/<int:message_id>/retry")
@login_required
def retry_delivery(message_id: int):
    row = db.session.get(OutboxMessage, message_id)
    if row is None or not (
        current_user.is_administrator or row.staff_id == current_user.id
    ):
        abort(404)
    if row.status != "failed":
        abort(409, description="Only failed messages can be retried.")
    delivery.retry_message(row)
    db.session.commit()
    log.info("Message %s queued again by staff member %s", row.id, current_user.id)
    flash("The message is queued again.", "success")
    return redirect(
        url_for("compose.list_deliveries", status=request.args.get("status", ""))
    )
