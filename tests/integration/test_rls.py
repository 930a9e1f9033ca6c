"""Row-level security: the second wall in shared mode on PostgreSQL.

These tests bypass the ORM on purpose: raw SQL, raw connections and a separate
non-owner login role, to show the database itself enforces isolation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from tenantry import Tenantry, TenantryConfig, tenant_context
from tenantry.tenancy.config import StoreConfig
from tests.conftest import TenantryFactory

pytestmark = pytest.mark.postgres


def _seed(t: Tenantry) -> None:
    for tid in ("acme", "globex"):
        t.create_tenant(tid, isolation="shared")
        with tenant_context(tid), t.session() as s:
            s.execute(
                text("INSERT INTO notes (tenant_id, body) VALUES (:t, 'a'), (:t, 'b')"), {"t": tid}
            )
            s.commit()


def test_raw_sql_in_a_tenant_session_sees_only_that_tenant(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("postgresql")
    _seed(t)
    with tenant_context("acme"), t.session() as s:
        assert s.execute(text("SELECT tenant_id FROM notes")).scalars().all() == ["acme", "acme"]
        # The session login tenantry made for this database: not the superuser of the URL.
        assert s.execute(text("SELECT current_user")).scalar() == t.default_store.session_login
        # UPDATE/DELETE without WHERE only reach own rows.
        s.execute(text("UPDATE notes SET body = 'x'"))
        s.execute(text("DELETE FROM notes WHERE body = 'x' AND tenant_id = 'globex'"))
        s.commit()
    with tenant_context("globex"), t.session() as s:
        assert s.execute(text("SELECT body FROM notes ORDER BY body")).scalars().all() == ["a", "b"]


def test_raw_insert_for_another_tenant_violates_the_policy(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("postgresql")
    _seed(t)
    with tenant_context("acme"), t.session() as s:
        with pytest.raises(ProgrammingError, match="row-level security"):
            s.execute(text("INSERT INTO notes (tenant_id, body) VALUES ('globex', 'evil')"))
        s.rollback()


def test_no_tenant_set_means_zero_rows(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("postgresql")
    _seed(t)
    with t.default_store.engine().begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar() == 0
        # Even a tenant id that matches nothing does not widen it.
        conn.execute(text("SELECT set_config('tenantry.tenant_id', '', true)"))
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar() == 0


def test_policies_are_forced_on_every_tenant_table(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("postgresql")
    _seed(t)
    with t.default_store.engine().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                "WHERE relname IN ('notes', 'products', 'reviews') ORDER BY relname"
            )
        ).all()
        assert [tuple(r) for r in rows] == [
            ("notes", True, True),
            ("products", True, True),
            ("reviews", True, True),
        ]
        policies = conn.execute(
            text("SELECT DISTINCT policyname FROM pg_policies WHERE tablename = 'notes'")
        ).scalars()
        assert list(policies) == ["tenantry_tenant_wall"]
        role = conn.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        ).one()
        assert tuple(role) == (False, False)


@pytest.fixture
def app_login_role(pg_database: str) -> Iterator[str]:
    """A LOGIN role that owns nothing: what production apps should connect as."""
    role = f"tt_app_{uuid.uuid4().hex[:8]}"
    url = make_url(pg_database)
    conninfo = dict(host=url.host, port=url.port, user=url.username, dbname=url.database)
    with psycopg.connect(**conninfo, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    yield role
    with psycopg.connect(**conninfo, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("rls_role", ["", "tenantry_rls"])
def test_separate_non_owner_login(
    make_tenantry: TenantryFactory, pg_database: str, app_login_role: str, rls_role: str
) -> None:
    admin_url = pg_database
    app_url = make_url(pg_database).set(username=app_login_role).render_as_string(False)
    cfg = TenantryConfig(
        stores={"default": StoreConfig("default", app_url, admin_url=admin_url, rls_role=rls_role)}
    )
    t = make_tenantry("postgresql", cfg)
    # tenantry grants what is needed: to the RLS role, or to the app login itself.
    for tid in ("acme", "globex"):
        t.create_tenant(tid)
    for tid in ("acme", "globex"):
        with tenant_context(tid), t.session() as s:
            s.execute(text("INSERT INTO notes (tenant_id, body) VALUES (:t, 'n')"), {"t": tid})
            s.commit()
    with tenant_context("acme"), t.session() as s:
        assert s.execute(text("SELECT tenant_id FROM notes")).scalars().all() == ["acme"]
    # The app login on its own, no tenant set: nothing.
    with t.default_store.engine().connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == app_login_role
        if rls_role:
            conn.execute(text("SET ROLE tenantry_rls"))
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar() == 0
        with pytest.raises(ProgrammingError):
            conn.execute(text("ALTER TABLE notes DISABLE ROW LEVEL SECURITY"))


def test_session_connections_prepare_nothing_a_tenant_could_hijack(
    make_tenantry: TenantryFactory,
) -> None:
    """psycopg runs statements it prepared by name (``_pg3_0``, ...): SQL in one tenant's
    request could prepare that name as its own statement for the next tenant to run.
    Session connections prepare nothing, and what a request prepares itself is gone
    before the next one."""
    t = make_tenantry("postgresql", pool_size=1)
    _seed(t)
    with tenant_context("acme"), t.session() as s:
        for _ in range(10):  # psycopg's default would prepare on the 6th run
            s.execute(text("SELECT body FROM notes WHERE tenant_id = :t"), {"t": "acme"}).all()
        assert s.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar() == 0
        # The attack: psycopg's first statement name, prepared to copy rows elsewhere.
        s.execute(text("PREPARE _pg3_0 AS SELECT 'hijacked'"))
        s.commit()
    with tenant_context("globex"), t.session() as s:
        for _ in range(10):
            bodies = s.execute(text("SELECT body FROM notes ORDER BY body")).scalars().all()
            assert bodies == ["a", "b"]
        assert s.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar() == 0
