"""Paths around the ORM's tenant wall that tenantry closes (or documents)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import make_url

from tenantry import StoreConfig, Tenantry, TenantryConfig, tenant_context
from tenantry.errors import CrossTenantAccessError
from tenantry.tenancy.config import load_config
from tenantry.tenancy.session import ALL_TENANTS
from tests.conftest import ALL_CASES, TenantryFactory
from tests.models import Note, Plan

CASES = pytest.mark.parametrize(("backend", "mode"), ALL_CASES)


def _two(t: Tenantry, mode: str) -> None:
    for tid in ("acme", "globex"):
        t.create_tenant(tid, isolation=mode)
        with tenant_context(tid), t.session() as s:
            s.add(Note(body=f"{tid}-1"))
            s.commit()


@CASES
def test_user_info_cannot_switch_off_isolation(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _two(t, mode)
    with tenant_context("acme"), t.session(info={"request_id": "r1"}) as s:
        assert s.info["request_id"] == "r1"
        assert s.scalars(select(Note.body)).all() == ["acme-1"]


@CASES
def test_orm_bulk_insert_is_stamped_and_guarded(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _two(t, mode)
    with tenant_context("acme"), t.session() as s:
        s.execute(insert(Note), [{"body": "bulk-a"}, {"body": "bulk-b"}])
        with pytest.raises(CrossTenantAccessError):
            s.execute(insert(Note), [{"body": "evil", "tenant_id": "globex"}])
        with pytest.raises(CrossTenantAccessError):
            s.execute(insert(Note).values(body="evil", tenant_id="globex"))
        s.commit()
        assert set(s.scalars(select(Note.tenant_id))) == {"acme"}
        assert s.scalar(select(func.count()).select_from(Note)) == 3


@CASES
def test_orm_update_cannot_move_rows_to_another_tenant(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _two(t, mode)
    with tenant_context("acme"), t.session() as s:
        with pytest.raises(CrossTenantAccessError):
            s.execute(update(Note).values(tenant_id="globex"))
        s.rollback()
    with tenant_context("globex"), t.session() as s:
        assert s.scalars(select(Note.body)).all() == ["globex-1"]


@CASES
def test_raw_connection_use_is_checked_too(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    _two(t, mode)
    with tenant_context("acme"):
        s = t.session()
    with tenant_context("globex"), pytest.raises(CrossTenantAccessError):
        s.connection()
    s.close()


def test_all_tenants_lifts_only_the_orm_filter_rls_stays(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("postgresql")
    _two(t, "shared")
    with tenant_context("acme"), t.session() as s:
        rows = s.scalars(select(Note.tenant_id).execution_options(**{ALL_TENANTS: True})).all()
    assert rows == ["acme"]  # the database's wall still holds


def test_global_tables_readable_on_a_schema_only_store(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("postgresql")
    t.setup()
    with t.global_session() as g:
        g.add(Plan(name="pro"))
        g.commit()
    t.create_tenant("acme", isolation="schema")
    with tenant_context("acme"), t.session() as s:
        assert s.scalars(select(Plan.name)).all() == ["pro"]


def test_env_url_keeps_the_rest_of_the_store(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "tenantry.toml"
    path.write_text(
        '[stores.default]\nurl = "postgresql://a@h/d"\nadmin_url = "postgresql://o@h/d"\n'
        'rls_role = "my_rls"\npool_size = 3\n'
    )
    store = load_config(path, environ={"TENANTRY_DATABASE_URL": "postgresql://b@h/d"}).store(
        "default"
    )
    assert (store.url, store.admin_url, store.rls_role, store.pool_size) == (
        "postgresql://b@h/d",
        "postgresql://o@h/d",
        "my_rls",
        3,
    )


def test_store_repr_masks_passwords() -> None:
    store = StoreConfig("s", "postgresql://a:hunter2@h/d", admin_url="postgresql://o:hunter3@h/d")
    assert "hunter" not in repr(store)
    assert "hunter" not in str(TenantryConfig(stores={"s": store}, default_store="s"))


@pytest.fixture
def owner_login(pg_database: str) -> Iterator[str]:
    """A non-superuser login that owns the tenant tables (option A without a superuser)."""
    role = f"tt_own_{uuid.uuid4().hex[:8]}"
    url = make_url(pg_database)
    info = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
    with psycopg.connect(**info, autocommit=True) as conn:  # type: ignore[arg-type]
        ident = sql.Identifier(role)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(ident))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(str(url.database)), ident
            )
        )
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(ident))
        conn.execute(sql.SQL("ALTER SCHEMA tenantry OWNER TO {}").format(ident))
    yield role
    with psycopg.connect(**info, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_non_superuser_owner_with_rls_role(
    make_tenantry: TenantryFactory, pg_database: str, owner_login: str
) -> None:
    url = make_url(pg_database).set(username=owner_login).render_as_string(False)
    t = make_tenantry("postgresql", TenantryConfig.single(url))
    _two(t, "shared")
    with tenant_context("acme"), t.session() as s:
        assert s.execute(text("SELECT body FROM notes")).scalars().all() == ["acme-1"]
        # Not the owner: the session login tenantry created for this database.
        assert s.execute(text("SELECT current_user")).scalar() == t.default_store.session_login
