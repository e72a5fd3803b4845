"""Administration of skillgroups and application security roles, and their members.

Each page exists once per kind of group: ``list_skillgroups`` and
``list_roles``, ``skillgroup_members`` and ``role_members``, and so on. The
routes below only choose the kind, and the shared views after them do the work.
"""

import logging
from dataclasses import dataclass

from flask import abort, flash, redirect, render_template, request, url_for
from flask_htmx import make_response
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from wtforms import BooleanField, StringField

from ..auth.session import admin_required
from ..extensions import db
from ..models import Role, Skillgroup, StaffMember
from ..services import people
from ..services.people import Group, GroupError
from ..templating import wants_fragment
from . import bp

log = logging.getLogger(__name__)


# -- forms ---------------------------------------------------------------------


class GroupForm(FlaskForm):
    """The name of a skillgroup or role, checked by the service that applies it."""

    name = StringField("Name")


class RoleForm(GroupForm):
    grants_administration = BooleanField("Grants administration")


# -- the two kinds of group ------------------------------------------------------


@dataclass(frozen=True)
class GroupKind:
    """The model, names and form of skillgroups or of roles."""

    model: type[Group]
    key: str  # "skillgroup" or "role", as in the endpoint names
    plural_key: str
    title: str  # heading of the list page
    form_class: type[GroupForm]

    def url(self, endpoint: str, **values) -> str:
        """Return the URL of ``endpoint``, written with ``{kind}`` or ``{kinds}``
        in place of the kind, such as ``"edit_{kind}"`` or ``"list_{kinds}"``."""
        name = endpoint.format(kind=self.key, kinds=self.plural_key)
        return url_for(f"admin.{name}", **values)

    def group_url(self, endpoint: str, group: Group, **values) -> str:
        """Return the URL of ``endpoint`` for one group, as ``url`` does."""
        return self.url(endpoint, **{f"{self.key}_id": group.id}, **values)

    def template(self, page: str) -> str:
        return f"admin/{page.format(kind=self.key, kinds=self.plural_key)}.html"

    def breadcrumbs(self, *extra: tuple[str, str | None]) -> list:
        """Return the trail to the list page, and on to ``extra`` if given."""
        if not extra:
            return [("Administration", None), (self.title, None)]
        return [
            ("Administration", None),
            (self.title, self.url("list_{kinds}")),
            *extra,
        ]


SKILLGROUPS = GroupKind(
    model=Skillgroup,
    key="skillgroup",
    plural_key="skillgroups",
    title="Skillgroups",
    form_class=GroupForm,
)
ROLES = GroupKind(
    model=Role,
    key="role",
    plural_key="roles",
    title="Application security roles",
    form_class=RoleForm,
)


# -- routes --------------------------------------------------------------------


@bp.get("/skillgroups")
@admin_required
def list_skillgroups():
    return _list_groups(SKILLGROUPS)


@bp.route("/skillgroups/new", methods=["GET", "POST"])
@admin_required
def create_skillgroup():
    return _create_group(SKILLGROUPS)


@bp.get("/skillgroups/<int:skillgroup_id>")
@admin_required
def skillgroup_members(skillgroup_id: int):
    return _show_members(SKILLGROUPS, skillgroup_id)


@bp.route("/skillgroups/<int:skillgroup_id>/edit", methods=["GET", "POST"])
@admin_required
def edit_skillgroup(skillgroup_id: int):
    return _edit_group(SKILLGROUPS, skillgroup_id)


@bp.get("/skillgroups/<int:skillgroup_id>/name")
@admin_required
def skillgroup_name(skillgroup_id: int):
    return _show_name(SKILLGROUPS, skillgroup_id)


@bp.route("/skillgroups/<int:skillgroup_id>/delete", methods=["GET", "POST"])
@admin_required
def delete_skillgroup(skillgroup_id: int):
    return _delete_group(SKILLGROUPS, skillgroup_id)


@bp.post("/skillgroups/<int:skillgroup_id>/members")
@admin_required
def add_skillgroup_member(skillgroup_id: int):
    return _add_member(SKILLGROUPS, skillgroup_id)


@bp.post("/skillgroups/<int:skillgroup_id>/members/<int:staff_id>/remove")
@admin_required
def remove_skillgroup_member(skillgroup_id: int, staff_id: int):
    return _remove_member(SKILLGROUPS, skillgroup_id, staff_id)


@bp.get("/roles")
@admin_required
def list_roles():
    return _list_groups(ROLES)


@bp.route("/roles/new", methods=["GET", "POST"])
@admin_required
def create_role():
    return _create_group(ROLES)


@bp.get("/roles/<int:role_id>")
@admin_required
def role_members(role_id: int):
    return _show_members(ROLES, role_id)


@bp.route("/roles/<int:role_id>/edit", methods=["GET", "POST"])
@admin_required
def edit_role(role_id: int):
    return _edit_group(ROLES, role_id)


@bp.get("/roles/<int:role_id>/name")
@admin_required
def role_name(role_id: int):
    return _show_name(ROLES, role_id)


@bp.route("/roles/<int:role_id>/delete", methods=["GET", "POST"])
@admin_required
def delete_role(role_id: int):
    return _delete_group(ROLES, role_id)


@bp.post("/roles/<int:role_id>/members")
@admin_required
def add_role_member(role_id: int):
    return _add_member(ROLES, role_id)


@bp.post("/roles/<int:role_id>/members/<int:staff_id>/remove")
@admin_required
def remove_role_member(role_id: int, staff_id: int):
    return _remove_member(ROLES, role_id, staff_id)


# -- shared views ----------------------------------------------------------------


def _list_groups(kind: GroupKind):
    rows = people.list_with_member_counts(kind.model)
    return render_template(
        kind.template("list_{kinds}"),
        group_kind=kind,
        rows=rows,
        breadcrumbs=kind.breadcrumbs(),
    )


def _create_group(kind: GroupKind):
    form = kind.form_class()
    if form.validate_on_submit():
        grants = isinstance(form, RoleForm) and form.grants_administration.data
        try:
            group = people.create_group(
                kind.model, form.name.data, grants_administration=grants
            )
        except GroupError as error:
            form.name.errors.append(str(error))
        else:
            if _commit_with_name(form, kind):
                log.info(
                    "Staff member %s created %s %s %r",
                    current_user.id,
                    kind.key,
                    group.id,
                    group.name,
                )
                flash(f"Created {group.name}. Add its members below.", "success")
                return redirect(kind.group_url("{kind}_members", group))

    return render_template(
        kind.template("create_{kind}"),
        group_kind=kind,
        form=form,
        breadcrumbs=kind.breadcrumbs((f"New {kind.key}", None)),
    )


def _edit_group(kind: GroupKind, group_id: int):
    """Rename a group, and for a role set Grants administration.

    The inline editor in the list sends only the name, as an htmx request,
    and gets the name cell back. The edit page works without JavaScript. It
    sends every field and redirects to the list.
    """
    group = db.get_or_404(kind.model, group_id)
    inline = wants_fragment()
    form_class = GroupForm if inline else kind.form_class
    form = form_class(
        prefix=f"{kind.key}-{group.id}",
        obj=group if request.method == "GET" else None,
    )
    if not form.validate_on_submit():
        return _render_edit(kind, group, form, inline)

    old_name = group.name
    if not _apply_edit(form, group):
        db.session.rollback()  # undo a rename applied before another field failed
        return _render_edit(kind, group, form, inline)
    if not _commit_with_name(form, kind):
        return _render_edit(kind, group, form, inline)
    log.info(
        "Staff member %s saved %s %s as %r (was %r)%s",
        current_user.id,
        kind.key,
        group.id,
        group.name,
        old_name,
        _flag_note(group),
    )

    if inline:
        return render_template("admin/_name.html", group_kind=kind, group=group)
    flash(f"Saved {group.name}.", "success")
    return redirect(kind.url("list_{kinds}"))


def _apply_edit(form: GroupForm, group: Group) -> bool:
    """Apply the form to ``group``, putting each rejection beside its field."""
    applied = True
    try:
        people.rename_group(group, form.name.data)
    except GroupError as error:
        form.name.errors.append(str(error))
        applied = False

    if isinstance(form, RoleForm):
        try:
            people.set_grants_administration(
                group, form.grants_administration.data, _acting()
            )
        except GroupError as error:
            form.grants_administration.errors.append(str(error))
            applied = False
    return applied


def _render_edit(kind: GroupKind, group: Group, form: GroupForm, inline: bool):
    if inline:
        return render_template(
            "admin/_name.html", group_kind=kind, group=group, form=form
        )
    return render_template(
        kind.template("edit_{kind}"),
        group_kind=kind,
        group=group,
        form=form,
        breadcrumbs=kind.breadcrumbs((group.name, None)),
    )


def _show_name(kind: GroupKind, group_id: int):
    """Return the name cell of the list, for Cancel in the inline editor."""
    group = db.get_or_404(kind.model, group_id)
    if not wants_fragment():
        return redirect(kind.url("list_{kinds}"))
    return render_template("admin/_name.html", group_kind=kind, group=group)


def _delete_group(kind: GroupKind, group_id: int):
    group = db.get_or_404(kind.model, group_id)
    if request.method == "GET":
        try:
            people.check_deletion(group, _acting(), lock=False)
            rejection = None
        except GroupError as error:
            rejection = str(error)
        return _render_delete(kind, group, rejection)

    name = group.name
    try:
        people.delete_group(group, _acting())
    except GroupError as error:
        db.session.rollback()
        log.info(
            "Staff member %s may not delete %s %s: %s",
            current_user.id,
            kind.key,
            group_id,
            error,
        )
        if wants_fragment():
            return _message_fragment(str(error), "#list-message")
        return _render_delete(kind, group, str(error)), 409
    db.session.commit()
    log.info(
        "Staff member %s deleted %s %s %r", current_user.id, kind.key, group_id, name
    )

    if wants_fragment():
        return ""  # htmx removes the row
    flash(f"Deleted {name}.", "success")
    return redirect(kind.url("list_{kinds}"))


def _render_delete(kind: GroupKind, group: Group, rejection: str | None):
    return render_template(
        kind.template("delete_{kind}"),
        group_kind=kind,
        group=group,
        rejection=rejection,
        member_count=len(people.list_members(group)),
        grant_count=people.count_account_grants(group),
        breadcrumbs=kind.breadcrumbs((group.name, None)),
    )


def _show_members(kind: GroupKind, group_id: int):
    """Show the members page, or only the staff search results to htmx.

    The search box sits in a GET form that submits to this page, so the
    search also works without JavaScript.
    """
    group = db.get_or_404(kind.model, group_id)
    query = request.args.get("q", "").strip()[:200]
    results = people.search_staff(group, query)

    if wants_fragment():
        page = render_template(
            "admin/_staff_results.html",
            group_kind=kind,
            group=group,
            query=query,
            results=results,
            max_results=people.MAX_SEARCH_RESULTS,
        )
    else:
        page = render_template(
            kind.template("{kind}_members"),
            group_kind=kind,
            group=group,
            members=people.list_members(group),
            query=query,
            results=results,
            max_results=people.MAX_SEARCH_RESULTS,
            breadcrumbs=kind.breadcrumbs((group.name, None)),
        )
    response = make_response(page)
    response.vary.add("HX-Request")  # one URL, two bodies
    return response


def _add_member(kind: GroupKind, group_id: int):
    group = db.get_or_404(kind.model, group_id)
    staff_id = request.form.get("staff_id", type=int)
    if staff_id is None:
        abort(400, "Choose a staff member to add.")
    staff = db.get_or_404(StaffMember, staff_id)
    query = request.form.get("q", "").strip()[:200]

    added = people.add_member(group, staff)
    db.session.commit()
    if added:
        log.info(
            "Staff member %s added staff member %s to %s %s",
            current_user.id,
            staff.id,
            kind.key,
            group.id,
        )

    if wants_fragment():
        # The members panel, and the search result marked as a member.
        members = render_template(
            "admin/_members.html",
            group_kind=kind,
            group=group,
            members=people.list_members(group),
        )
        result = render_template(
            "admin/_candidate.html",
            group_kind=kind,
            group=group,
            staff=staff,
            is_member=True,
            query=query,
            oob=True,
        )
        return members + result

    name = staff.display_name or staff.username
    if added:
        flash(f"Added {name} to {group.name}.", "success")
    else:
        flash(f"{name} is already a member of {group.name}.", "info")
    return redirect(kind.group_url("{kind}_members", group, q=query or None))


def _remove_member(kind: GroupKind, group_id: int, staff_id: int):
    group = db.get_or_404(kind.model, group_id)
    staff = db.get_or_404(StaffMember, staff_id)

    try:
        removed = people.remove_member(group, staff, _acting())
    except GroupError as error:
        db.session.rollback()
        log.info(
            "Staff member %s may not remove staff member %s from %s %s: %s",
            current_user.id,
            staff_id,
            kind.key,
            group_id,
            error,
        )
        if wants_fragment():
            return _message_fragment(str(error), "#members-message")
        flash(str(error), "error")
        return redirect(kind.group_url("{kind}_members", group))
    db.session.commit()
    if removed:
        log.info(
            "Staff member %s removed staff member %s from %s %s",
            current_user.id,
            staff_id,
            kind.key,
            group_id,
        )

    if wants_fragment():
        # An empty body replaces the removed row, and the count updates out of band.
        return render_template(
            "admin/_member_count.html", count=len(group.members), oob=True
        )
    name = staff.display_name or staff.username
    flash(f"Removed {name} from {group.name}.", "success")
    return redirect(kind.group_url("{kind}_members", group))


# -- helpers -------------------------------------------------------------------


def _acting() -> StaffMember:
    """Return the signed-in administrator as a model instance."""
    return current_user._get_current_object()


def _commit_with_name(form: GroupForm, kind: GroupKind) -> bool:
    """Commit, or put a name error beside the field if another request took
    the same name first (the database rejects the duplicate)."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        log.warning("Duplicate %s name %r rejected on commit", kind.key, form.name.data)
        form.name.errors.append(
            f"Another {kind.key} named {form.name.data!r} was saved a moment ago. "
            "Choose another name."
        )
        return False
    return True


def _flag_note(group: Group) -> str:
    if isinstance(group, Role):
        return f", grants administration: {group.grants_administration}"
    return ""


def _message_fragment(message: str, target: str):
    """Return an error message that htmx shows in ``target`` instead of the
    element the request would have swapped."""
    return make_response(
        render_template("admin/_rejection.html", message=message),
        retarget=target,
        reswap="innerHTML",
    )
