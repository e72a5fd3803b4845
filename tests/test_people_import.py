"""The import-people command: counts, rejected rows, idempotence, dry run."""

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Role, Skillgroup, StaffMember
from tests.conftest import PASSWORD, make_staff

HEADER = "username,display_name,email,skillgroups,roles,password\n"

GOOD_ROWS = (
    "bob,Bob Builder,bob@example.com,Networks;Second line,Agents,bob-password\n"
    "carol,Carol King,carol@example.com,networks,,\n"
)


def write_csv(tmp_path, text, name="people.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return str(path)


def run_import(runner, path, *options):
    return runner.invoke(args=["import-people", path, *options])


def staff_named(username):
    db.session.expire_all()
    return db.session.scalar(
        select(StaffMember).where(StaffMember.username == username)
    )


def names(model):
    db.session.expire_all()
    return list(db.session.scalars(select(model.name).order_by(model.name)))


def row_count(model):
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model))


def test_import_creates_staff_and_groups(runner, tmp_path):
    result = run_import(runner, write_csv(tmp_path, HEADER + GOOD_ROWS))
    assert result.exit_code == 0, result.output
    assert "Staff members: 2 created, 0 updated, 0 skipped" in result.output
    assert "Skillgroups: 2 created, 0 updated, 0 skipped" in result.output
    assert "Roles: 1 created, 0 updated, 0 skipped" in result.output

    bob = staff_named("bob")
    assert bob.display_name == "Bob Builder"
    assert bob.email == "bob@example.com"
    assert bob.check_password("bob-password")
    assert sorted(group.name for group in bob.skillgroups) == [
        "Networks",
        "Second line",
    ]
    assert [role.name for role in bob.roles] == ["Agents"]
    assert not bob.is_administrator

    carol = staff_named("carol")
    assert [group.name for group in carol.skillgroups] == ["Networks"]
    assert names(Skillgroup) == ["Networks", "Second line"]
    assert names(Role) == ["Agents"]


def test_new_staff_without_password_need_reset(runner, tmp_path):
    result = run_import(runner, write_csv(tmp_path, HEADER + GOOD_ROWS))
    assert "need a password reset: carol" in result.output
    assert "bob" not in result.output.split("password reset:")[1]
    assert not staff_named("carol").check_password("")


def test_second_run_changes_nothing(runner, tmp_path):
    path = write_csv(tmp_path, HEADER + GOOD_ROWS)
    run_import(runner, path)
    carol_hash = staff_named("carol").password_hash

    result = run_import(runner, path)
    assert result.exit_code == 0, result.output
    assert "Staff members: 0 created, 0 updated, 2 skipped" in result.output
    assert "Skillgroups: 0 created, 0 updated, 2 skipped" in result.output
    assert "Roles: 0 created, 0 updated, 1 skipped" in result.output
    assert "password reset" not in result.output
    assert staff_named("carol").password_hash == carol_hash
    assert row_count(StaffMember) == 2


def test_existing_staff_updated_and_keep_password(app, runner, tmp_path):
    alice = make_staff("alice")
    networks = Skillgroup(name="Networks")
    night = Skillgroup(name="Night shift")
    alice.skillgroups.extend([networks, night])
    db.session.commit()

    text = (
        HEADER
        + "ALICE,Alice Liddell,alice@corp.example,networks;Printers,,new-password\n"
    )
    result = run_import(runner, write_csv(tmp_path, text))
    assert result.exit_code == 0, result.output
    assert "Staff members: 0 created, 1 updated, 0 skipped" in result.output
    assert "Skillgroups: 1 created, 0 updated, 1 skipped" in result.output

    alice = staff_named("alice")
    assert alice.display_name == "Alice Liddell"
    assert alice.email == "alice@corp.example"
    assert alice.check_password(PASSWORD)
    assert not alice.check_password("new-password")
    # Listed memberships are added, and unlisted ones stay.
    assert sorted(group.name for group in alice.skillgroups) == [
        "Networks",
        "Night shift",
        "Printers",
    ]


def test_blank_values_keep_stored_ones(app, runner, tmp_path):
    make_staff("alice", email="alice@example.com")
    result = run_import(runner, write_csv(tmp_path, HEADER + "alice,,,,,\n"))
    assert "Staff members: 0 created, 0 updated, 1 skipped" in result.output
    alice = staff_named("alice")
    assert alice.email == "alice@example.com"
    assert alice.display_name == "alice"


def test_existing_group_gaining_member_counts_updated(app, runner, tmp_path):
    db.session.add(Role(name="Agents"))
    db.session.commit()
    make_staff("alice")
    result = run_import(runner, write_csv(tmp_path, HEADER + "alice,,,,AGENTS,\n"))
    assert "Roles: 0 created, 1 updated, 0 skipped" in result.output
    assert "Staff members: 0 created, 1 updated, 0 skipped" in result.output
    assert [role.name for role in staff_named("alice").roles] == ["Agents"]
    assert names(Role) == ["Agents"]


def test_import_can_add_to_administrators(app, runner, tmp_path):
    make_staff("root", administrator=True)
    result = run_import(
        runner, write_csv(tmp_path, HEADER + "dora,,,,Administrators,\n")
    )
    assert result.exit_code == 0, result.output
    assert staff_named("dora").is_administrator


BAD_ROWS = [
    ("bad user,,,,,", "user name 'bad user' is invalid"),
    (",Nameless,,,,", "user name is missing"),
    ("u" * 65 + ",,,,,", "1 to 64 characters"),
    ("dave,,not-an-email,,,", "email address 'not-an-email' is invalid"),
    ("erin,,erin@@example.com,,,", "email address"),
    ("frank,,," + "x" * 101 + ",,", "101 characters long, and the maximum is 100"),
    ("gina,,,,Agents;" + "r" * 120 + ",", "role name"),
    ('hank,"Bad\tname",,,,', "display name is invalid"),
    ("ivan,,,,,short", "at least 8 characters"),
    ("judy,,,,", "has 5 fields, but the header has 6"),
]


@pytest.mark.parametrize(("row", "reason"), BAD_ROWS)
def test_bad_row_rejected_with_line(runner, tmp_path, row, reason):
    text = HEADER + "bob,Bob,bob@example.com,,,\n" + row + "\n"
    result = run_import(runner, write_csv(tmp_path, text))
    assert result.exit_code == 1, result.output
    assert "1 row was rejected and not imported:" in result.output
    line = next(line for line in result.output.splitlines() if "line 3:" in line)
    assert reason in line
    assert "Staff members: 1 created" in result.output
    assert row_count(StaffMember) == 1
    assert staff_named("bob") is not None


def test_bad_rows_listed_good_rows_imported(runner, tmp_path):
    text = (
        HEADER
        + "bob,Bob,bob@example.com,Networks,,\n"  # line 2
        + "bad user,,,,,\n"  # line 3
        + "\n"  # line 4, blank
        + "carol,Carol,carol@example.com,,,\n"  # line 5
        + "BOB,Bob again,,,,\n"  # line 6
        + 'dave,"Dave\nMultiline",,,,\n'  # lines 7 and 8
        + "erin,,not-an-email,,,\n"  # line 9
    )
    result = run_import(runner, write_csv(tmp_path, text))
    assert result.exit_code == 1
    assert "4 rows were rejected and not imported:" in result.output
    assert "line 3: The user name 'bad user' is invalid" in result.output
    assert "line 6: The user name 'BOB' already appears on line 2" in result.output
    assert "line 7: The display name is invalid" in result.output
    assert "line 9: The email address 'not-an-email' is invalid" in result.output
    assert sorted(names_of_staff()) == ["bob", "carol"]
    assert staff_named("bob").display_name == "Bob"


def names_of_staff():
    db.session.expire_all()
    return list(db.session.scalars(select(StaffMember.username)))


def test_row_lists_every_problem(runner, tmp_path):
    text = HEADER + "bad user,,bad-email,,,\n"
    result = run_import(runner, write_csv(tmp_path, text))
    line = next(line for line in result.output.splitlines() if "line 2:" in line)
    assert "user name" in line
    assert "email address" in line


def test_dry_run_saves_nothing(runner, tmp_path):
    path = write_csv(tmp_path, HEADER + GOOD_ROWS)
    result = run_import(runner, path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Staff members: 2 created, 0 updated, 0 skipped" in result.output
    assert "Skillgroups: 2 created" in result.output
    assert "Dry run: nothing was saved." in result.output
    assert row_count(StaffMember) == 0
    assert row_count(Skillgroup) == 0
    assert row_count(Role) == 0

    result = run_import(runner, path)
    assert "Staff members: 2 created" in result.output
    assert row_count(StaffMember) == 2


def test_dry_run_reports_bad_rows(runner, tmp_path):
    text = HEADER + "bad user,,,,,\n"
    result = run_import(runner, write_csv(tmp_path, text), "--dry-run")
    assert result.exit_code == 1
    assert "line 2:" in result.output


def test_header_may_omit_optional_columns(runner, tmp_path):
    text = "email,username\nzoe@example.com,zoe\n"
    result = run_import(runner, write_csv(tmp_path, text))
    assert result.exit_code == 0, result.output
    assert staff_named("zoe").email == "zoe@example.com"
    assert "need a password reset: zoe" in result.output


def test_windows_line_breaks_and_quoted_newline(runner, tmp_path):
    text = HEADER + 'bob,Bob,,,,\r\n"carol","Carol\r\nKing",,,,\r\nbad user,,,,,\r\n'
    result = run_import(runner, write_csv(tmp_path, text))
    assert "line 3: The display name is invalid" in result.output
    assert "line 5: The user name 'bad user' is invalid" in result.output
    assert names_of_staff() == ["bob"]


def test_byte_order_mark_is_ignored(runner, tmp_path):
    path = write_csv(tmp_path, HEADER + GOOD_ROWS, encoding="utf-8-sig")
    result = run_import(runner, path)
    assert result.exit_code == 0, result.output
    assert row_count(StaffMember) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "The file is empty"),
        ("username,emial\nbob,bob@example.com\n", "unknown columns: 'emial'"),
        ("display_name,email\nBob,bob@example.com\n", "no username column"),
        ("username,email,email\nbob,a@example.com,b@example.com\n", "more than once"),
    ],
)
def test_unusable_header_imports_nothing(runner, tmp_path, text, message):
    result = run_import(runner, write_csv(tmp_path, text))
    assert result.exit_code != 0
    assert message in result.output
    assert "Nothing was imported." in result.output
    assert row_count(StaffMember) == 0


def test_file_not_utf8_imports_nothing(runner, tmp_path):
    path = tmp_path / "people.csv"
    text = HEADER + "alice,Alice,,,,\n" + "bob,Bj\xf6rn,,,,\n"
    path.write_bytes(text.encode("latin-1"))
    result = run_import(runner, str(path))
    assert result.exit_code != 0
    assert "Line 3 is not valid UTF-8" in result.output
    assert row_count(StaffMember) == 0


def test_help_says_memberships_are_only_added(runner):
    result = runner.invoke(args=["import-people", "--help"])
    assert "never removes" in result.output
    assert "--dry-run" in result.output
