"""Creating and deleting tenants: idempotent, resumable, and safe against hostile ids."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text

from tenantry import IsolationMode, Tenantry, tenant_context
from tenantry.errors import (
    InvalidTenantId,
    TenantExistsError,
    TenantNotFoundError,
    TenantStateError,
    TenantSuspendedError,
    TenantUnavailableError,
)
from tenantry.tenancy.catalog import Catalog, Tenant, TenantStatus
from tenantry.tenancy.isolation import schema_name, strategy_for
from tests.conftest import ALL_CASES, TenantryFactory
from tests.models import Note
from tests.unit.test_ids import HOSTILE

CASES = pytest.mark.parametrize(("backend", "mode"), ALL_CASES)


def _storage_exists(t: Tenantry, tenant_id: str, mode: str) -> bool:
    """Look at the database itself, not at the catalog."""
    store = t.default_store
    if mode == "schema":
        with store.admin_engine().connect() as conn:
            return schema_name(tenant_id) in inspect(conn).get_schema_names()
    if mode == "database":
        name = store.tenant_database_name(tenant_id)
        if store.is_postgres:
            with store.admin_engine().connect() as conn:
                found = conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).first()
                return found is not None
        return Path(name).exists()
    with store.admin_engine().connect() as conn:
        if store.is_postgres:
            conn.execute(
                text("SELECT set_config('tenantry.tenant_id', :t, false)"), {"t": tenant_id}
            )
        count = conn.execute(
            select(func.count()).select_from(Note).where(Note.tenant_id == tenant_id)
        ).scalar_one()
        return count > 0


@CASES
def test_create_then_delete_removes_storage_and_catalog_entry(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    tenant = t.create_tenant("acme", name="Acme Inc", isolation=mode, settings={"plan": "pro"})
    assert tenant.status is TenantStatus.ACTIVE
    assert tenant.isolation is IsolationMode(mode)
    got = t.get_tenant("acme")
    assert (got.name, got.settings, got.store) == ("Acme Inc", {"plan": "pro"}, "default")
    with tenant_context("acme"), t.session() as s:
        s.add(Note(body="keep me"))
        s.commit()
    assert _storage_exists(t, "acme", mode)
    t.delete_tenant("acme")
    assert not _storage_exists(t, "acme", mode)
    with pytest.raises(TenantNotFoundError):
        t.get_tenant("acme")
    with tenant_context("acme"), pytest.raises(TenantNotFoundError):
        t.session()
    # The id can be reused and starts empty.
    t.create_tenant("acme", isolation=mode)
    with tenant_context("acme"), t.session() as s:
        assert s.scalar(select(func.count()).select_from(Note)) == 0


@CASES
def test_provisioning_resumes_after_a_crash_half_way(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    t.setup()
    # A crash after the catalog row was written and storage half-made.
    t.catalog.insert(
        Tenant("acme", "Acme", TenantStatus.PROVISIONING, IsolationMode(mode), "default")
    )
    strategy_for(mode).provision(t.default_store, "acme", t.tenant_metadata)
    with tenant_context("acme"), pytest.raises(TenantUnavailableError, match="provisioning"):
        t.session()
    tenant = t.create_tenant("acme", isolation=mode)
    assert tenant.status is TenantStatus.ACTIVE
    with tenant_context("acme"), t.session() as s:
        s.add(Note(body="ok"))
        s.commit()
    # Running provisioning again on a finished tenant is harmless too.
    strategy_for(mode).provision(t.default_store, "acme", t.tenant_metadata)
    with pytest.raises(TenantExistsError):
        t.create_tenant("acme", isolation=mode)


@CASES
def test_delete_resumes_after_a_crash(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    t.create_tenant("acme", isolation=mode)
    t.catalog.set_status("acme", TenantStatus.DELETING)
    strategy_for(mode).deprovision(t.default_store, "acme", t.tenant_metadata)  # crash after this
    t.delete_tenant("acme")
    assert t.list_tenants() == []


def test_status_transitions(tenantry: Tenantry) -> None:
    tenantry.create_tenant("acme")
    with pytest.raises(TenantStateError, match="active"):
        tenantry.resume_tenant("acme")
    assert tenantry.suspend_tenant("acme").status is TenantStatus.SUSPENDED
    with pytest.raises(TenantStateError, match="suspended"):
        tenantry.suspend_tenant("acme")
    assert tenantry.resume_tenant("acme").status is TenantStatus.ACTIVE
    updated = tenantry.update_tenant("acme", name="ACME", settings={"weight": 2})
    assert (updated.name, updated.settings) == ("ACME", {"weight": 2})
    assert tenantry.get_tenant("acme").settings == {"weight": 2}
    with pytest.raises(TenantNotFoundError):
        tenantry.suspend_tenant("ghost")


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_ids_create_nothing(make_tenantry: TenantryFactory, bad: str) -> None:
    t = make_tenantry("sqlite")
    with pytest.raises(InvalidTenantId):
        t.create_tenant(bad, isolation="database")
    with pytest.raises(InvalidTenantId):
        t.get_tenant(bad)
    with pytest.raises(InvalidTenantId):
        t.delete_tenant(bad)
    assert not (
        Path(t.default_store.config.parsed_url().database or "").parent / "main_tenants"
    ).exists()


@pytest.mark.parametrize("mode", ["shared", "schema", "database"])
def test_hostile_ids_create_nothing_on_postgresql(
    make_tenantry: TenantryFactory, mode: str
) -> None:
    t = make_tenantry("postgresql")
    t.setup()
    with t.default_store.admin_engine().connect() as conn:
        before_schemas = set(inspect(conn).get_schema_names())
        before_dbs = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
    for bad in HOSTILE:
        with pytest.raises(InvalidTenantId):
            t.create_tenant(bad, isolation=mode)
    with t.default_store.admin_engine().connect() as conn:
        assert set(inspect(conn).get_schema_names()) == before_schemas
        after_dbs = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
    # Other tests create databases concurrently: only ours matter.
    prefix = t.default_store.tenant_database_name("x")[:-1]
    assert {d for d in after_dbs - before_dbs if d.startswith(prefix)} == set()
    assert t.list_tenants() == []


def test_database_engine_cache_is_bounded(make_tenantry: TenantryFactory, backend: str) -> None:
    t = make_tenantry(backend, max_tenant_engines=3)
    ids = [f"t{i}" for i in range(8)]
    for tid in ids:
        t.create_tenant(tid, isolation="database")
    for _ in range(2):
        for tid in ids:
            with tenant_context(tid), t.session() as s:
                s.add(Note(body=tid))
                s.commit()
            assert len(t.default_store.engines.tenant_sync) <= 3
    for tid in ids:
        with tenant_context(tid), t.session() as s:
            assert s.scalars(select(Note.body)).all() == [tid, tid]
    if backend == "postgresql":
        # Evicted pools were disposed: at most 3 tenant databases hold connections.
        prefix = t.default_store.tenant_database_name("x")[:-1]
        with t.default_store.admin_engine().connect() as conn:
            busy = conn.execute(
                text("SELECT count(DISTINCT datname) FROM pg_stat_activity WHERE datname LIKE :p"),
                {"p": prefix + "%"},
            ).scalar_one()
        assert busy <= 3


def test_catalog_cache_expires_and_is_invalidated(make_tenantry: TenantryFactory) -> None:
    now = [0.0]
    t = make_tenantry("sqlite")
    t.catalog._clock = lambda: now[0]
    t.create_tenant("acme")
    other = make_tenantry("sqlite", t.config)  # a second process on the same catalog
    other.catalog._clock = lambda: now[0]
    with tenant_context("acme"):
        other.session().close()  # caches "active"
        t.suspend_tenant("acme")
        other.session().close()  # still cached: within the TTL
        now[0] += t.config.catalog_cache_ttl + 0.1
        with pytest.raises(TenantSuspendedError):
            other.session()
        # Local writes invalidate at once.
        t.resume_tenant("acme")
        t.session().close()


@CASES
def test_a_new_tenant_never_adopts_leftover_data(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    t.create_tenant("acme", isolation=mode)
    with tenant_context("acme"), t.session() as s:
        s.add(Note(body="old data"))
        s.commit()
    t.catalog.delete("acme")  # the catalog forgot it; its storage is still there
    with pytest.raises(TenantExistsError, match="already exists on store"):
        t.create_tenant("acme", isolation=mode)
    assert t.list_tenants() == []
    assert _storage_exists(t, "acme", mode)  # refused, and nothing was touched


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_recreated_under_the_same_name_is_never_read_through_an_old_connection(
    make_tenantry: TenantryFactory, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's thread may open the tenant database while ``delete_tenant``
    drops it: after the engines are forgotten, before the files go. That
    engine, cached, kept its connection to the removed SQLite file, and the
    tenant created again under the same name was read through it."""
    t = make_tenantry(backend)
    t.create_tenant("acme", isolation="database")
    with tenant_context("acme"), t.session() as s:
        s.add(Note(body="old data"))
        s.commit()
    store = t.default_store
    forget = store.forget_tenant_engines
    raced: list[int] = []

    def forget_then_race(tenant_id: str) -> None:
        forget(tenant_id)
        if not raced:  # the first call: the database is still there
            engine = strategy_for("database").engine(store, tenant_id)  # bound to the tenant
            with engine.connect() as conn:
                raced.append(conn.execute(select(func.count()).select_from(Note)).scalar_one())

    monkeypatch.setattr(store, "forget_tenant_engines", forget_then_race)
    t.delete_tenant("acme")
    assert raced == [1]
    monkeypatch.undo()
    t.create_tenant("acme", isolation="database")
    with tenant_context("acme"), t.session() as s:
        assert s.execute(select(func.count()).select_from(Note)).scalar_one() == 0
    with store.tenant_engine("acme").connect() as conn:
        assert conn.execute(select(func.count()).select_from(Note)).scalar_one() == 0


def test_concurrent_first_catalog_setups_all_succeed(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    """Several processes starting at once on a fresh database (web workers, a queue
    worker) each create the catalog tables; none may fail because another won."""
    first = make_tenantry(backend)
    catalogs = [Catalog(make_tenantry(backend, first.config).catalog.engine) for _ in range(8)]
    barrier = threading.Barrier(len(catalogs))
    errors: list[BaseException] = []

    def start(catalog: Catalog) -> None:
        barrier.wait()
        try:
            catalog.ensure_schema()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(c,)) for c in catalogs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert first.list_tenants() == []


def test_sqlite_shared_tables_are_created_even_when_another_connection_commits_meanwhile(
    make_tenantry: TenantryFactory,
) -> None:
    """Creating the shared tables reads the schema, then writes it, in one transaction.

    On SQLite a transaction begun with a plain BEGIN reads a snapshot; if any
    other connection commits before its first write (a worker in the same
    process polls all the time), SQLite refuses the write at once with
    "database is locked". So the first shared tenant created while a worker ran
    could fail. The DDL transaction now starts as a write transaction.
    """
    import sqlite3
    from contextlib import closing

    from sqlalchemy import event

    t = make_tenantry("sqlite")
    t.setup()
    path = t.default_store.engine().url.database
    assert path is not None
    with closing(sqlite3.connect(path)) as side, side:
        side.execute("CREATE TABLE side_writes (n INTEGER)")
    committed: list[int] = []

    def other_connection_commits() -> None:
        with closing(sqlite3.connect(path, timeout=10)) as side, side:
            side.execute("INSERT INTO side_writes VALUES (1)")
        committed.append(1)

    writers: list[threading.Thread] = []

    def before(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "CREATE TABLE" in statement and not writers:
            writer = threading.Thread(target=other_connection_commits)
            writers.append(writer)
            writer.start()
            writer.join(1.0)  # done at once unless this transaction holds the write lock

    engine = t.default_store.admin_engine()
    event.listen(engine, "before_cursor_execute", before)
    try:
        t.create_tenant("acme", isolation="shared")
    finally:
        event.remove(engine, "before_cursor_execute", before)
        for writer in writers:
            writer.join(15)
    assert writers, "no CREATE TABLE was issued: the test did not test anything"
    assert committed == [1]  # the other connection got its turn afterwards
    with tenant_context("acme"), t.session() as s:
        s.add(Note(body="works"))
        s.commit()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_status_listing_is_fresh_for_the_ttl_and_yields_to_local_writes(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    """``Catalog.cache_statuses``: every tenant's status from one query, for a worker."""
    now = [100.0]
    t = make_tenantry(backend)
    t.catalog._clock = lambda: now[0]
    for tenant_id in ("acme", "globex", "initech"):
        t.create_tenant(tenant_id)
    other = make_tenantry(backend, t.config)  # a worker's process on the same catalog
    other.push.stop()  # the TTL alone; pushed changes are tested in test_push_invalidation.py
    other.catalog._clock = lambda: now[0]
    catalog = other.catalog
    assert catalog.status_cached("acme") is None  # nothing listed yet
    catalog.cache_statuses()
    assert catalog.get_cached("acme") is None  # only statuses, not whole entries
    assert [catalog.status_cached(x) for x in ("acme", "globex", "initech", "nobody")] == [
        TenantStatus.ACTIVE,
        TenantStatus.ACTIVE,
        TenantStatus.ACTIVE,
        None,
    ]
    t.suspend_tenant("globex")  # another process: seen once the listing expires
    now[0] += t.config.catalog_cache_ttl - 0.1
    assert catalog.status_cached("globex") is TenantStatus.ACTIVE
    now[0] += 0.2
    assert catalog.status_cached("globex") is None
    catalog.cache_statuses()
    assert catalog.status_cached("globex") is TenantStatus.SUSPENDED
    # A write in this process drops its tenant from the listing at once...
    other.suspend_tenant("acme")
    assert catalog.status_cached("acme") is None
    # ...and from a listing whose read began no earlier (it may predate the write).
    catalog.cache_statuses()
    assert catalog.status_cached("acme") is None
    assert catalog.status_cached("initech") is TenantStatus.ACTIVE
    now[0] += 0.1
    catalog.cache_statuses()
    assert catalog.status_cached("acme") is TenantStatus.SUSPENDED
    catalog.invalidate()  # everything
    assert catalog.status_cached("initech") is None
    catalog.cache_statuses()
    assert catalog.status_cached("initech") is None  # read began when all was invalidated
    now[0] += 0.1
    catalog.cache_statuses()
    assert catalog.status_cached("initech") is TenantStatus.ACTIVE


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_list_since_rereads_only_what_changed(make_tenantry: TenantryFactory, backend: str) -> None:
    t = make_tenantry(backend)
    for tenant_id in ("acme", "globex", "initech"):
        t.create_tenant(tenant_id)
    catalog = t.catalog
    first = {x.id: x for x in catalog.list()}
    assert catalog.list_since({}) == list(first.values())  # nothing known: all read
    t.update_tenant("globex", settings={"queue": {"weight": 3}})
    t.delete_tenant("initech")
    t.create_tenant("umbrella")
    again = catalog.list_since(first)
    assert [x.id for x in again] == ["acme", "globex", "umbrella"]
    assert again[0] is first["acme"]  # unchanged: the entry known, not re-read
    assert again[1] is not first["globex"]
    assert again[1].settings == {"queue": {"weight": 3}}
    assert again == catalog.list()
