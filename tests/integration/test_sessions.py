"""Tenant-bound sessions in every isolation mode, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import selectinload

from tenantry import Tenantry, tenant_context
from tenantry.errors import (
    CrossTenantAccessError,
    TenantNotFoundError,
    TenantNotSetError,
    TenantSuspendedError,
    TenantUnavailableError,
    UnsupportedIsolation,
)
from tenantry.tenancy.catalog import TenantStatus
from tenantry.tenancy.session import ALL_TENANTS
from tests.conftest import ALL_CASES, TenantryFactory
from tests.models import Note, Plan, Product, Review

CASES = pytest.mark.parametrize(("backend", "mode"), ALL_CASES)


def _seed(t: Tenantry, mode: str, tenants: tuple[str, ...] = ("acme", "globex", "initech")) -> None:
    for tid in tenants:
        t.create_tenant(tid, isolation=mode)
        with tenant_context(tid), t.session() as s:
            for i in range(3):
                product = Product(name=f"{tid}-p{i}", price_cents=100 * i)
                product.reviews.append(Review(stars=i + 1))
                s.add(product)
                s.add(Note(body=f"{tid}-note{i}"))
            s.commit()


@CASES
def test_each_tenant_sees_only_its_rows(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _seed(t, mode)
    for tid in ("acme", "globex", "initech"):
        with tenant_context(tid), t.session() as s:
            names = s.scalars(select(Product.name).order_by(Product.name)).all()
            assert names == [f"{tid}-p{i}" for i in range(3)]
            assert s.scalar(select(func.count()).select_from(Note)) == 3
            # Joins and relationship loads are filtered as well.
            joined = s.execute(select(Product.name, Review.stars).join(Product.reviews)).all()
            assert {n for n, _ in joined} == set(names)
            loaded = s.scalars(select(Product).options(selectinload(Product.reviews))).all()
            assert all(len(p.reviews) == 1 for p in loaded)
            assert all(r.tenant_id == tid for p in loaded for r in p.reviews)
            # Every row is stamped with its tenant, in every mode.
            assert set(s.scalars(select(Note.tenant_id))) == {tid}


@CASES
def test_bulk_update_and_delete_touch_only_own_rows(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _seed(t, mode)
    with tenant_context("acme"), t.session() as s:
        s.execute(update(Product).values(price_cents=1))
        s.execute(delete(Note))
        s.commit()
    with tenant_context("globex"), t.session() as s:
        assert s.scalars(select(Product.price_cents).order_by(Product.id)).all() == [0, 100, 200]
        assert s.scalar(select(func.count()).select_from(Note)) == 3
    with tenant_context("acme"), t.session() as s:
        assert set(s.scalars(select(Product.price_cents))) == {1}
        assert s.scalar(select(func.count()).select_from(Note)) == 0


@CASES
def test_get_by_primary_key_cannot_reach_another_tenant(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _seed(t, mode, ("acme", "globex"))
    with tenant_context("globex"), t.session() as s:
        globex_ids = set(s.scalars(select(Note.id)))
    with tenant_context("acme"), t.session() as s:
        acme_ids = set(s.scalars(select(Note.id)))
        for pk in globex_ids - acme_ids:
            assert s.get(Note, pk) is None


@CASES
def test_inserting_for_another_tenant_is_refused(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _seed(t, mode, ("acme", "globex"))
    with tenant_context("acme"), t.session() as s:
        s.add(Note(body="sneaky", tenant_id="globex"))
        with pytest.raises(CrossTenantAccessError):
            s.commit()
        s.rollback()
        note = s.scalars(select(Note)).first()
        assert note is not None
        note.tenant_id = "globex"
        with pytest.raises(CrossTenantAccessError):
            s.commit()
    with tenant_context("globex"), t.session() as s:
        assert s.scalar(select(func.count()).select_from(Note).where(Note.body == "sneaky")) == 0


@CASES
def test_no_context_is_an_error_never_a_default(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _seed(t, mode, ("acme",))
    with pytest.raises(TenantNotSetError):
        t.session()


@CASES
def test_session_is_pinned_to_its_tenant(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _seed(t, mode, ("acme", "globex"))
    with tenant_context("acme"):
        s = t.session()
    with tenant_context("globex"), pytest.raises(CrossTenantAccessError):
        s.scalars(select(Note)).all()
    # Outside any context the session still only sees its own tenant.
    assert set(s.scalars(select(Note.tenant_id))) == {"acme"}
    s.close()


@CASES
def test_suspended_tenant_cannot_open_sessions(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _seed(t, mode, ("acme",))
    t.suspend_tenant("acme")
    with tenant_context("acme"), pytest.raises(TenantSuspendedError):
        t.session()
    t.resume_tenant("acme")
    with tenant_context("acme"), t.session() as s:
        assert s.scalar(select(func.count()).select_from(Note)) == 3


@CASES
async def test_async_sessions(make_tenantry: TenantryFactory, backend: str, mode: str) -> None:
    t = make_tenantry(backend)
    _seed(t, mode, ("acme", "globex"))
    for tid in ("acme", "globex"):
        async with tenant_context(tid), t.async_session() as s:
            names = (await s.scalars(select(Product.name).order_by(Product.name))).all()
            assert names == [f"{tid}-p{i}" for i in range(3)]
            s.add(Note(body=f"{tid}-async"))
            await s.commit()
            rows = (await s.scalars(select(Note.tenant_id))).all()
            assert set(rows) == {tid}
            assert len(rows) == 4
    with pytest.raises(TenantNotSetError):
        await t.open_async_session()
    t.suspend_tenant("globex")
    async with tenant_context("globex"):
        with pytest.raises(TenantSuspendedError):
            await t.open_async_session()
    await t.aclose()


def test_unknown_and_unready_tenants(tenantry: Tenantry) -> None:
    tenantry.setup()
    with tenant_context("ghost"), pytest.raises(TenantNotFoundError):
        tenantry.session()
    tenantry.create_tenant("acme")
    tenantry.catalog.set_status("acme", TenantStatus.DELETING)
    with tenant_context("acme"), pytest.raises(TenantUnavailableError, match="deleting"):
        tenantry.session()


def test_schema_mode_on_sqlite_names_the_alternatives(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("sqlite")
    with pytest.raises(UnsupportedIsolation, match=r"'database'.*'shared'"):
        t.create_tenant("acme", isolation="schema")
    assert t.list_tenants() == []


def test_all_tenants_option_is_an_explicit_bypass(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("sqlite")
    _seed(t, "shared", ("acme", "globex"))
    with tenant_context("acme"), t.session() as s:
        every = s.scalars(select(Note.tenant_id).execution_options(**{ALL_TENANTS: True})).all()
        assert set(every) == {"acme", "globex"}


def test_global_tables(tenantry: Tenantry) -> None:
    tenantry.setup()
    with tenantry.global_session() as g:
        g.add(Plan(name="pro"))
        g.commit()
    tenantry.create_tenant("acme")
    with tenant_context("acme"), tenantry.session() as s:
        # Global tables stay reachable from a tenant session, unfiltered.
        assert s.scalars(select(Plan.name)).all() == ["pro"]


def test_schema_mode_raw_sql_uses_the_tenant_schema(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("postgresql")
    _seed(t, "schema", ("acme", "globex"))
    with tenant_context("acme"), t.session() as s:
        rows = s.execute(text("SELECT DISTINCT tenant_id FROM notes")).scalars().all()
        assert rows == ["acme"]
        # pg_temp last: a temporary table never shadows the tenant's tables.
        assert s.execute(text("SHOW search_path")).scalar() == '"t_acme", public, pg_temp'
    # SET LOCAL vanished with the transaction: the pooled connection is clean again.
    with t.default_store.engine().connect() as conn:
        assert conn.execute(text("SHOW search_path")).scalar() == '"$user", public'
        assert conn.execute(
            text("SELECT current_setting('tenantry.tenant_id', true)")
        ).scalar() in (
            None,
            "",
        )
