"""The outbound connection policy page."""

from flask import flash, redirect, render_template, request, url_for

from ..auth.session import admin_required
from ..extensions import db
from ..services import outbound
from ..transports.destinations import ALWAYS_REFUSED
from . import bp


@bp.route("/settings/outbound-connections", methods=["GET", "POST"])
@admin_required
def outbound_policy():
    policy = outbound.load_policy()
    text, restrict_global, errors = policy.text, policy.restrict_global, []
    if request.method == "POST":
        text = request.form.get("rules", "")[:20_000]
        restrict_global = request.form.get("restrict_global") == "1"
        errors = outbound.save_policy(text, restrict_global)
        if not errors:
            db.session.commit()
            flash("Saved the outbound connection policy.", "success")
            return redirect(url_for("admin.outbound_policy"))

    return render_template(
        "admin/outbound_policy.html",
        text=text,
        restrict_global=restrict_global,
        errors=errors,
        always_refused=ALWAYS_REFUSED,
        breadcrumbs=[
            ("Administration", None),
            ("System administration", None),
            ("Outbound connections", None),
        ],
    )
