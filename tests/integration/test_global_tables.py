"""Global tables from tenant sessions, whatever the tenant's mode, store and session kind.

Global tables live in the default store's database. A tenant whose tables are
elsewhere (a database of its own, another store) still reads and writes them
through its session: statements are routed by the tables they name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from tenantry import IsolationMode, StoreConfig, Tenantry, TenantryConfig, tenant_context
from tenantry.errors import GlobalTableJoinError
from tenantry.lifecycle.move import move_tenant
from tests.conftest import ALL_CASES, BACKENDS, TenantryFactory, make_config
from tests.models import Note, Plan, Product

CASES = pytest.mark.parametrize(("backend", "mode"), ALL_CASES)
PLANS = Plan.__table__


def _with_plans(t: Tenantry) -> None:
    t.setup()
    with t.global_session() as g:
        g.add_all([Plan(name="free"), Plan(name="pro")])
        g.commit()


def _read_sync(t: Tenantry, tenant_id: str) -> None:
    with tenant_context(tenant_id), t.session() as s:
        assert s.scalars(select(Plan.name).order_by(Plan.name)).all() == ["free", "pro"]  # ORM
        assert s.scalars(select(PLANS.c.name).order_by(PLANS.c.name)).all() == ["free", "pro"]
        assert s.scalar(select(func.count()).select_from(PLANS)) == 2  # Core
        pro = s.scalars(select(Plan).where(Plan.name == "pro")).one()
        assert s.get(Plan, pro.id) is pro
        # The tenant's own tables, in the same session and transaction.
        s.add(Note(body=f"{tenant_id} note"))
        s.commit()
        assert s.scalars(select(Note.body)).all() == [f"{tenant_id} note"]


async def _read_async(t: Tenantry, tenant_id: str) -> None:
    with tenant_context(tenant_id):
        async with t.async_session() as s:
            names = (await s.scalars(select(Plan.name).order_by(Plan.name))).all()
            assert names == ["free", "pro"]
            core = (await s.scalars(select(PLANS.c.name).order_by(PLANS.c.name))).all()
            assert core == ["free", "pro"]
            assert await s.scalar(select(func.count()).select_from(Note)) == 1


@CASES
async def test_global_tables_are_read_from_every_mode(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _with_plans(t)
    t.create_tenant("acme", isolation=mode)
    _read_sync(t, "acme")
    await _read_async(t, "acme")
    if backend == "postgresql" and mode == "database":
        # The global tables' connection is a global session's: no tenant settings on it.
        tenant_setting = func.current_setting("tenantry.tenant_id", True)
        with tenant_context("acme"), t.session() as s:
            assert s.scalar(select(tenant_setting).select_from(PLANS).limit(1)) in (None, "")
            assert s.scalar(select(tenant_setting).select_from(Note.__table__)) == "acme"
            assert s.scalar(select(tenant_setting)) == "acme"  # names no table: the tenant's
    await t.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_tenant_writes_global_tables_as_other_modes_do(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    t = make_tenantry(backend)
    _with_plans(t)
    t.create_tenant("acme", isolation="database")
    with tenant_context("acme"), t.session() as s:
        s.add(Plan(name="enterprise"))
        s.add(Note(body="chose enterprise"))
        s.commit()
    with t.global_session() as g:
        assert g.scalars(select(Plan.name).order_by(Plan.name)).all() == [
            "enterprise",
            "free",
            "pro",
        ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_statement_cannot_join_a_global_and_an_own_database_table(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    t = make_tenantry(backend)
    _with_plans(t)
    t.create_tenant("acme", isolation="database")
    t.create_tenant("globex", isolation="shared")
    joined = select(Product.name, Plan.name).join(Plan, Plan.id == Product.price_cents)
    with tenant_context("acme"), t.session() as s:
        with pytest.raises(GlobalTableJoinError, match=r"plans.*products"):
            s.execute(joined)
        # Raw SQL names no table SQLAlchemy can route: it runs on the tenant's database.
        with pytest.raises(DBAPIError):
            s.execute(text("SELECT count(*) FROM plans"))
    # Where both live in one database, the join is an ordinary one.
    with tenant_context("globex"), t.session() as s:
        assert s.execute(joined).all() == []


async def test_a_tenant_on_another_store_reads_the_default_stores_global_tables(
    tmp_path: Path,
) -> None:
    config = TenantryConfig(
        stores={
            "default": StoreConfig("default", f"sqlite:///{tmp_path / 'main.db'}"),
            "eu": StoreConfig("eu", f"sqlite:///{tmp_path / 'eu' / 'eu.db'}"),
        },
        data_dir=str(tmp_path),
    )
    with Tenantry(config) as t:
        _with_plans(t)
        t.create_tenant("acme", isolation="shared", store="eu")
        _read_sync(t, "acme")
        await _read_async(t, "acme")
        await t.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_app_reading_global_tables_keeps_working_across_a_move_to_its_own_database(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    t = Tenantry(make_config(backend, request, tmp_path))
    try:
        _with_plans(t)
        t.create_tenant("acme", isolation="shared")
        _read_sync(t, "acme")
        result = move_tenant(t, "acme", isolation=IsolationMode.DATABASE)
        assert result.tenant.isolation is IsolationMode.DATABASE
        with tenant_context("acme"), t.session() as s:
            assert s.scalars(select(Plan.name).order_by(Plan.name)).all() == ["free", "pro"]
            assert s.scalars(select(Note.body)).all() == ["acme note"]
        await _read_async(t, "acme")
    finally:
        await t.aclose()
        t.close()
