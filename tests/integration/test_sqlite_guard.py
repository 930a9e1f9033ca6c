"""The SQLite guard: tenant tables are reached through tenantry's filter or not at all.

SQLite has no row-level security, so in shared mode raw SQL and Core
statements on tenant tables used to see every tenant's rows. These tests pin
what the guard refuses, what it lets through, and that tenantry's own paths
(provisioning, deletion, flushes, relationship loads) still work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from sqlalchemy import Engine, String, Table, delete, event, func, insert, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, selectinload

from tenantry import Tenantry, tenant_context
from tenantry.errors import IsolationError, UnguardedStatementError
from tenantry.tenancy import sqlite_guard
from tenantry.tenancy.models import tenant_metadata
from tenantry.tenancy.session import ALL_TENANTS, UNGUARDED
from tests.conftest import TenantryFactory, make_config
from tests.models import Note, Plan, Product, Review

NOTES = cast(Table, Note.__table__)
OPT_OUT = {UNGUARDED: True}


def _two(t: Tenantry, mode: str = "shared") -> None:
    for tid in ("acme", "globex"):
        t.create_tenant(tid, isolation=mode)
        with tenant_context(tid), t.session() as s:
            s.add(Note(body=f"{tid}-1"))
            product = Product(name=f"{tid}-anvil")
            s.add(product)
            s.flush()
            s.add(Review(product_id=product.id, stars=5))
            s.commit()


@pytest.fixture
def shared(make_tenantry: TenantryFactory) -> Tenantry:
    t = make_tenantry("sqlite")
    _two(t)
    return t


RAW_STATEMENTS = [
    "SELECT body FROM notes",
    "SELECT count(*) FROM notes",
    "UPDATE notes SET body = 'x'",
    "DELETE FROM notes",
    "INSERT INTO notes (tenant_id, body) VALUES ('globex', 'planted')",
    "DROP TABLE notes",
    "CREATE INDEX ix_evil ON notes (body)",
]


@pytest.mark.parametrize("sql", RAW_STATEMENTS)
def test_raw_sql_on_tenant_tables_is_refused(shared: Tenantry, sql: str) -> None:
    with tenant_context("acme"), shared.session() as s:
        with pytest.raises(UnguardedStatementError) as caught:
            s.execute(text(sql))
        assert "'notes'" in str(caught.value)
        assert UNGUARDED in str(caught.value)
        assert isinstance(caught.value, IsolationError)
        # The transaction survives the refusal; the ORM still works in it.
        assert s.scalars(select(Note.body)).all() == ["acme-1"]
    with tenant_context("globex"), shared.session() as s:
        assert s.scalars(select(Note.body)).all() == ["globex-1"]


CORE_STATEMENTS: list[Any] = [
    select(NOTES),
    select(func.count()).select_from(NOTES),
    select(NOTES).where(NOTES.c.tenant_id == "globex"),
    insert(NOTES).values(tenant_id="globex", body="planted"),
    update(NOTES).values(body="x"),
    delete(NOTES),
]


@pytest.mark.parametrize("stmt", CORE_STATEMENTS)
def test_core_statements_on_tenant_tables_are_refused(shared: Tenantry, stmt: Any) -> None:
    with (
        tenant_context("acme"),
        shared.session() as s,
        pytest.raises(UnguardedStatementError, match="notes"),
    ):
        s.execute(stmt)
    with tenant_context("globex"), shared.session() as s:
        assert s.scalars(select(Note.body)).all() == ["globex-1"]


def test_orm_paths_still_work(shared: Tenantry) -> None:
    with tenant_context("acme"), shared.session() as s:
        assert s.scalars(select(Note.body)).all() == ["acme-1"]
        assert s.scalar(select(func.count()).select_from(Note)) == 1
        product = s.scalars(select(Product)).one()
        assert s.get(Product, product.id) is product
        assert [r.stars for r in product.reviews] == [5]  # lazy load
        s.expunge_all()
        loaded = s.scalars(select(Product).options(selectinload(Product.reviews))).one()
        assert [r.stars for r in loaded.reviews] == [5]
        assert s.scalars(select(Review)).one().product.name == "acme-anvil"
        # ORM bulk insert, flush insert/update/delete, criteria update/delete.
        s.execute(insert(Note), [{"body": "bulk-a"}, {"body": "bulk-b"}])
        note = Note(body="flushed")
        s.add(note)
        s.flush()
        note.body = "changed"
        s.flush()
        s.delete(note)
        s.execute(update(Note).where(Note.body == "bulk-a").values(body="bulk-a2"))
        s.execute(delete(Note).where(Note.body == "bulk-b"))
        s.commit()
        assert sorted(s.scalars(select(Note.body))) == ["acme-1", "bulk-a2"]
        # The opt-out lifts the guard, not the ORM filter.
        assert set(s.scalars(select(Note.tenant_id).execution_options(**OPT_OUT))) == {"acme"}
    with tenant_context("globex"), shared.session() as s:
        assert s.scalars(select(Note.body)).all() == ["globex-1"]


def test_an_orm_statement_naming_a_tenant_table_object_gets_through(shared: Tenantry) -> None:
    """A documented gap (docs/isolation.md, section 8): the guard vouches for the whole
    ORM statement, and the ORM's criteria cover its entities only, not a ``Table``
    it names as well."""
    with tenant_context("acme"), shared.session() as s:
        stmt = select(Product.name, NOTES.c.tenant_id).join_from(Product, NOTES, NOTES.c.id > 0)
        rows = s.execute(stmt).all()
        assert {row.tenant_id for row in rows} == {"acme", "globex"}


class _LooseBase(DeclarativeBase):
    metadata = tenant_metadata()


class _Memo(_LooseBase):
    """On a tenant table, but not TenantScoped: the ORM criteria do not reach it."""

    __tablename__ = "guard_memos"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(String(40))


def test_a_mapped_class_that_is_not_tenant_scoped_is_refused(
    request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    t = Tenantry(make_config("sqlite", request, tmp_path), tenant_metadata=_LooseBase.metadata)
    try:
        t.create_tenant("acme")
        with t.default_store.admin_engine().begin() as conn:
            conn.execute(insert(_Memo).values(tenant_id="globex", body="g"))
        with tenant_context("acme"), t.session() as s:
            with pytest.raises(UnguardedStatementError, match="guard_memos"):
                s.scalars(select(_Memo.body)).all()
            s.add(_Memo(tenant_id="acme", body="a"))
            with pytest.raises(UnguardedStatementError, match="guard_memos"):
                s.flush()
    finally:
        t.close()


def test_global_tables_by_raw_sql_still_work(shared: Tenantry) -> None:
    with tenant_context("acme"), shared.session() as s:
        s.add(Plan(name="gold"))
        s.commit()
        assert s.execute(text("SELECT name FROM plans")).scalars().all() == ["gold"]


def test_the_opt_out_is_per_statement(shared: Tenantry) -> None:
    sql = "SELECT tenant_id FROM notes ORDER BY tenant_id"
    with tenant_context("acme"), shared.session() as s:
        rows = s.execute(text(sql).execution_options(**OPT_OUT)).scalars().all()
        assert rows == ["acme", "globex"]
        # The same SQL text, prepared and cached while allowed, is refused without it.
        with pytest.raises(UnguardedStatementError):
            s.execute(text(sql))
        assert s.execute(text(sql), execution_options=OPT_OUT).scalars().all() == rows


def test_all_tenants_stays_an_explicit_bypass(shared: Tenantry) -> None:
    with tenant_context("acme"), shared.session() as s:
        rows = s.scalars(select(Note.tenant_id).execution_options(**{ALL_TENANTS: True})).all()
        assert sorted(rows) == ["acme", "globex"]


@contextmanager
def _captured_sql(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def capture(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", capture)


def test_a_statement_cached_while_allowed_is_not_reused_while_refused(shared: Tenantry) -> None:
    """The ORM's filtered SQL, sent as raw SQL with another tenant's id, on the same connection."""
    engine = shared.default_store.engine()
    with tenant_context("acme"), shared.session() as s:
        with _captured_sql(engine) as seen:
            assert s.scalars(select(Note.body)).all() == ["acme-1"]
        (orm_sql,) = [q for q in seen if "notes" in q]
        assert "tenant_id = ?" in orm_sql
        with pytest.raises(UnguardedStatementError):
            s.connection().exec_driver_sql(orm_sql, ("globex",))


def test_the_memory_of_allowed_statements_is_bounded(
    shared: Tenantry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the limit it is forgotten, and SQLite re-checks every prepared statement."""
    monkeypatch.setattr(sqlite_guard, "KNOWN_LIMIT", 2)
    engine = shared.default_store.engine()
    with tenant_context("acme"), shared.session() as s:
        with _captured_sql(engine) as seen:
            assert s.scalars(select(Note.body)).all() == ["acme-1"]
        (orm_sql,) = [q for q in seen if "notes" in q]
        for n in range(4):  # more allowed texts than the memory holds
            s.scalars(select(Note.body).where(Note.id > n)).all()
        with pytest.raises(UnguardedStatementError):
            s.connection().exec_driver_sql(orm_sql, ("globex",))


def test_orm_bulk_update_by_primary_key_is_refused(shared: Tenantry) -> None:
    """It ignores the tenant criteria, so it cannot be vouched for."""
    with tenant_context("globex"), shared.session() as s:
        globex_id = s.scalars(select(Note.id)).one()
    with tenant_context("acme"), shared.session() as s, pytest.raises(UnguardedStatementError):
        s.execute(update(Note), [{"id": globex_id, "body": "hacked"}])
    with tenant_context("globex"), shared.session() as s:
        assert s.scalars(select(Note.body)).all() == ["globex-1"]


def test_global_sessions_and_the_app_engine_are_refused(shared: Tenantry) -> None:
    with shared.global_session() as g:
        with pytest.raises(UnguardedStatementError):
            g.scalars(select(Note)).all()
        g.add(Note(body="planted", tenant_id="globex"))
        with pytest.raises(UnguardedStatementError):
            g.flush()
        g.rollback()
    with shared.default_store.engine().connect() as conn:
        with pytest.raises(UnguardedStatementError):
            conn.execute(text("SELECT body FROM notes"))
        assert len(conn.execute(text("SELECT body FROM notes"), execution_options=OPT_OUT).all())
    with shared.default_store.admin_engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(NOTES)).scalar() == 2


@pytest.mark.parametrize("mode", ["shared", "database"])
def test_attach_is_refused(make_tenantry: TenantryFactory, mode: str, tmp_path: Any) -> None:
    t = make_tenantry("sqlite")
    _two(t, mode)
    other = tmp_path / "other.db"
    with (
        tenant_context("acme"),
        t.session() as s,
        pytest.raises(UnguardedStatementError, match="ATTACH"),
    ):
        s.execute(text("ATTACH DATABASE :f AS other"), {"f": str(other)})
    with tenant_context("acme"), t.session() as s:
        s.execute(text("ATTACH DATABASE :f AS other"), {"f": str(other)}, execution_options=OPT_OUT)
        s.execute(text("DETACH DATABASE other"))
        with pytest.raises(UnguardedStatementError, match="ATTACH"):
            s.execute(text("ATTACH DATABASE :f AS other"), {"f": str(other)})


def test_database_mode_raw_sql_is_not_guarded(make_tenantry: TenantryFactory) -> None:
    """One file per tenant: raw SQL there reaches that tenant's rows only."""
    t = make_tenantry("sqlite")
    _two(t, "database")
    with tenant_context("acme"), t.session() as s:
        assert s.execute(text("SELECT body FROM notes")).scalars().all() == ["acme-1"]


async def test_async_sessions_are_guarded(shared: Tenantry) -> None:
    async with tenant_context("acme"), shared.async_session() as s:
        with pytest.raises(UnguardedStatementError, match="notes"):
            await s.execute(text("SELECT body FROM notes"))
        with pytest.raises(UnguardedStatementError, match="notes"):
            await s.execute(select(NOTES))
        with pytest.raises(UnguardedStatementError, match="ATTACH"):
            await s.execute(text("ATTACH DATABASE ':memory:' AS other"))
        s.add(Note(body="async"))
        await s.commit()
        assert sorted((await s.scalars(select(Note.body))).all()) == ["acme-1", "async"]
        product = (await s.scalars(select(Product).options(selectinload(Product.reviews)))).one()
        assert [r.stars for r in product.reviews] == [5]
        opted = await s.execute(text("SELECT count(*) FROM notes"), execution_options=OPT_OUT)
        assert opted.scalar() == 3
    async with shared.async_global_session() as g:
        with pytest.raises(UnguardedStatementError):
            await g.execute(select(Note))
    await shared.aclose()


def test_lifecycle_of_a_shared_tenant_still_works(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("sqlite")
    _two(t)
    t.delete_tenant("globex")
    with t.default_store.admin_engine().connect() as conn:
        assert conn.execute(select(NOTES.c.tenant_id)).scalars().all() == ["acme"]
    t.create_tenant("globex")
    with tenant_context("globex"), t.session() as s:
        assert s.scalars(select(Note.body)).all() == []


def test_guard_cost_on_the_orm_query_path(make_tenantry: TenantryFactory) -> None:
    """Not a benchmark: fails only if the guard made ORM queries several times slower."""
    t = make_tenantry("sqlite")
    _two(t)
    stmt = select(Note.body)

    def run(**options: Any) -> float:
        with tenant_context("acme"), t.session() as s:
            s.scalars(stmt.execution_options(**options)).all()
            start = time.thread_time()
            for _ in range(300):
                s.scalars(stmt.execution_options(**options)).all()
            return time.thread_time() - start

    guarded = min(run() for _ in range(3))
    unguarded = min(run(**OPT_OUT) for _ in range(3))
    assert guarded < unguarded * 3
