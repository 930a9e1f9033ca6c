"""``tenantry migrate downgrade``: every mode, a step or a revision, resumable after a failure."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from tenantry import Tenantry, TenantStatus, tenant_context
from tenantry.errors import MigrationError, StoreNotFoundError
from tenantry.lifecycle.migrations.runner import Migrator, Outcome, TargetKind
from tenantry.tenancy.isolation import strategy_for
from tests.conftest import modes_for
from tests.integration.lifecycle.conftest import LifecycleFactory
from tests.models import Note

BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])

#: A downgrade that refuses where a table named ``hold_downgrade`` exists.
_REFUSE_IF_HELD = """
if "hold_downgrade" in sa.inspect(op.get_bind()).get_table_names():
    raise RuntimeError("held")
"""


def _revision(history: Path, revision: str, down: str | None, upgrade: str, downgrade: str) -> None:
    def body(code: str) -> str:
        return textwrap.indent(textwrap.dedent(code).strip(), "    ")

    (history / "versions" / f"{revision}.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"revision = {revision!r}\ndown_revision = {down!r}\n"
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade() -> None:\n{body(upgrade)}\n\n\n"
        f"def downgrade() -> None:\n{body(downgrade)}\n"
    )


def _two_revisions(tenant_dir: Path) -> None:
    _revision(
        tenant_dir,
        "a1",
        None,
        'op.add_column("notes", sa.Column("color", sa.String(20), nullable=True))',
        'op.drop_column("notes", "color")',
    )
    _revision(
        tenant_dir,
        "a2",
        "a1",
        'op.add_column("notes", sa.Column("size", sa.Integer, nullable=True))',
        _REFUSE_IF_HELD + 'op.drop_column("notes", "size")',
    )


def _columns(t: Tenantry, tenant_id: str) -> set[str]:
    with tenant_context(tenant_id), t.session() as s:
        schema = strategy_for(t.get_tenant(tenant_id).isolation).data_schema(tenant_id)
        return {c["name"] for c in inspect(s.connection()).get_columns("notes", schema=schema)}


def _revisions(migrator: Migrator) -> dict[str, str | None]:
    return {
        v.target.label: v.revision
        for v in migrator.versions(migrator.targets())
        if v.target.kind is not TargetKind.GLOBAL
    }


def _hold(t: Tenantry, tenant_id: str, *, held: bool) -> None:
    """Create (or drop) the table that makes a2's downgrade fail, in the tenant's own tables."""
    tenant = t.get_tenant(tenant_id)
    engine = strategy_for(tenant.isolation).admin_engine(t.store(tenant.store), tenant_id)
    try:
        with engine.begin() as conn:
            verb = "CREATE TABLE hold_downgrade (x int)" if held else "DROP TABLE hold_downgrade"
            conn.execute(text(verb))
    finally:
        if strategy_for(tenant.isolation).own_database:
            engine.dispose()


@BACKENDS
def test_downgrade_one_step_in_every_mode_is_resumed_after_a_failure(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path], backend: str
) -> None:
    tenant_dir, _ = histories
    t = lifecycle_tenantry(backend)
    tenants = [f"{mode[:2]}{i}" for mode in modes_for(backend) for i in (1, 2)]
    for tid in tenants:
        t.create_tenant(tid, isolation={"sh": "shared", "sc": "schema"}.get(tid[:2], "database"))
        with tenant_context(tid), t.session() as s:
            s.add(Note(body=f"note of {tid}"))
            s.commit()
    _two_revisions(tenant_dir)
    deployed = lifecycle_tenantry(backend)
    assert not Migrator(deployed).run().failed
    targets = set(_revisions(Migrator(deployed)))
    assert set(_revisions(Migrator(deployed)).values()) == {"a2"}

    _hold(deployed, "da1", held=True)
    failed = Migrator(deployed).downgrade("-1", parallel=1)
    outcomes = {r.target.label: r.outcome for r in failed.results}
    assert outcomes["da1"] is Outcome.FAILED
    assert "RuntimeError: held" in (failed.failed[0].error or "")
    assert Outcome.NOT_RUN in outcomes.values()  # the run stopped at the failure
    # The failed target's transaction was rolled back: still at a2, column there, served.
    assert _revisions(Migrator(deployed))["da1"] == "a2"
    assert "size" in _columns(deployed, "da1")
    assert deployed.get_tenant("da1").status is TenantStatus.ACTIVE
    downgraded = {label for label, o in outcomes.items() if o is Outcome.DOWNGRADED}
    assert downgraded  # those that ran before the failure went down

    _hold(deployed, "da1", held=False)
    rerun = Migrator(deployed).downgrade("-1", parallel=2)
    assert not rerun.failed
    # Only what was left is run; the targets already at a1 stay there (not a further step).
    assert {r.target.label for r in rerun.results} == targets - downgraded
    assert {r.outcome for r in rerun.results} == {Outcome.DOWNGRADED}
    assert rerun.untouched == len(downgraded)
    assert set(_revisions(Migrator(deployed)).values()) == {"a1"}
    for tid in tenants:
        columns = _columns(deployed, tid)
        assert "size" not in columns, tid
        assert "color" in columns, tid
        assert deployed.get_tenant(tid).status is TenantStatus.ACTIVE
        with tenant_context(tid), deployed.session() as s:
            assert s.scalars(select(Note.body)).all() == [f"note of {tid}"]
    assert Migrator(deployed).downgrade("-1").results == []  # "-1" is below head, not below a1

    to_base = Migrator(deployed).downgrade("base", parallel=2)
    assert {(r.before, r.after) for r in to_base.results} == {("a1", None)}
    for tid in tenants:
        assert "color" not in _columns(deployed, tid)
    again = Migrator(deployed).run(parallel=2)  # and back up: the states are consistent
    assert {(r.before, r.after) for r in again.results} == {(None, "a2")}
    assert set(_revisions(Migrator(deployed)).values()) == {"a2"}


@BACKENDS
def test_downgrade_the_global_tables_only_with_global(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path], backend: str
) -> None:
    tenant_dir, global_dir = histories
    t = lifecycle_tenantry(backend)
    t.create_tenant("acme", isolation="shared")
    _two_revisions(tenant_dir)
    _revision(
        global_dir,
        "g1",
        None,
        'op.add_column("plans", sa.Column("price_cents", sa.Integer, nullable=True))',
        'op.drop_column("plans", "price_cents")',
    )
    deployed = lifecycle_tenantry(backend)
    Migrator(deployed).run()
    report = Migrator(deployed).downgrade("g1", global_=True)
    assert report.results == []
    assert report.untouched == 1  # already there
    report = Migrator(deployed).downgrade("-1", global_=True)
    assert [(r.target.kind, r.outcome, r.before, r.after) for r in report.results] == [
        (TargetKind.GLOBAL, Outcome.DOWNGRADED, "g1", None)
    ]
    with deployed.default_store.admin_engine().connect() as conn:
        assert "price_cents" not in {c["name"] for c in inspect(conn).get_columns("plans")}
    assert set(_revisions(Migrator(deployed)).values()) == {"a2"}  # tenants untouched
    assert "size" in _columns(deployed, "acme")


def test_filters_and_bad_destinations(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path]
) -> None:
    t = lifecycle_tenantry("sqlite")
    for tid in ("a", "b"):
        t.create_tenant(tid, isolation="database")
    _two_revisions(histories[0])
    deployed = lifecycle_tenantry("sqlite")
    Migrator(deployed).run()
    report = Migrator(deployed).downgrade("a1", tenant_ids=["b"])
    assert [(r.target.label, r.after) for r in report.results] == [("b", "a1")]
    assert _revisions(Migrator(deployed)) == {"a": "a2", "b": "a1"}
    migrator = Migrator(deployed)
    with pytest.raises(MigrationError, match="no revision 'zz'"):
        migrator.downgrade("zz")
    with pytest.raises(MigrationError, match="-3 goes below base"):
        migrator.downgrade("-3")
    with pytest.raises(StoreNotFoundError, match="no store named 'nowhere'"):
        migrator.downgrade("a1", stores=["nowhere"])


def test_a_tenant_left_migrating_by_a_killed_downgrade_is_restored_by_the_rerun(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path]
) -> None:
    """A run killed after a target committed leaves its tenant ``migrating``; the rerun fixes it."""
    t = lifecycle_tenantry("sqlite")
    for tid in ("a", "b"):
        t.create_tenant(tid, isolation="database")
    _two_revisions(histories[0])
    deployed = lifecycle_tenantry("sqlite")
    Migrator(deployed).run()
    Migrator(deployed).downgrade("a1", tenant_ids=["a"])
    deployed.catalog.set_status("a", TenantStatus.MIGRATING)  # committed, then the process died
    rerun = Migrator(deployed).downgrade("a1")
    assert sorted((r.target.label, r.outcome) for r in rerun.results) == [
        ("a", Outcome.CURRENT),
        ("b", Outcome.DOWNGRADED),
    ]
    assert deployed.get_tenant("a").status is TenantStatus.ACTIVE
    assert _revisions(Migrator(deployed)) == {"a": "a1", "b": "a1"}
