"""``tenantry doctor``'s checks against real deployments: clean as tenantry makes them, and
each seeded misconfiguration found, with a fix that, applied, makes the deployment clean.

Each PostgreSQL test gets a deployment made by tenantry on a fresh database: two
shared tenants, one schema tenant and one database tenant, on tables whose keys
follow the rules (``tenant_id`` in every unique and foreign key). A case breaks
one thing as the admin, checks what :func:`diagnose` reports, then runs the fixes
it proposes and checks that nothing is left.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import (
    Column,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
)
from sqlalchemy.engine import Engine, make_url

from tenantry import StoreConfig, Tenantry, TenantryConfig
from tenantry.tenancy.doctor import (
    PGBOUNCER_PORT,
    WALL_POLICY,
    Finding,
    config_findings,
    diagnose,
    failed,
    is_wall_predicate,
    pooler_suspected,
    session_login,
)
from tenantry.tenancy.models import tenant_metadata
from tests.pgbouncer import UrlViaPgBouncer, pgbouncer, pgbouncer_server

__all__ = ["pgbouncer", "pgbouncer_server"]  # fixtures used below


def _models() -> MetaData:
    """Tenant tables with their keys as the rules want them."""
    metadata = tenant_metadata()
    items = Table(
        "doc_items",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("tenant_id", String(40), nullable=False, index=True),
        Column("sku", String(40), nullable=False),
        UniqueConstraint("tenant_id", "sku"),
        UniqueConstraint("tenant_id", "id"),
    )
    Table(
        "doc_lines",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("tenant_id", String(40), nullable=False, index=True),
        Column("item_id", Integer, nullable=False),
        ForeignKeyConstraint(["tenant_id", "item_id"], [items.c.tenant_id, items.c.id]),
    )
    return metadata


MODELS = _models()


@dataclass
class Deployment:
    t: Tenantry
    url: str
    login: str
    #: The database of the database-mode tenant ``initech``.
    initech_db: str

    def sql(self, *statements: str, database: str | None = None) -> None:
        """Run *statements* as the admin (autocommit), in the store or another database."""
        url = make_url(self.url)
        info: dict[str, Any] = {
            "host": url.host,
            "port": url.port,
            "user": url.username,
            "dbname": database or url.database,
        }
        with psycopg.connect(**info, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def findings(self) -> list[Finding]:
        return diagnose(self.t)


@pytest.fixture
def deployment(pg_database: str) -> Iterator[Deployment]:
    t = Tenantry(TenantryConfig.single(pg_database), tenant_metadata=MODELS)
    try:
        t.create_tenant("acme")
        t.create_tenant("globex")
        t.create_tenant("umbrella", isolation="schema")
        t.create_tenant("initech", isolation="database")
        store = t.default_store
        login = session_login(store)
        assert login is not None
        yield Deployment(t, pg_database, login, store.tenant_database_name("initech"))
    finally:
        t.close()


@pytest.fixture
def extra_role(deployment: Deployment) -> Iterator[str]:
    """A NOLOGIN role a case may hand tables or functions to (given back before it is dropped)."""
    role = f"tt_doc_{uuid.uuid4().hex[:8]}"
    deployment.sql(f'CREATE ROLE "{role}" NOLOGIN')
    yield role
    admin = make_url(deployment.url).username
    for database in (None, deployment.initech_db):
        deployment.sql(
            f'REASSIGN OWNED BY "{role}" TO "{admin}"', f'DROP OWNED BY "{role}"', database=database
        )
    deployment.sql(f'DROP ROLE "{role}"')


def test_a_deployment_made_by_tenantry_is_clean(deployment: Deployment) -> None:
    reports: list[tuple[int, int]] = []
    assert diagnose(deployment.t, progress=lambda done, total: reports.append((done, total))) == []
    # Shared and schema tenants with the store database, then each database tenant.
    assert reports == [(3, 4), (4, 4)]


# -- each misconfiguration: (id, SQL as the admin, where, check, in problem, in fix) -----------
#: ``{login}``, ``{role}`` (extra_role), ``{db}`` (the store database) are filled in.
STORE, INITECH = "store", "initech"


@dataclass(frozen=True)
class Case:
    id: str
    seed: tuple[str, ...]
    check: str
    problem: str
    fix: str
    database: str = STORE
    #: Every finding's fix is SQL that clears it.
    fixable: bool = True
    needs_role: bool = False
    #: How many findings the seed makes.
    count: int = 1


CASES = [
    # 1. the wall on tables and the functions
    Case(
        "rls-disabled",
        ("ALTER TABLE public.doc_items DISABLE ROW LEVEL SECURITY",),
        "rls",
        "row-level security is disabled",
        "ENABLE ROW LEVEL SECURITY",
    ),
    Case(
        "policy-dropped-in-schema",
        (f"DROP POLICY {WALL_POLICY} ON t_umbrella.doc_lines",),
        "rls",
        f"policy {WALL_POLICY} is missing",
        "= 'umbrella'",
    ),
    Case(
        "no-force-in-tenant-database",
        ("ALTER TABLE public.doc_items NO FORCE ROW LEVEL SECURITY",),
        "rls",
        "not forced",
        "FORCE ROW LEVEL SECURITY",
        database=INITECH,
    ),
    Case(
        "policy-weakened",
        (f"ALTER POLICY {WALL_POLICY} ON public.doc_items USING (true)",),
        "rls",
        "does not bind rows",
        "CREATE POLICY",
    ),
    Case(
        "policy-widened-with-or",
        (
            f"ALTER POLICY {WALL_POLICY} ON public.doc_lines "
            "USING (tenant_id = (SELECT tenantry.current_tenant()) OR tenant_id = 'globex')",
        ),
        "rls",
        "does not bind rows",
        "CREATE POLICY",
    ),
    Case(
        "policy-without-the-tenant-in-a-tenant-database",
        (
            f"ALTER POLICY {WALL_POLICY} ON public.doc_lines "
            "USING (tenant_id = (SELECT tenantry.current_tenant())) "
            "WITH CHECK (tenant_id = (SELECT tenantry.current_tenant()))",
        ),
        "rls",
        "and tenant 'initech'",
        "= 'initech'",
        database=INITECH,
    ),
    Case(
        "extra-permissive-policy",
        ("CREATE POLICY open_door ON public.doc_lines USING (true)",),
        "rls",
        "permissive policy open_door widens the wall",
        "DROP POLICY open_door",
    ),
    Case(
        "jobs-rls-disabled",
        ("ALTER TABLE tenantry.tenantry_jobs DISABLE ROW LEVEL SECURITY",),
        "rls",
        "row-level security is disabled",
        "ENABLE ROW LEVEL SECURITY",
        count=2,  # and the session login's grants on it are no longer behind a policy
    ),
    Case(
        "function-not-definer",
        ("ALTER FUNCTION tenantry.current_tenant() SECURITY INVOKER",),
        "functions",
        "not SECURITY DEFINER",
        "SECURITY DEFINER",
    ),
    Case(
        "function-search-path",
        ("ALTER FUNCTION tenantry.enter(text, bytea) RESET search_path",),
        "functions",
        "without a fixed search_path",
        "SET search_path = pg_catalog",
    ),
    Case(
        "function-owner",
        ("ALTER FUNCTION tenantry.enter(text, bytea) OWNER TO {role}",),
        "functions",
        "not by",
        "OWNER TO",
        needs_role=True,
    ),
    Case(
        "function-missing",
        ("DROP FUNCTION tenantry.enter(text, bytea)",),
        "functions",
        "missing",
        "provision",
        database=INITECH,
        fixable=False,
    ),
    Case(
        "key-granted-to-public",
        ("GRANT SELECT ON tenantry.binding_key TO PUBLIC",),
        "functions",
        "PUBLIC holds SELECT on the tenant binding key",
        "REVOKE ALL ON tenantry.binding_key FROM PUBLIC",
    ),
    Case(
        "key-granted-to-the-login",
        ("GRANT SELECT, UPDATE ON tenantry.binding_key TO {login}",),
        "functions",
        "holds SELECT, UPDATE on the tenant binding key",
        "REVOKE ALL ON tenantry.binding_key FROM",
    ),
    # 2. the session login
    Case("login-superuser", ("ALTER ROLE {login} SUPERUSER",), "login", "SUPERUSER", "NOSUPERUSER"),
    Case("login-bypassrls", ("ALTER ROLE {login} BYPASSRLS",), "login", "BYPASSRLS", "NOBYPASSRLS"),
    Case("login-createrole", ("ALTER ROLE {login} CREATEROLE",), "login", "CREATEROLE", "NO"),
    Case("login-createdb", ("ALTER ROLE {login} CREATEDB",), "login", "CREATEDB", "NOCREATEDB"),
    Case(
        "login-temporary",
        ("GRANT TEMPORARY ON DATABASE {db} TO {login}",),
        "login",
        "temporary tables",
        "REVOKE TEMPORARY ON DATABASE",
    ),
    Case(
        "login-temporary-in-tenant-database",
        ("GRANT TEMPORARY ON DATABASE {db} TO PUBLIC",),
        "login",
        "temporary tables",
        "REVOKE TEMPORARY ON DATABASE",
        database=INITECH,
    ),
    Case(
        "login-create-on-public",
        ("GRANT CREATE ON SCHEMA public TO {login}",),
        "login",
        "CREATE in schema public",
        "REVOKE CREATE ON SCHEMA public",
    ),
    Case(
        "login-owns-a-tenant-table",
        ("ALTER TABLE t_umbrella.doc_items OWNER TO {login}",),
        "login",
        "owned by the session login",
        "OWNER TO",
    ),
    Case(
        "login-member-of-an-owner",
        ("ALTER TABLE public.doc_lines OWNER TO {role}", "GRANT {role} TO {login}"),
        "login",
        "which is the owner of tenant tables",
        "REVOKE",
        needs_role=True,
    ),
    Case(
        "login-member-of-a-superuser",
        ("ALTER ROLE {role} SUPERUSER", "GRANT {role} TO {login}"),
        "login",
        "which is a superuser",
        "REVOKE",
        needs_role=True,
    ),
    Case(
        "login-member-of-a-bypassrls-role",
        ("ALTER ROLE {role} BYPASSRLS", "GRANT {role} TO {login}"),
        "login",
        "which is BYPASSRLS",
        "REVOKE",
        needs_role=True,
    ),
    # 3. keys on shared tables
    Case(
        "unique-without-tenant-id",
        ("ALTER TABLE public.doc_items ADD CONSTRAINT doc_items_sku_key UNIQUE (sku)",),
        "keys",
        "unique constraint doc_items_sku_key on (sku) does not include tenant_id",
        "UNIQUE (tenant_id, sku)",
    ),
    Case(
        "unique-index-without-tenant-id",
        ("CREATE UNIQUE INDEX doc_items_sku_ux ON public.doc_items (sku)",),
        "keys",
        "unique index doc_items_sku_ux",
        "CREATE UNIQUE INDEX",
    ),
    Case(
        "foreign-key-without-tenant-id",
        (
            "ALTER TABLE public.doc_lines ADD CONSTRAINT doc_lines_item_fk "
            "FOREIGN KEY (item_id) REFERENCES public.doc_items (id)",
        ),
        "keys",
        "foreign key doc_lines_item_fk (item_id) -> doc_items (id) does not pair tenant_id",
        "FOREIGN KEY (tenant_id, item_id) REFERENCES public.doc_items (tenant_id, id)",
    ),
    # 4. grants on tenantry's tables
    Case(
        "catalog-granted",
        ("GRANT SELECT ON tenantry.tenantry_tenants TO {login}",),
        "grants",
        "holds SELECT",
        "REVOKE ALL ON tenantry.tenantry_tenants FROM",
    ),
    Case(
        "api-keys-granted-to-a-group",
        ("GRANT UPDATE ON tenantry.tenantry_api_keys TO {role}", "GRANT {role} TO {login}"),
        "grants",
        "holds UPDATE",
        "REVOKE ALL ON tenantry.tenantry_api_keys FROM",
        needs_role=True,
    ),
]


def _fill(statement: str, deployment: Deployment, database: str, role: str | None) -> str:
    return statement.format(login=f'"{deployment.login}"', db=f'"{database}"', role=f'"{role}"')


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_misconfiguration_is_found_with_its_fix(
    deployment: Deployment, request: pytest.FixtureRequest, case: Case
) -> None:
    role = request.getfixturevalue("extra_role") if case.needs_role else None
    database = (
        deployment.initech_db if case.database == INITECH else make_url(deployment.url).database
    )
    assert database is not None
    seeds = [_fill(s, deployment, database, role) for s in case.seed]
    deployment.sql(*seeds, database=database)

    findings = deployment.findings()
    assert any(
        f.check == case.check and case.problem in f.problem and case.fix in f.fix for f in findings
    ), "\n".join(f.line() for f in findings)
    assert failed(findings)
    assert len(findings) == case.count, "\n".join(f.line() for f in findings)
    if case.database == INITECH:
        assert all(f.tenant == "initech" for f in findings if f.check == case.check)
    if not case.fixable:
        return
    for finding in findings:
        deployment.sql(*finding.fix.split("; "), database=database)
    assert deployment.findings() == []


def test_a_non_unique_index_not_led_by_tenant_id_is_a_warning(deployment: Deployment) -> None:
    deployment.sql("CREATE INDEX doc_items_sku_ix ON public.doc_items (sku)")
    [finding] = deployment.findings()
    assert (finding.check, finding.severity) == ("keys", "warn")
    assert "index doc_items_sku_ix on (sku) does not lead with tenant_id" in finding.problem
    assert finding.line().startswith("table public.doc_items in database ")
    assert ": warning: index" in finding.line()
    assert not failed([finding])
    assert failed([finding], strict=True)
    deployment.sql(*finding.fix.split("; "))
    assert deployment.findings() == []


def test_a_missing_key_table_is_found(deployment: Deployment) -> None:
    deployment.sql("DROP TABLE tenantry.binding_key CASCADE")
    findings = deployment.findings()
    assert [f.problem for f in findings if f.check == "functions"] == [
        "table tenantry.binding_key (the tenant binding key) is missing"
    ]


def test_a_tenant_database_that_cannot_be_reached_is_a_finding(deployment: Deployment) -> None:
    deployment.t.default_store.forget_tenant_engines("initech")
    deployment.sql(f'DROP DATABASE "{deployment.initech_db}" WITH (FORCE)')
    [finding] = deployment.findings()
    assert (finding.check, finding.object) == ("connect", "tenant database of initech")
    assert "could not be checked" in finding.problem


def test_a_session_login_that_does_not_exist_is_found(
    deployment: Deployment, pg_database: str
) -> None:
    """With admin_url, sessions use url's login: here one nobody created."""
    url = make_url(pg_database).set(username="tt_doc_nobody").render_as_string(False)
    config = TenantryConfig(stores={"default": StoreConfig("default", url, admin_url=pg_database)})
    with Tenantry(config, tenant_metadata=MODELS) as t:
        findings = diagnose(t)
    assert ("login", "the session login does not exist") in {(f.check, f.problem) for f in findings}
    # The pooler check connects with url, and says it could not.
    assert any(f.check == "connect" and "tt_doc_nobody" in f.problem for f in findings)


def test_sessions_as_the_owner_are_found(deployment: Deployment, pg_database: str) -> None:
    """rls_role = "" with url alone: sessions would run as the login that owns the tables."""
    config = TenantryConfig.single(pg_database, rls_role="")
    with Tenantry(config, tenant_metadata=MODELS) as t:
        findings = [f for f in diagnose(t) if f.check == "login"]
    assert any("owns the tables" in f.problem for f in findings), findings


# -- 5. secrets ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "literal"),
    [
        ("postgresql://app:hunter2@db:5432/app", True),
        ("postgresql://app:${APP_PASSWORD}@db:5432/app", False),
        ("postgresql://app:pre${APP_PASSWORD}@db/app", True),
        ("postgresql://${USER}:${PASSWORD}@${HOST}:${PORT}/app", False),
        ("postgresql://app@db/app", False),
        ("sqlite:///data/main.db", False),
    ],
)
def test_a_literal_password_in_the_file_is_a_warning(
    tmp_path: Path, url: str, literal: bool
) -> None:
    path = tmp_path / "tenantry.toml"
    path.write_text(f'[stores.main]\nurl = "sqlite:///x.db"\n\n[stores.other]\nurl = "{url}"\n')
    config = TenantryConfig(
        stores={"main": StoreConfig("main", "sqlite:///x.db")},
        default_store="main",
        source=str(path),
    )
    findings = config_findings(config)
    assert bool(findings) is literal
    for finding in findings:
        assert (finding.check, finding.severity, finding.store) == ("secrets", "warn", "other")
        assert finding.object == "tenantry.toml stores.other.url"
        assert "hunter2" not in finding.line()


# -- 6. poolers ---------------------------------------------------------------------------------
def test_the_wall_predicate_is_matched_exactly() -> None:
    bound = "((tenant_id)::text = ( SELECT tenantry.current_tenant() AS current_tenant))"
    pinned = "((tenant_id)::text = 'umb'::text)"
    assert is_wall_predicate(bound, None)
    assert is_wall_predicate("(tenant_id = tenantry.current_tenant())", None)
    assert is_wall_predicate(f"({bound} AND {pinned})", "umb")
    assert is_wall_predicate(f"({pinned} AND {bound})", "umb")
    assert not is_wall_predicate(f"({bound} AND {pinned})", "acme")
    assert not is_wall_predicate(bound, "umb")
    assert not is_wall_predicate(f"({bound} OR true)", None)
    assert not is_wall_predicate(f"({bound} OR {pinned})", "umb")
    assert not is_wall_predicate(
        "((tenant_id)::text = current_setting('tenantry.tenant_id'))", None
    )
    assert not is_wall_predicate(
        "((body)::text = ( SELECT tenantry.current_tenant() AS current_tenant))", None
    )
    assert not is_wall_predicate(None, None)


def test_pooler_signals() -> None:
    assert pooler_suspected(PGBOUNCER_PORT, None, None)
    assert pooler_suspected(5432, 123, 456)
    assert not pooler_suspected(5432, 123, 123)
    assert not pooler_suspected(None, None, 7)


def test_pgbouncer_without_pooler_setting_is_found(
    pg_database: str, pgbouncer: UrlViaPgBouncer
) -> None:
    url = pgbouncer(pg_database)

    def pooler_findings(**store: Any) -> list[Finding]:
        with Tenantry(TenantryConfig.single(url, **store), tenant_metadata=MODELS) as t:
            return [f for f in diagnose(t) if f.check == "pooler"]

    [finding] = pooler_findings()
    assert 'pooler = "transaction"' in finding.fix
    assert pooler_findings(pooler="transaction") == []


def test_a_direct_connection_is_no_pooler(deployment: Deployment) -> None:
    assert [f for f in deployment.findings() if f.check == "pooler"] == []


# -- SQLite -------------------------------------------------------------------------------------
def _sqlite(tmp_path: Path) -> Tenantry:
    url = f"sqlite:///{tmp_path / 'data' / 'main.db'}"
    return Tenantry(TenantryConfig.single(url), tenant_metadata=MODELS)


def test_sqlite_with_the_guard_is_clean(tmp_path: Path) -> None:
    with _sqlite(tmp_path) as t:
        t.create_tenant("acme")
        t.create_tenant("initech", isolation="database")
        assert diagnose(t) == []


def test_sqlite_shared_tenants_without_the_guard_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store whose app engine lets raw SQL reach tenant tables (no guard installed on it)."""
    with _sqlite(tmp_path) as t:
        t.create_tenant("initech", isolation="database")
        assert diagnose(t) == []  # no shared tenants: nothing to guard
        t.create_tenant("acme")
        store = t.default_store
        bare: Engine = create_engine(store.config.url)
        unguarded: Callable[[], Engine] = lambda: bare  # noqa: E731
        monkeypatch.setattr(store, "engine", unguarded)
        try:
            [finding] = diagnose(t)
        finally:
            bare.dispose()
    assert finding.check == "sqlite"
    assert finding.problem == "shared-mode tenants on SQLite have only the ORM filter as a wall"
    assert finding.fix == "place tenants in database mode"


def test_a_tenant_on_a_store_no_longer_configured_is_found(tmp_path: Path) -> None:
    with _sqlite(tmp_path) as t:
        t.create_tenant("acme", isolation="database")
        url = t.default_store.config.url
    renamed = TenantryConfig(stores={"main": StoreConfig("main", url)}, default_store="main")
    with Tenantry(renamed, tenant_metadata=MODELS) as t:
        [finding] = diagnose(t)
    assert (finding.check, finding.tenant, finding.store) == ("connect", "acme", "default")
    assert finding.line() == (
        "tenant acme: its store default is not configured, so it could not be checked"
        " — fix: add [stores.default] to the configuration"
    )


def test_sqlite_without_declared_tables_checks_the_guard_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A doctor that does not know the application's tables (no tenant_metadata, no --models)."""
    with _sqlite(tmp_path) as t:
        t.create_tenant("acme")
    url = f"sqlite:///{tmp_path / 'data' / 'main.db'}"
    with Tenantry(TenantryConfig.single(url), tenant_metadata=tenant_metadata()) as t:
        assert diagnose(t) == []
        bare: Engine = create_engine(url)
        unguarded: Callable[[], Engine] = lambda: bare  # noqa: E731
        monkeypatch.setattr(t.default_store, "engine", unguarded)
        try:
            assert [f.check for f in diagnose(t)] == ["sqlite"]
            with bare.connect() as conn:  # the probe left nothing attached
                names = [row[1] for row in conn.exec_driver_sql("PRAGMA database_list")]
            assert names == ["main"]
        finally:
            bare.dispose()


def test_findings_in_one_line_and_as_json() -> None:
    finding = Finding("default", "table public.t", "row-level security is disabled", "ALTER ...")
    assert finding.line() == "table public.t: row-level security is disabled — fix: ALTER ..."
    assert finding.to_dict() == {
        "store": "default",
        "tenant": None,
        "object": "table public.t",
        "problem": "row-level security is disabled",
        "fix": "ALTER ...",
        "severity": "error",
        "check": "",
    }
