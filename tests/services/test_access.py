"""The usage rule: table-driven cases, a property test, and query counts."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.extensions import db
from portal.services import access
from portal.services.access import Module, ModulePrincipal, Security, StaffPrincipal
from tests import factories
from tests.queries import count_queries

MODULES = list(Module)


def usable_ids(principal) -> set[int]:
    return {account.id for account in access.usable_accounts(principal)}


# -- the rule, case by case -----------------------------------------------------

# (security, staff may use, modules may use)
GLOBAL_CASES = [
    (Security.EVERYONE, True, True),
    (Security.SYSTEM, False, True),
    (Security.ALL_STAFF, True, False),
    (Security.PERMISSIONS, False, False),  # without a grant
]


@pytest.mark.parametrize(("security", "staff_may", "modules_may"), GLOBAL_CASES)
def test_global_account_rule(app, security, staff_may, modules_may):
    staff = factories.staff_member()
    account = factories.account(security=security)

    assert access.may_use(StaffPrincipal(staff.id), account.id) is staff_may
    for module in MODULES:
        assert access.may_use(ModulePrincipal(module), account.id) is modules_may


@pytest.mark.parametrize(("security", "staff_may", "modules_may"), GLOBAL_CASES)
def test_disabled_account_usable_by_no_one(app, security, staff_may, modules_may):
    staff = factories.staff_member()
    account = factories.account(security=security, enabled=False)
    factories.grant(account, staff=staff)

    assert not access.may_use(StaffPrincipal(staff.id), account.id)
    for module in MODULES:
        assert not access.may_use(ModulePrincipal(module), account.id)


@pytest.mark.parametrize("grant_through", ["name", "skillgroup", "role"])
def test_permission_grants(app, grant_through):
    granted = factories.staff_member()
    other = factories.staff_member()
    account = factories.account(security=Security.PERMISSIONS)
    if grant_through == "name":
        factories.grant(account, staff=granted)
    elif grant_through == "skillgroup":
        factories.grant(account, skillgroup=factories.skillgroup(members=[granted]))
    else:
        factories.grant(account, role=factories.role(members=[granted]))

    assert access.may_use(StaffPrincipal(granted.id), account.id)
    assert not access.may_use(StaffPrincipal(other.id), account.id)
    for module in MODULES:
        assert not access.may_use(ModulePrincipal(module), account.id)


@pytest.mark.parametrize("security", list(Security))
def test_personal_account_owner_only(app, security):
    owner = factories.staff_member()
    other = factories.staff_member()
    account = factories.account(owner=owner, security=security)

    assert access.may_use(StaffPrincipal(owner.id), account.id)
    assert not access.may_use(StaffPrincipal(other.id), account.id)
    for module in MODULES:
        assert not access.may_use(ModulePrincipal(module), account.id)


def test_disabled_staff_uses_nothing(app):
    staff = factories.staff_member(active=False)
    own = factories.account(owner=staff)
    shared = factories.account(security=Security.EVERYONE)
    assert usable_ids(StaffPrincipal(staff.id)) == set()
    assert not access.may_use(StaffPrincipal(staff.id), own.id)
    assert not access.may_use(StaffPrincipal(staff.id), shared.id)


def test_system_account_never_listed_for_staff(app):
    staff = factories.staff_member()
    system = factories.account(security=Security.SYSTEM)
    factories.grant(system, staff=staff)
    assert system.id not in usable_ids(StaffPrincipal(staff.id))
    assert system.id in usable_ids(ModulePrincipal(Module.WEB_PORTAL))


def test_usable_accounts_sorted_by_name(app):
    staff = factories.staff_member()
    factories.account("beta")
    factories.account("Alpha")
    factories.account("gamma", owner=staff)
    names = [a.friendly_name for a in access.usable_accounts(StaffPrincipal(staff.id))]
    assert names == ["Alpha", "beta", "gamma"]


# -- the preview and the reverse view ----------------------------------------------


def test_preview_counts_and_searches(app):
    alice = factories.staff_member("alice", display_name="Alice Archer")
    bob = factories.staff_member("bob", display_name="Bob Baker")
    factories.staff_member("carol")
    factories.staff_member("dave", active=False)
    account = factories.account(security=Security.PERMISSIONS)
    factories.grant(account, skillgroup=factories.skillgroup(members=[alice, bob]))
    factories.grant(account, staff=alice)  # granted twice, counted once

    preview = access.preview_access(account)
    assert preview.total == 2
    assert [s.username for s in preview.staff] == ["alice", "bob"]

    searched = access.preview_access(account, search="BAK")
    assert searched.total == 2
    assert searched.matching == 1
    assert [s.username for s in searched.staff] == ["bob"]


@pytest.mark.parametrize(
    ("security", "enabled", "expected"),
    [
        (Security.EVERYONE, True, 2),
        (Security.ALL_STAFF, True, 2),
        (Security.SYSTEM, True, 0),
        (Security.PERMISSIONS, True, 0),
        (Security.EVERYONE, False, 0),
    ],
)
def test_preview_by_security(app, security, enabled, expected):
    factories.staff_member()
    factories.staff_member()
    factories.staff_member(active=False)
    account = factories.account(security=security, enabled=enabled)
    assert access.preview_access(account).total == expected


def test_explain_access_names_each_grant(app):
    alice = factories.staff_member("alice")
    group = factories.skillgroup("Networks", members=[alice])
    role = factories.role("Supervisor", members=[alice])
    granted = factories.account("Granted", security=Security.PERMISSIONS)
    factories.grant(granted, skillgroup=group)
    factories.grant(granted, role=role)
    factories.grant(granted, staff=alice)
    factories.account("Shared", security=Security.ALL_STAFF)
    factories.account("Own", owner=alice)
    factories.account("Machines", security=Security.SYSTEM)

    reasons = {
        entry.account.friendly_name: entry.reasons
        for entry in access.explain_access(alice.id)
    }
    assert reasons == {
        "Granted": [
            "Granted by name",
            "Has the role Supervisor",
            "Member of the skillgroup Networks",
        ],
        "Shared": ["Security: All staff members"],
        "Own": ["Personal account"],
    }


# -- constant query counts ------------------------------------------------------------


def populate(accounts: int) -> tuple:
    staff = factories.staff_member()
    group = factories.skillgroup(members=[staff])
    role = factories.role(members=[staff])
    for number in range(accounts):
        account = factories.account(security=list(Security)[number % 4])
        if number % 3 == 0:
            factories.grant(account, skillgroup=group)
        if number % 5 == 0:
            factories.grant(account, role=role)
        if number % 7 == 0:
            factories.grant(account, staff=staff)
        if number % 11 == 0:
            factories.account(owner=staff)
    db.session.commit()
    return staff, account


@pytest.mark.parametrize("operation", ["usable", "may_use", "preview", "explain"])
def test_query_count_is_constant(app, operation):
    counts = []
    for size in (10, 300):
        staff, account = populate(size)
        db.session.expire_all()
        with count_queries() as counter:
            if operation == "usable":
                access.usable_accounts(StaffPrincipal(staff.id))
                access.usable_accounts(ModulePrincipal(Module.EMAIL_MANAGER))
            elif operation == "may_use":
                access.may_use(StaffPrincipal(staff.id), account.id)
            elif operation == "preview":
                access.preview_access(account, search="s")
            else:
                access.explain_access(staff.id)
        counts.append(counter.count)
    assert counts[0] == counts[1]


# -- the property: SQL agrees with a pure-Python model of the rule --------------------


def model_usable(world, principal) -> set[int]:
    """The rule written plainly, over the generated world."""
    usable = set()
    for account in world["accounts"]:
        if not account["enabled"]:
            continue
        if isinstance(principal, ModulePrincipal):
            if account["owner"] is None and account["security"] in (
                "everyone",
                "system",
            ):
                usable.add(account["id"])
            continue
        staff = world["staff"][principal.staff_id]
        if not staff["active"]:
            continue
        if account["owner"] is not None:
            if account["owner"] == principal.staff_id:
                usable.add(account["id"])
            continue
        security = account["security"]
        if security in ("everyone", "all_staff"):
            usable.add(account["id"])
        elif security == "permissions":
            for kind, target in account["grants"]:
                if (
                    (kind == "staff" and target == principal.staff_id)
                    or (kind == "skillgroup" and target in staff["skillgroups"])
                    or (kind == "role" and target in staff["roles"])
                ):
                    usable.add(account["id"])
    return usable


world_strategy = st.fixed_dictionaries(
    {
        "staff": st.lists(
            st.tuples(
                st.booleans(), st.sets(st.integers(0, 3)), st.sets(st.integers(0, 2))
            ),
            min_size=1,
            max_size=6,
        ),
        "accounts": st.lists(
            st.tuples(
                st.sampled_from(list(Security)),
                st.booleans(),  # enabled
                st.one_of(st.none(), st.integers(0, 5)),  # owner index
                st.lists(
                    st.tuples(
                        st.sampled_from(["staff", "skillgroup", "role"]),
                        st.integers(0, 5),
                    ),
                    max_size=4,
                ),
            ),
            max_size=10,
        ),
    }
)


def clear_tables():
    db.session.rollback()
    for table in reversed(db.metadata.sorted_tables):
        db.session.execute(table.delete())
    db.session.commit()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(generated=world_strategy)
def test_rule_matches_model(app, generated):
    clear_tables()
    groups = [factories.skillgroup() for _ in range(4)]
    roles = [factories.role() for _ in range(3)]
    staff_rows = []
    world = {"staff": {}, "accounts": []}
    for active, group_numbers, role_numbers in generated["staff"]:
        staff = factories.staff_member(active=active)
        staff.skillgroups.extend(groups[n] for n in group_numbers)
        staff.roles.extend(roles[n] for n in role_numbers)
        staff_rows.append(staff)
        world["staff"][staff.id] = {
            "active": active,
            "skillgroups": {groups[n].id for n in group_numbers},
            "roles": {roles[n].id for n in role_numbers},
        }
    db.session.flush()

    for security, enabled, owner_index, grant_specs in generated["accounts"]:
        owner = (
            staff_rows[owner_index % len(staff_rows)]
            if owner_index is not None
            else None
        )
        account = factories.account(owner=owner, security=security, enabled=enabled)
        grants = set()
        for kind, index in grant_specs:
            if owner is not None:
                break  # grants are only made on global accounts
            if kind == "staff":
                target = staff_rows[index % len(staff_rows)]
            elif kind == "skillgroup":
                target = groups[index % len(groups)]
            else:
                target = roles[index % len(roles)]
            if (kind, target.id) in grants:
                continue
            factories.grant(account, **{kind: target})
            grants.add((kind, target.id))
        world["accounts"].append(
            {
                "id": account.id,
                "owner": owner.id if owner else None,
                "security": str(security),
                "enabled": enabled,
                "grants": grants,
            }
        )
    db.session.commit()

    principals = [StaffPrincipal(staff.id) for staff in staff_rows] + [
        ModulePrincipal(m) for m in MODULES
    ]
    for principal in principals:
        assert usable_ids(principal) == model_usable(world, principal), principal
    for account in world["accounts"]:
        expected = {
            sid
            for sid in world["staff"]
            if account["id"] in model_usable(world, StaffPrincipal(sid))
        }
        row = db.session.get(factories.EmailAccount, account["id"])
        preview = access.preview_access(row, limit=100)
        assert {s.id for s in preview.staff} == expected
        assert preview.total == len(expected)
