"""``tenantry migrate``: every mode and store, failures, resumption, status, scaffolding."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from tenantry import (
    IsolationMode,
    JobContext,
    JobRegistry,
    Queue,
    Tenantry,
    TenantStatus,
    Worker,
    tenant_context,
)
from tenantry.errors import MigrationError, TenantMigratingError, TenantUnavailableError
from tenantry.lifecycle.migrations.runner import Migrator, Outcome, TargetKind
from tenantry.queue import WorkerOptions
from tenantry.tenancy.isolation import schema_name
from tests.conftest import TenantryFactory, modes_for
from tests.integration.lifecycle.conftest import LifecycleFactory
from tests.integration.lifecycle.support import (
    ADD_COLOR,
    ADD_PLAN_PRICE,
    UNIQUE_BODY,
    add_revision,
)
from tests.integration.queue.handlers import Item
from tests.integration.queue.support import running, wait_until
from tests.models import Note

BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


def _add_note(t: Tenantry, tenant_id: str, body: str) -> None:
    with tenant_context(tenant_id), t.session() as s:
        s.add(Note(body=body))
        s.commit()


def _columns(t: Tenantry, tenant_id: str) -> set[str]:
    """The notes columns the tenant's own session sees (its schema/database/shared table)."""
    with tenant_context(tenant_id), t.session() as s:
        conn = s.connection()
        schema = None
        if t.get_tenant(tenant_id).isolation is IsolationMode.SCHEMA:
            schema = schema_name(tenant_id)
        return {c["name"] for c in inspect(conn).get_columns("notes", schema=schema)}


def _indexes(t: Tenantry, tenant_id: str) -> set[str]:
    with tenant_context(tenant_id), t.session() as s:
        conn = s.connection()
        schema = None
        if t.get_tenant(tenant_id).isolation is IsolationMode.SCHEMA:
            schema = schema_name(tenant_id)
        return {str(i["name"]) for i in inspect(conn).get_indexes("notes", schema=schema)}


@BACKENDS
def test_migrate_upgrades_every_mode_once_and_a_rerun_touches_nothing(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path], backend: str
) -> None:
    tenant_dir, global_dir = histories
    t = lifecycle_tenantry(backend)
    tenants = [f"{mode[:2]}{i}" for mode in modes_for(backend) for i in (1, 2)]
    for mode in modes_for(backend):
        for i in (1, 2):
            t.create_tenant(f"{mode[:2]}{i}", isolation=mode)
    for tid in tenants:
        _add_note(t, tid, f"note of {tid}")
    add_revision(tenant_dir, "a1", None, ADD_COLOR)
    add_revision(global_dir, "g1", None, ADD_PLAN_PRICE)

    deployed = lifecycle_tenantry(backend)  # a new deploy reads the new revisions
    migrator = Migrator(deployed)
    report = migrator.run(parallel=2)

    assert not report.failed
    kinds = sorted(r.target.kind.value for r in report.results)
    expected = [
        "global",
        "shared",
        *sorted(m for m in modes_for(backend) for _ in (1, 2) if m != "shared"),
    ]
    assert kinds == sorted(expected)  # the shared tables once for both shared tenants
    assert {
        (r.before, r.after) for r in report.results if r.target.kind is not TargetKind.GLOBAL
    } == {(None, "a1")}
    for tid in tenants:
        assert "color" in _columns(deployed, tid)
        assert "ix_notes_color" in _indexes(deployed, tid)
        assert deployed.get_tenant(tid).status is TenantStatus.ACTIVE
        with tenant_context(tid), deployed.session() as s:  # data kept
            assert s.scalars(select(Note.body)).all() == [f"note of {tid}"]
    with deployed.default_store.admin_engine().connect() as conn:
        assert "price_cents" in {c["name"] for c in inspect(conn).get_columns("plans")}

    versions = migrator.versions(migrator.targets())
    assert {(v.revision, v.behind) for v in versions if v.target.kind is not TargetKind.GLOBAL} == {
        ("a1", False)
    }
    again = Migrator(lifecycle_tenantry(backend)).run(parallel=2)
    assert again.results == []
    assert again.untouched == len(versions)


@pytest.mark.parametrize(
    ("backend", "mode"),
    [
        ("sqlite", "database"),
        ("sqlite", "shared"),
        ("postgresql", "schema"),
        ("postgresql", "database"),
        ("postgresql", "shared"),
    ],
)
def test_a_new_tenant_is_stamped_at_head_and_needs_no_migration(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path], backend: str, mode: str
) -> None:
    tenant_dir, _ = histories
    add_revision(tenant_dir, "b0", None, "pass")
    t = lifecycle_tenantry(backend)
    t.create_tenant("fresh", isolation=mode)
    migrator = Migrator(t)
    (version,) = [v for v in migrator.versions(migrator.targets()) if v.target.kind.value == mode]
    assert (version.revision, version.head, version.behind) == ("b0", "b0", False)
    report = migrator.run()
    assert [r for r in report.results if r.target.kind is not TargetKind.GLOBAL] == []


def _schema_tenants(t: Tenantry, *ids: str) -> None:
    for tid in ids:
        t.create_tenant(tid, isolation="schema")
        _add_note(t, tid, "same")
    _add_note(t, "bad", "same")  # a duplicate: the unique index cannot be built here


def test_skip_failing_reports_the_failure_and_migrates_the_others(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path]
) -> None:
    t = lifecycle_tenantry("postgresql")
    _schema_tenants(t, "bad", "ok1", "ok2")
    add_revision(histories[0], "u1", None, UNIQUE_BODY)
    deployed = lifecycle_tenantry("postgresql")

    report = Migrator(deployed).run(parallel=2, skip_failing=True)

    outcomes = {r.target.label: r.outcome for r in report.results}
    assert outcomes == {"bad": Outcome.FAILED, "ok1": Outcome.UPGRADED, "ok2": Outcome.UPGRADED}
    (failed,) = report.failed
    assert failed.target.tenant_id == "bad"
    assert "UniqueViolation" in (failed.error or "")
    assert "uq_notes_body" in (failed.error or "")
    # The failed tenant's transaction was rolled back: old revision, served again.
    assert "uq_notes_body" not in _indexes(deployed, "bad")
    assert deployed.get_tenant("bad").status is TenantStatus.ACTIVE
    assert "uq_notes_body" in _indexes(deployed, "ok1")

    # Fix the data and re-run: only the failed tenant is touched.
    with tenant_context("bad"), deployed.session() as s:
        s.execute(text("DELETE FROM notes WHERE id = (SELECT max(id) FROM notes)"))
        s.commit()
    rerun = Migrator(lifecycle_tenantry("postgresql")).run(parallel=2)
    assert [(r.target.label, r.outcome) for r in rerun.results] == [("bad", Outcome.UPGRADED)]
    assert rerun.untouched == 3  # ok1, ok2 and the global tables


def test_without_skip_failing_the_first_failure_stops_the_run(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path]
) -> None:
    t = lifecycle_tenantry("postgresql")
    _schema_tenants(t, "bad", "ok1", "ok2")
    add_revision(histories[0], "u1", None, UNIQUE_BODY)
    report = Migrator(lifecycle_tenantry("postgresql")).run(parallel=1)
    outcomes = [(r.target.label, r.outcome) for r in report.results]
    assert outcomes == [("bad", Outcome.FAILED), ("ok1", Outcome.NOT_RUN), ("ok2", Outcome.NOT_RUN)]
    assert "uq_notes_body" not in _indexes(t, "ok1")


def test_filters_select_tenants_and_stores(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path]
) -> None:
    t = lifecycle_tenantry("postgresql")
    for tid in ("a", "b", "c"):
        t.create_tenant(tid, isolation="schema")
    add_revision(histories[0], "a1", None, ADD_COLOR)
    migrator = Migrator(lifecycle_tenantry("postgresql"))
    report = migrator.run(tenant_ids=["b"])
    assert [r.target.label for r in report.results] == ["b"]
    assert "color" in _columns(t, "b")
    assert "color" not in _columns(t, "a")
    with pytest.raises(Exception, match="no store named 'nowhere'"):
        migrator.run(stores=["nowhere"])
    report = migrator.run(stores=["default"])
    assert sorted(r.target.label for r in report.results) == ["a", "c"]


def test_a_tenant_is_not_served_while_its_target_migrates(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path]
) -> None:
    """The migration itself records what the catalog and the queue said meanwhile."""
    t = lifecycle_tenantry("postgresql")
    t.create_tenant("acme", isolation="schema")
    t.create_tenant("live", isolation="schema")
    add_revision(
        histories[0],
        "s1",
        None,
        """
        op.execute(
            "CREATE TABLE seen AS SELECT c.status, q.paused "
            "FROM tenantry.tenantry_tenants c "
            "LEFT JOIN tenantry.tenantry_queue_tenants q ON q.tenant_id = c.id "
            "WHERE c.id = substr(current_schema(), 3)"
        )
        """,
    )
    deployed = lifecycle_tenantry("postgresql")
    Migrator(deployed).run(tenant_ids=["acme"])
    Migrator(deployed).run(tenant_ids=["live"], online=True)
    with deployed.default_store.admin_engine().connect() as conn:
        assert conn.execute(text('SELECT status, paused FROM "t_acme".seen')).one() == (
            "migrating",
            True,
        )
        assert conn.execute(text('SELECT status, paused FROM "t_live".seen')).one() == (
            "active",
            False,
        )
    assert deployed.get_tenant("acme").status is TenantStatus.ACTIVE


@BACKENDS
def test_a_migrating_tenant_is_refused_retryably(
    lifecycle_tenantry: LifecycleFactory, backend: str
) -> None:
    t = lifecycle_tenantry(backend)
    t.create_tenant("acme")
    t.catalog.set_status("acme", TenantStatus.MIGRATING)
    with tenant_context("acme"), pytest.raises(TenantMigratingError, match="being migrated"):
        t.session()
    assert issubclass(TenantMigratingError, TenantUnavailableError)  # HTTP 503


def test_a_run_that_died_after_committing_restores_the_status(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path]
) -> None:
    add_revision(histories[0], "b0", None, "pass")
    t = lifecycle_tenantry("postgresql")
    t.create_tenant("acme", isolation="schema")
    t.catalog.set_status("acme", TenantStatus.MIGRATING)  # committed, then the process died
    report = Migrator(t).run()
    assert [(r.target.label, r.outcome) for r in report.results] == [("acme", Outcome.CURRENT)]
    assert t.get_tenant("acme").status is TenantStatus.ACTIVE


def _write_config(path: Path, t: Tenantry, histories: tuple[Path, Path]) -> Path:
    url = t.default_store.config.url
    path.write_text(
        f'[tenantry]\ntenant_migrations = "{histories[0]}"\n'
        f'global_migrations = "{histories[1]}"\n\n[stores.default]\nurl = "{url}"\n'
    )
    return path


def _tenantry_cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tenantry.cli.main", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_killed_run_is_resumed_by_running_again(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path], tmp_path: Path
) -> None:
    t = lifecycle_tenantry("postgresql")
    for tid in ("a", "b", "slow", "z"):
        t.create_tenant(tid, isolation="schema")
    with t.default_store.admin_engine().begin() as conn:
        conn.execute(text("CREATE TABLE public.hold_migration (x int)"))
    add_revision(
        histories[0],
        "a1",
        None,
        ADD_COLOR
        + """
op.execute(
    "SELECT pg_sleep(60) WHERE current_schema() = 't_slow' "
    "AND EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'hold_migration')"
)
""",
    )
    config = _write_config(tmp_path / "tenantry.toml", t, histories)
    proc = _tenantry_cli("--config", str(config), "migrate", "--parallel", "2", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while t.get_tenant("slow").status is not TenantStatus.MIGRATING:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # inside pg_sleep now
    finally:
        proc.kill()
        proc.communicate()
    # What the server does once it notices the dead client: end its session.
    with t.default_store.admin_engine().begin() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE '%pg_sleep(60)%' "
                "AND pid <> pg_backend_pid()"
            )
        )
        conn.execute(text("DROP TABLE public.hold_migration"))
    assert t.get_tenant("slow").status is TenantStatus.MIGRATING  # left by the killed run
    assert "color" not in _columns_admin(t, "slow")  # its transaction never committed

    rerun = _tenantry_cli("--config", str(config), "migrate", "--json", cwd=tmp_path)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert '"target": "slow"' in out
    for tid in ("a", "b", "slow", "z"):
        assert t.get_tenant(tid).status is TenantStatus.ACTIVE
        assert "color" in _columns_admin(t, tid)


def _columns_admin(t: Tenantry, tenant_id: str) -> set[str]:
    with t.default_store.admin_engine().connect() as conn:
        return {
            c["name"] for c in inspect(conn).get_columns("notes", schema=schema_name(tenant_id))
        }


def test_no_configured_history_is_a_clear_error(make_tenantry: TenantryFactory) -> None:
    with pytest.raises(MigrationError, match="no migrations are configured"):
        Migrator(make_tenantry("sqlite"))


def test_history_with_two_heads_is_refused(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path]
) -> None:
    add_revision(histories[0], "x1", None, "pass")
    add_revision(histories[0], "x2", None, "pass")
    with pytest.raises(MigrationError, match="2 heads"):
        Migrator(lifecycle_tenantry("sqlite"))


def test_migrating_shared_tables_pauses_every_shared_tenant_of_the_store(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path]
) -> None:
    """--tenant a selects the store's shared tables, which serve b as well."""
    t = lifecycle_tenantry("postgresql")
    for tid in ("a", "b"):
        t.create_tenant(tid, isolation="shared")
    t.create_tenant("own", isolation="schema")
    add_revision(
        histories[0],
        "s1",
        None,
        """
        op.execute(
            "CREATE TABLE IF NOT EXISTS seen AS SELECT id, status "
            "FROM tenantry.tenantry_tenants ORDER BY id"
        )
        """,
    )
    deployed = lifecycle_tenantry("postgresql")
    report = Migrator(deployed).run(tenant_ids=["a"])
    assert [r.target.kind for r in report.results] == [TargetKind.SHARED]
    with deployed.default_store.admin_engine().connect() as conn:
        seen = conn.execute(text("SELECT id, status FROM public.seen ORDER BY id")).all()
    assert [tuple(r) for r in seen] == [("a", "migrating"), ("b", "migrating"), ("own", "active")]
    assert {x.id: x.status for x in deployed.list_tenants()} == {
        "a": TenantStatus.ACTIVE,
        "b": TenantStatus.ACTIVE,
        "own": TenantStatus.ACTIVE,
    }


async def test_the_worker_starts_no_job_of_a_tenant_while_it_migrates(
    lifecycle_tenantry: LifecycleFactory, histories: tuple[Path, Path]
) -> None:
    """A worker polls all through a 1.5 s migration; the job runs only once it is over."""
    seen: list[tuple[float, TenantStatus]] = []
    registry = JobRegistry()

    @registry.handler("work")
    def work(ctx: JobContext, payload: Item) -> None:
        seen.append((time.monotonic(), ctx.tenantry.get_tenant(ctx.job.tenant_id).status))

    t = lifecycle_tenantry("postgresql")
    t.create_tenant("acme", isolation="schema")
    Queue(t, registry).setup()
    with tenant_context("acme"):
        Queue(t, registry).enqueue("work", Item(n=1))
    add_revision(histories[0], "slow1", None, 'op.execute("SELECT pg_sleep(1.5)")')
    deployed = lifecycle_tenantry("postgresql")
    migration = asyncio.create_task(asyncio.to_thread(Migrator(deployed).run))
    await wait_until(
        lambda: t.get_tenant("acme").status is TenantStatus.MIGRATING, 10, what="migrating"
    )
    paused_at = time.monotonic()
    worker = Worker(deployed, registry, WorkerOptions(poll_interval=0.05, refresh_interval=0.2))
    try:
        async with running(worker):
            report = await migration
            assert [r.outcome for r in report.results if r.target.tenant_id] == [Outcome.UPGRADED]
            await wait_until(lambda: bool(seen), 10, what="the job")
    finally:
        await deployed.aclose()  # the worker's async engines, disposed on this loop
    ((ran_at, status),) = seen
    assert status is TenantStatus.ACTIVE
    assert ran_at - paused_at > 1.4  # not before the 1.5 s migration was over
    assert worker.stats.postponed == 0  # not even claimed while paused


def test_stamp_adopts_tables_made_before_the_history(
    make_tenantry: TenantryFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    histories: tuple[Path, Path],
) -> None:
    """Tenants created with no history have no version table; stamp records head, runs nothing."""
    from tests.conftest import make_config
    from tests.integration.lifecycle.support import with_migrations

    base = make_config("postgresql", request, tmp_path)
    before = make_tenantry("postgresql", base)  # no migrations configured
    before.create_tenant("old1", isolation="schema")
    before.create_tenant("old2", isolation="database")
    add_revision(histories[0], "r1", None, ADD_COLOR)  # must not run on the adopted tenants
    t = make_tenantry("postgresql", with_migrations(base, histories[0], None))
    t.create_tenant("new", isolation="schema")  # made at head: recorded already
    migrator = Migrator(t)
    with pytest.raises(MigrationError, match="cannot stamp 'nope'"):
        migrator.stamp_unrecorded("nope", tenant_ids=["old1"])
    stamped = migrator.stamp_unrecorded()
    assert sorted(s.label for s in stamped) == ["old1", "old2"]
    assert {v.target.label: v.revision for v in migrator.versions(migrator.targets())} == {
        "new": "r1",
        "old1": "r1",
        "old2": "r1",
    }
    assert Migrator(t).run().results == []
    assert "color" not in _columns(t, "old1")  # nothing was run
    assert migrator.stamp_unrecorded() == []
