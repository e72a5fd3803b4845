"""Benchmark: the access service against one hand-written SQL query.

Builds a database with 10,000 staff, 200 skillgroups, 50 roles, 5,000 global
accounts, 20,000 grants and 10,000 personal accounts, then asks "which
accounts may this staff member use" for a sample of staff members, through
``portal.services.access.usable_accounts`` and through one hand-written SQL
statement, alternating the two in the same run. It prints the median time of
each and, on the last line, ``ratio=service/baseline``.

    .venv/bin/python bench/access.py                       # SQLite file
    .venv/bin/python bench/access.py --database-url URL    # e.g. PostgreSQL
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import insert, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("PORTAL_SECRET_KEY", "bench")
os.environ.setdefault("PORTAL_ENCRYPTION_KEYS", Fernet.generate_key().decode())

from portal import create_app  # noqa: E402
from portal.extensions import db  # noqa: E402
from portal.models import (  # noqa: E402
    AccountGrant,
    EmailAccount,
    Role,
    Skillgroup,
    StaffMember,
    staff_role,
    staff_skillgroup,
)
from portal.services import access  # noqa: E402

SIZES = {
    "staff": 10_000,
    "skillgroups": 200,
    "roles": 50,
    "global_accounts": 5_000,
    "grants": 20_000,
    "personal_accounts": 10_000,
}
SECURITIES = ["everyone", "system", "all_staff", "permissions"]

BASELINE_SQL = text(
    """
    SELECT a.id, a.friendly_name, a.email_address, a.from_name, a.account_type,
           a.owner_id, a.security
    FROM email_account a
    WHERE a.enabled
      AND EXISTS (SELECT 1 FROM staff_member s WHERE s.id = :staff AND s.active)
      AND (a.owner_id = :staff
           OR (a.owner_id IS NULL
               AND (a.security IN ('everyone', 'all_staff')
                    OR (a.security = 'permissions' AND a.id IN (
                        SELECT g.account_id FROM account_grant g WHERE g.staff_id = :staff
                        UNION
                        SELECT g.account_id FROM account_grant g
                          JOIN staff_skillgroup m ON m.skillgroup_id = g.skillgroup_id
                         WHERE m.staff_id = :staff
                        UNION
                        SELECT g.account_id FROM account_grant g
                          JOIN staff_role r ON r.role_id = g.role_id
                         WHERE r.staff_id = :staff)))))
    ORDER BY lower(a.friendly_name), a.id
    """
)


def populate(rng: random.Random) -> None:
    """Insert the data set with bulk inserts."""
    settings = {
        "smtp": {
            "host": "127.0.0.1",
            "port": 25,
            "security": "none",
            "auth": "none",
            "username": "",
        },
        "read": None,
    }
    db.session.execute(
        insert(StaffMember),
        [
            {
                "id": n,
                "username": f"staff{n}",
                "display_name": f"Staff {n}",
                "email": f"staff{n}@example.com",
                "password_hash": "!",
                "active": n % 50 != 0,
            }
            for n in range(1, SIZES["staff"] + 1)
        ],
    )
    db.session.execute(
        insert(Skillgroup),
        [{"id": n, "name": f"Group {n}"} for n in range(1, SIZES["skillgroups"] + 1)],
    )
    db.session.execute(
        insert(Role),
        [
            {"id": n, "name": f"Role {n}", "grants_administration": False}
            for n in range(1, SIZES["roles"] + 1)
        ],
    )

    memberships = {
        (staff, rng.randint(1, SIZES["skillgroups"]))
        for staff in range(1, SIZES["staff"] + 1)
        for _ in range(3)
    }
    db.session.execute(
        insert(staff_skillgroup),
        [{"staff_id": s, "skillgroup_id": g} for s, g in memberships],
    )
    roles = {
        (staff, rng.randint(1, SIZES["roles"]))
        for staff in range(1, SIZES["staff"] + 1)
        for _ in range(2)
    }
    db.session.execute(
        insert(staff_role), [{"staff_id": s, "role_id": r} for s, r in roles]
    )

    accounts = []
    for n in range(1, SIZES["global_accounts"] + 1):
        accounts.append(
            {
                "id": n,
                "owner_id": None,
                "account_type": "internet",
                "friendly_name": f"Global {n:05d}",
                "email_address": f"global{n}@example.com",
                "enabled": n % 20 != 0,
                "security": SECURITIES[n % 4],
                "settings": settings,
            }
        )
    for n in range(SIZES["personal_accounts"]):
        number = SIZES["global_accounts"] + 1 + n
        accounts.append(
            {
                "id": number,
                "owner_id": rng.randint(1, SIZES["staff"]),
                "account_type": "internet",
                "friendly_name": f"Personal {number:05d}",
                "email_address": f"p{number}@example.com",
                "enabled": True,
                "security": "everyone",
                "settings": settings,
            }
        )
    db.session.execute(insert(EmailAccount), accounts)

    permission_accounts = [
        n
        for n in range(1, SIZES["global_accounts"] + 1)
        if SECURITIES[n % 4] == "permissions"
    ]
    grants = set()
    while len(grants) < SIZES["grants"]:
        account_id = rng.choice(permission_accounts)
        kind = rng.random()
        if kind < 0.4:
            grants.add((account_id, rng.randint(1, SIZES["skillgroups"]), None, None))
        elif kind < 0.6:
            grants.add((account_id, None, rng.randint(1, SIZES["roles"]), None))
        else:
            grants.add((account_id, None, None, rng.randint(1, SIZES["staff"])))
    db.session.execute(
        insert(AccountGrant),
        [
            {"account_id": a, "skillgroup_id": g, "role_id": r, "staff_id": s}
            for a, g, r, s in grants
        ],
    )
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ANALYZE"))
        db.session.commit()
    else:
        db.session.execute(text("ANALYZE"))


def run_service(staff_id: int) -> int:
    return len(access.usable_accounts(access.StaffPrincipal(staff_id)))


def run_baseline(staff_id: int) -> int:
    return len(db.session.execute(BASELINE_SQL, {"staff": staff_id}).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url", help="an empty database; default: a new SQLite file"
    )
    parser.add_argument(
        "--rounds", type=int, default=60, help="staff members asked about (default 60)"
    )
    arguments = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="portal-bench-")
    url = arguments.database_url or f"sqlite:///{folder}/bench.sqlite3"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "START_WORKER": False})
    app.instance_path = folder
    rng = random.Random(20261204)

    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        started = time.perf_counter()
        populate(rng)
        print(
            f"database: {db.engine.dialect.name}; populated in {time.perf_counter() - started:.1f} s"
        )

        staff_ids = [rng.randint(1, SIZES["staff"]) for _ in range(arguments.rounds)]
        for staff_id in staff_ids[
            :5
        ]:  # warm caches and check both give the same answer
            assert run_service(staff_id) == run_baseline(staff_id), staff_id

        service_times, baseline_times, sizes = [], [], []
        for staff_id in staff_ids:
            for runner, times in (
                (run_service, service_times),
                (run_baseline, baseline_times),
            ):
                started = time.perf_counter()
                count = runner(staff_id)
                times.append(time.perf_counter() - started)
            sizes.append(count)

    service = statistics.median(service_times)
    baseline = statistics.median(baseline_times)
    print(f"accounts per answer: median {statistics.median(sizes):.0f}")
    print(f"access service:   median {service * 1000:.2f} ms")
    print(f"hand-written SQL: median {baseline * 1000:.2f} ms")
    print(f"ratio={service / baseline:.2f}")


if __name__ == "__main__":
    main()
