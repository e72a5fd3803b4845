"""Importing staff members, skillgroups and roles from a CSV file.

The file has a header row naming its columns: ``username`` is required, and
``display_name``, ``email``, ``skillgroups``, ``roles`` and ``password`` are
optional. ``skillgroups`` and ``roles`` list names separated by ``;``.

The import adds and never removes. It creates missing staff members and
groups, replaces the display name and email of existing staff when the file
gives one, and adds the listed memberships while keeping all others.
Existing staff keep their password. Running the same file twice changes
nothing the second time.
"""

import csv
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from .. import validation
from ..extensions import db
from ..models import Role, Skillgroup, StaffMember
from ..staff import StaffError, create_staff
from . import people

log = logging.getLogger(__name__)

COLUMNS = ("username", "display_name", "email", "skillgroups", "roles", "password")
REQUIRED_COLUMNS = ("username",)
MAX_USERNAME_LENGTH = 64  # the length of StaffMember.username
MAX_DISPLAY_NAME_LENGTH = 200  # the length of StaffMember.display_name


class CsvFileError(ValueError):
    """The file as a whole cannot be imported, so nothing was changed."""


@dataclass
class Tally:
    created: int = 0
    updated: int = 0
    skipped: int = 0  # already up to date

    def __str__(self) -> str:
        return f"{self.created} created, {self.updated} updated, {self.skipped} skipped"


@dataclass
class RejectedRow:
    line: int  # where the row starts in the file, counting from 1
    reason: str


@dataclass
class ImportReport:
    staff: Tally = field(default_factory=Tally)
    skillgroups: Tally = field(default_factory=Tally)
    roles: Tally = field(default_factory=Tally)
    rejected: list[RejectedRow] = field(default_factory=list)
    # New staff members who got a random password because the file gave none.
    need_password_reset: list[str] = field(default_factory=list)
    dry_run: bool = False


@dataclass
class StaffRow:
    line: int
    username: str
    display_name: str
    email: str
    skillgroups: list[str]
    roles: list[str]
    password: str


def decode_csv(data: bytes) -> str:
    """Return the file's text, without the byte order mark that Excel writes,
    or raise CsvFileError naming the first line that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise CsvFileError(
            f"Line {line} is not valid UTF-8 text. Save the file as CSV with the "
            "UTF-8 encoding and import it again."
        ) from None


def import_people(lines: Iterable[str], *, dry_run: bool = False) -> ImportReport:
    """Import the CSV text in ``lines`` and commit, or roll back if ``dry_run``.

    Rows with errors are rejected and listed in the report. The other rows are
    imported in one transaction. Raises CsvFileError when the header or the
    file itself is unusable.
    """
    report = ImportReport(dry_run=dry_run)
    rows = _read_rows(lines, report)
    importer = _Importer(report, rows)
    for row in rows:
        importer.import_row(row)
    importer.count_groups()
    report.rejected.sort(key=lambda rejected: rejected.line)

    if dry_run:
        db.session.rollback()
    else:
        db.session.commit()
    log.info(
        "People import%s: staff %s, skillgroups %s, roles %s, %d rows rejected",
        " (dry run, rolled back)" if dry_run else "",
        report.staff,
        report.skillgroups,
        report.roles,
        len(report.rejected),
    )
    return report


# -- reading and checking rows ---------------------------------------------------


def _read_rows(lines: Iterable[str], report: ImportReport) -> list[StaffRow]:
    """Parse and check every row, and add the rejected ones to ``report``."""
    reader = csv.reader(lines)
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        _check_header(header)

        rows: list[StaffRow] = []
        first_line_of_username: dict[str, int] = {}
        end_of_previous = reader.line_num
        for values in reader:
            # A quoted field can span lines, so a row starts on the line after
            # the one where the previous row ended.
            line = end_of_previous + 1
            end_of_previous = reader.line_num
            if not any(value.strip() for value in values):
                continue
            try:
                row = _parse_row(line, header, values)
                _check_unique(row, first_line_of_username)
            except ValueError as error:
                report.rejected.append(RejectedRow(line, str(error)))
                continue
            rows.append(row)
    except csv.Error as error:
        raise CsvFileError(
            f"Line {reader.line_num} is not valid CSV ({error}). Check the quotes "
            "on that line."
        ) from None
    return rows


def _check_header(header: list[str]) -> None:
    if not header:
        raise CsvFileError(
            f"The file is empty. The first line must name the columns: "
            f"{','.join(COLUMNS)}."
        )
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        raise CsvFileError(
            f"The header names unknown columns: {', '.join(map(repr, unknown))}. "
            f"The columns are {','.join(COLUMNS)}."
        )
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise CsvFileError(
            f"The header names these columns more than once: {', '.join(duplicates)}."
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise CsvFileError(
            f"The header has no {', '.join(missing)} column. The first line must "
            f"name the columns, such as {','.join(COLUMNS)}."
        )


def _parse_row(line: int, header: list[str], values: list[str]) -> StaffRow:
    """Return the checked row, or raise ValueError naming every problem in it."""
    if len(values) != len(header):
        raise ValueError(
            f"The row has {len(values)} fields, but the header has {len(header)}. "
            "Quote values that contain a comma."
        )
    cells = {name: value.strip() for name, value in zip(header, values, strict=True)}
    problems: list[str] = []

    def check(function, *args):
        try:
            return function(*args)
        except ValueError as error:
            problems.append(str(error))
            return None

    row = StaffRow(
        line=line,
        username=check(_check_username, cells.get("username", "")),
        display_name=check(_check_display_name, cells.get("display_name", "")),
        email=check(_check_email, cells.get("email", "")),
        skillgroups=check(_split_names, cells.get("skillgroups", ""), "skillgroup"),
        roles=check(_split_names, cells.get("roles", ""), "role"),
        password=_password(header, values),
    )
    if problems:
        raise ValueError(" ".join(problems))
    return row


def _password(header: list[str], values: list[str]) -> str:
    """Return the password as typed, because spaces may belong to it, or ""."""
    if "password" not in header:
        return ""
    password = values[header.index("password")]
    return password if password.strip() else ""


def _check_username(value: str) -> str:
    if not value:
        raise ValueError("The user name is missing.")
    if (
        len(value) > MAX_USERNAME_LENGTH
        or any(character.isspace() for character in value)
        or any(not character.isprintable() for character in value)
    ):
        raise ValueError(
            f"The user name {_shorten(value)!r} is invalid. User names are 1 to "
            f"{MAX_USERNAME_LENGTH} characters without spaces or control characters."
        )
    return value


def _check_display_name(value: str) -> str:
    try:
        return validation.check_header_value(value, MAX_DISPLAY_NAME_LENGTH)
    except ValueError as error:
        raise ValueError(f"The display name is invalid. {error}") from None


def _check_email(value: str) -> str:
    if not value:
        return ""
    try:
        return validation.normalise_email(value)
    except ValueError as error:
        raise ValueError(
            f"The email address {_shorten(value)!r} is invalid. {error}"
        ) from None


def _split_names(value: str, noun: str) -> list[str]:
    """Return the ``;``-separated names, without blanks and case-insensitive
    repeats, or raise ValueError for the first invalid name."""
    names: dict[str, str] = {}
    for part in value.split(";"):
        name = part.strip()
        if not name:
            continue
        if len(name) > people.MAX_NAME_LENGTH:
            raise ValueError(
                f"The {noun} name {_shorten(name)!r} is {len(name)} characters "
                f"long, and the maximum is {people.MAX_NAME_LENGTH}."
            )
        try:
            name = people.check_name_text(name)
        except ValueError as error:
            raise ValueError(
                f"The {noun} name {_shorten(name)!r} is invalid. {error}"
            ) from None
        names.setdefault(name.lower(), name)
    return list(names.values())


def _check_unique(row: StaffRow, first_line_of_username: dict[str, int]) -> None:
    key = row.username.lower()
    if key in first_line_of_username:
        raise ValueError(
            f"The user name {row.username!r} already appears on line "
            f"{first_line_of_username[key]}. List each staff member once."
        )
    first_line_of_username[key] = row.line


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- applying rows -----------------------------------------------------------------


class _Importer:
    """The staff and groups of one import, and the counts of what changed."""

    def __init__(self, report: ImportReport, rows: list[StaffRow]) -> None:
        self.report = report

        # One query loads the staff named in the file with their skillgroups,
        # and a second one their roles, because StaffMember.roles is "selectin".
        usernames = [row.username.lower() for row in rows]
        query = (
            select(StaffMember)
            .where(func.lower(StaffMember.username).in_(usernames))
            .options(selectinload(StaffMember.skillgroups))
        )
        self.staff = {
            staff.username.lower(): staff for staff in db.session.scalars(query)
        }
        # Every group by its lower-case name. Groups are loaded in full because
        # there are far fewer of them than staff members.
        self.groups: dict[type, dict[str, Skillgroup | Role]] = {}
        for model in (Skillgroup, Role):
            groups = db.session.scalars(select(model))
            self.groups[model] = {group.name.lower(): group for group in groups}
        self.created_groups: set[Skillgroup | Role] = set()
        self.updated_groups: set[Skillgroup | Role] = set()
        self.used_groups: set[Skillgroup | Role] = set()

    def import_row(self, row: StaffRow) -> None:
        staff = self.staff.get(row.username.lower())
        is_new = staff is None
        if is_new:
            staff = self._create_staff(row)
            if staff is None:
                return
            self.report.staff.created += 1
            changed = False
        else:
            changed = self._update_staff(staff, row)

        added_skillgroups = self._add_memberships(staff, Skillgroup, row.skillgroups)
        added_roles = self._add_memberships(staff, Role, row.roles)
        if is_new:
            return
        if changed or added_skillgroups or added_roles:
            self.report.staff.updated += 1
        else:
            self.report.staff.skipped += 1

    def _create_staff(self, row: StaffRow) -> StaffMember | None:
        password = row.password or secrets.token_urlsafe(24)
        try:
            staff = create_staff(
                row.username,
                password,
                display_name=row.display_name,
                email=row.email,
            )
        except StaffError as error:
            self.report.rejected.append(RejectedRow(row.line, str(error)))
            return None

        self.staff[row.username.lower()] = staff
        if not row.password:
            self.report.need_password_reset.append(row.username)
        log.info("People import created staff member %r", row.username)
        return staff

    def _update_staff(self, staff: StaffMember, row: StaffRow) -> bool:
        """Replace the display name and email with non-empty values from the row."""
        changed = False
        if row.display_name and row.display_name != staff.display_name:
            staff.display_name = row.display_name
            changed = True
        if row.email and row.email != staff.email:
            staff.email = row.email
            changed = True
        if changed:
            log.info("People import updated staff member %s", staff.id)
        return changed

    def _add_memberships(
        self, staff: StaffMember, model: type, names: list[str]
    ) -> bool:
        current = staff.skillgroups if model is Skillgroup else staff.roles
        added = False
        for name in names:
            group = self._group(model, name)
            self.used_groups.add(group)
            if group in current:
                continue
            current.append(group)
            added = True
            if group not in self.created_groups:
                self.updated_groups.add(group)
        return added

    def _group(self, model: type, name: str) -> Skillgroup | Role:
        """Return the group named ``name`` ignoring case, creating it if missing."""
        index = self.groups[model]
        group = index.get(name.lower())
        if group is None:
            group = model(name=name)
            db.session.add(group)
            index[name.lower()] = group
            self.created_groups.add(group)
            log.info("People import created %s %r", people.NOUNS[model], name)
        return group

    def count_groups(self) -> None:
        for group in self.used_groups:
            tally = (
                self.report.skillgroups
                if isinstance(group, Skillgroup)
                else self.report.roles
            )
            if group in self.created_groups:
                tally.created += 1
            elif group in self.updated_groups:
                tally.updated += 1
            else:
                tally.skipped += 1
