"""The walk: every store, every database and tenant schema on it, and progress as tenants are done.

Each store database is checked once, with the schemas holding its shared and
schema-mode tenants' tables; each tenant with a database of its own is
checked in that database. Only the admin login is used (see the package's
docstring for why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from tenantry.errors import IsolationError
from tenantry.tenancy.catalog import Tenant, TenantStatus
from tenantry.tenancy.doctor.config import config_findings, pooler
from tenantry.tenancy.doctor.findings import Finding, unreachable
from tenantry.tenancy.doctor.keys import foreign_keys, index_order, unique_keys
from tenantry.tenancy.doctor.login import (
    is_superuser,
    login_attributes,
    login_in_database,
    session_login,
    tenantry_grants,
)
from tenantry.tenancy.doctor.sqlite import sqlite_store
from tenantry.tenancy.doctor.tables import (
    Where,
    jobs_tables,
    public_tenant_tables,
    q,
    role_exists,
    tenant_tables,
)
from tenantry.tenancy.doctor.wall import functions, table_wall
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.store import Store

#: ``(done, total)`` after each tenant is checked.
DoctorProgress = Callable[[int, int], None]


def diagnose(
    tenancy: Tenancy,
    *,
    tenants: Sequence[Tenant] | None = None,
    progress: DoctorProgress | None = None,
) -> list[Finding]:
    """Every finding for the deployment *tenancy* describes, errors and warnings.

    *tenants*: the catalog's tenants, when the caller listed them already (to
    count them or size a progress bar). Only :func:`checkable` ones are
    checked; *progress* is called as tenants are done.
    """
    if tenants is None:
        tenants = tenancy.list_tenants()
    checked = checkable(tenants)
    findings = list(config_findings(tenancy.config))
    ticker = _Ticker(progress, len(checked))
    for tenant in checked:
        if tenant.store not in tenancy.stores:
            findings.append(
                Finding(
                    tenant.store,
                    f"tenant {tenant.id}",
                    f"its store {tenant.store} is not configured, so it could not be checked",
                    f"add [stores.{tenant.store}] to the configuration",
                    tenant.id,
                    check="connect",
                )
            )
            ticker.advance()
    for name, store in tenancy.stores.items():
        on_store = [t for t in checked if t.store == name]
        start = ticker.done
        try:
            if store.is_postgres:
                findings += _postgres_store(tenancy, store, on_store, ticker)
            else:
                findings += sqlite_store(tenancy, store, on_store)
        except SQLAlchemyError as exc:
            findings.append(unreachable(name, f"store {name}", exc))
        ticker.reach(start + len(on_store))
    return findings


def checkable(tenants: Iterable[Tenant]) -> list[Tenant]:
    """The tenants worth checking: not those being provisioned or deleted (half made by design)."""
    return [t for t in tenants if t.status not in _IN_FLUX]


_IN_FLUX = frozenset({TenantStatus.PROVISIONING, TenantStatus.DELETING})


@dataclass
class _Ticker:
    """Counts checked tenants for a progress callback."""

    report: DoctorProgress | None
    total: int
    done: int = 0

    def reach(self, done: int) -> None:
        if done == self.done:
            return
        self.done = done
        if self.report is not None:
            self.report(done, self.total)

    def advance(self, count: int = 1) -> None:
        self.reach(self.done + count)


def _postgres_store(
    tenancy: Tenancy, store: Store, tenants: Sequence[Tenant], ticker: _Ticker
) -> list[Finding]:
    """The store database (shared tables in ``public``, tenant schemas), then each tenant database.

    A store whose sessions would run as the owner is a finding, and the login
    of its ``url`` is then checked as the session login.
    """
    findings: list[Finding] = []
    try:
        login = session_login(store)
    except IsolationError as exc:
        login = store.config.parsed_url(expand=False).username
        findings.append(
            Finding(
                store.name,
                f"store {store.name}",
                str(exc),
                f'[stores.{store.name}] rls_role = "tenantry_rls", or admin_url for the owner',
                check="login",
            )
        )
    placed = [(t, strategy_for(t.isolation)) for t in tenants]
    shared = any(s.shares_tables for _, s in placed)
    schemas = [(schema, t.id) for t, s in placed if (schema := s.data_schema(t.id)) is not None]
    own_database = [t for t, s in placed if s.own_database]
    tenant_names = {t.name for t in tenancy.tenant_metadata.sorted_tables}
    with store.admin_engine().connect() as conn:
        database, admin = conn.exec_driver_sql("SELECT current_database(), current_user").one()
        exists = login is not None and role_exists(conn, login)
        where = Where(store.name, str(database), login, exists, str(admin))
        findings += login_attributes(conn, where)
        in_public = public_tenant_tables(conn, tenant_names)
        if shared or in_public:
            where.schemas.append(("public", None))
        where.schemas += schemas
        findings += _database(conn, where, shares_tables=True)
        conn.rollback()
    findings += pooler(store)
    ticker.advance(len(tenants) - len(own_database))
    for tenant in own_database:
        engine = store.tenant_admin_engine(tenant.id)
        try:
            with engine.connect() as conn:
                name = str(conn.exec_driver_sql("SELECT current_database()").scalar())
                where = Where(
                    store.name, name, login, exists, str(admin), tenant.id, [("public", tenant.id)]
                )
                findings += _database(conn, where, shares_tables=False)
                conn.rollback()
        except OperationalError as exc:
            findings.append(unreachable(store.name, f"tenant database of {tenant.id}", exc))
        finally:
            engine.dispose()
            ticker.advance()
    return findings


def _database(conn: Connection, where: Where, *, shares_tables: bool) -> list[Finding]:
    """Every check on one database: the wall, the session login and its grants, and keys.

    Keys are checked only where tables hold several tenants' rows (*shares_tables*).
    """
    tables = tenant_tables(conn, where.schemas)
    jobs = jobs_tables(conn)
    findings: list[Finding] = []
    if tables or jobs:
        findings += functions(conn, where)
    for table in tables:
        findings += table_wall(conn, where, table, force=True)
    for table in jobs:
        findings += table_wall(conn, where, table, force=False)
    if where.login is not None and not where.login_exists:
        if where.tenant is None:
            findings.append(
                where.finding(
                    f"role {where.login} (store {where.store})",
                    "the session login does not exist",
                    f"CREATE ROLE {q(conn, where.login)} LOGIN NOSUPERUSER NOBYPASSRLS "
                    "NOCREATEDB NOCREATEROLE (tenantry does so when provisioning with url alone)",
                    check="login",
                )
            )
    elif where.login is not None:
        findings += login_in_database(conn, where, tables)
        if not is_superuser(conn, where.login):
            findings += tenantry_grants(conn, where)
    if shares_tables:
        shared = [t for t in tables if t.tenant is None]
        findings += unique_keys(conn, where, shared)
        findings += foreign_keys(conn, where, shared)
        findings += index_order(conn, where, shared)
    return findings
