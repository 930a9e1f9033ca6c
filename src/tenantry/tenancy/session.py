"""Sessions bound to one tenant's data.

A :class:`TenantSession` is an ordinary SQLAlchemy ``Session`` with three hooks:

* ``do_orm_execute`` adds ``with_loader_criteria(TenantScoped, tenant_id == t)``
  to every ORM SELECT, UPDATE and DELETE when the tenant's tables are shared
  (this also covers relationship loads, joins and aliases);
* ``before_flush`` stamps new tenant-scoped objects with the tenant and refuses
  objects that belong to, or are moved to, another tenant;
* ``after_begin`` checks that the tenant in context is still the session's.

On PostgreSQL the tenant binding itself is not a session hook: the session's
engine carries it, and every transaction on its connections starts with it
(:mod:`tenantry.tenancy.binding`).

When the tenant's tables are not in the database holding the global tables
(a database of its own, or another store), ``get_bind`` sends statements on
global tables to the database that holds them (:mod:`tenantry.tenancy.routing`).

The tenant is fixed when the session is created. Using the session while a
*different* tenant is current is refused, so a session cannot be smuggled
across tenants by accident.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, with_loader_criteria
from sqlalchemy.orm import attributes as orm_attributes

from tenantry.errors import CrossTenantAccessError
from tenantry.tenancy.context import current_tenant_or_none
from tenantry.tenancy.models import TenantScoped, is_tenant_table
from tenantry.tenancy.routing import GLOBAL_ROUTE, GlobalRoute

#: Execution option that lifts the shared-table filter for one statement.
ALL_TENANTS = "tenantry_all_tenants"
#: Execution option that lets one statement past the SQLite guard
#: (:mod:`tenantry.tenancy.sqlite_guard`): raw SQL and Core statements on tenant
#: tables, and ``ATTACH``. Tenantry's admin engine carries it.
UNGUARDED = "tenantry_unguarded"
#: Execution option tenantry sets on the ORM statements it filtered or stamped;
#: only :data:`VOUCHED_TOKEN` counts, so a caller cannot forge it by name.
VOUCHED = "tenantry_vouched"
VOUCHED_TOKEN: Any = object()
#: Set while a :class:`TenantSession` flushes (its objects were stamped and checked).
FLUSHING: ContextVar[bool] = ContextVar("tenantry_flushing", default=False)


class TenantSession(Session):
    """A Session whose ``info`` names its tenant (set by tenantry, not by hand)."""

    @property
    def tenant_id(self) -> str:
        return str(self.info["tenantry_tenant_id"])

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Any = None,
        **kw: Any,
    ) -> Engine | Connection:
        """The tenant's engine, or the global tables' when the statement names only those."""
        route = self.info.get(GLOBAL_ROUTE)
        if bind is None and isinstance(route, GlobalRoute) and route.is_global(mapper, clause):
            return route.engine
        return super().get_bind(mapper, clause=clause, bind=bind, **kw)

    def flush(self, objects: Sequence[Any] | None = None) -> None:
        """Flush, marked so the SQLite guard lets the unit of work's statements through."""
        token = FLUSHING.set(True)
        try:
            super().flush(objects)
        finally:
            FLUSHING.reset(token)


def _session_tenant(session: Session) -> str | None:
    value = session.info.get("tenantry_tenant_id")
    return value if isinstance(value, str) else None


def _check_context(session: Session, tenant_id: str) -> None:
    current = current_tenant_or_none()
    if current is not None and current != tenant_id:
        raise CrossTenantAccessError(
            f"session of tenant {tenant_id!r} used while tenant {current!r} is current"
        )


@event.listens_for(TenantSession, "do_orm_execute")
def _filter_rows(state: ORMExecuteState) -> None:
    tenant_id = _session_tenant(state.session)
    if tenant_id is None:
        return
    _check_context(state.session, tenant_id)
    if state.is_insert or state.is_update:
        _guard_bulk_parameters(state, tenant_id)
    if not state.session.info.get("tenantry_filter_rows"):
        return
    if state.is_insert and _stamped_insert(state):
        state.update_execution_options(**{VOUCHED: VOUCHED_TOKEN})
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.execution_options.get(ALL_TENANTS, False):
        return
    state.statement = state.statement.options(
        with_loader_criteria(
            TenantScoped,
            lambda cls: cls.tenant_id == tenant_id,
            include_aliases=True,
            track_closure_variables=True,
        )
    )
    # Only ORM statements get the criteria (a Core statement on a Table does
    # not), and ORM bulk UPDATE by primary key (a list of rows) ignores them.
    if (
        state.is_orm_statement
        and not isinstance(state.parameters, list)
        and all(_filterable(m) for m in state.all_mappers)
    ):
        state.update_execution_options(**{VOUCHED: VOUCHED_TOKEN})


def _filterable(mapper: Any) -> bool:
    """A TenantScoped class (the criteria reach it), or one on no tenant table."""
    return issubclass(mapper.class_, TenantScoped) or not any(
        is_tenant_table(t) for t in mapper.tables
    )


def _stamped_insert(state: ORMExecuteState) -> bool:
    """Whether an ORM INSERT writes only rows stamped and checked by ``_guard_bulk_parameters``.

    ``INSERT … FROM SELECT`` is not: its rows come from a query tenantry did not filter.
    """
    mapper = state.bind_mapper
    return (
        state.is_orm_statement
        and mapper is not None
        and issubclass(mapper.class_, TenantScoped)
        and getattr(state.statement, "select", None) is None
    )


def _guard_bulk_parameters(state: ORMExecuteState, tenant_id: str) -> None:
    """ORM bulk INSERT/UPDATE (``session.execute(insert(Model), rows)``): stamp and guard.

    Flush-time stamping does not see these statements, so the parameter rows
    are checked here: a missing ``tenant_id`` is filled in, a foreign one refused.
    """
    mapper = state.bind_mapper
    if mapper is None or not issubclass(mapper.class_, TenantScoped):
        return
    params = state.parameters
    rows = params if isinstance(params, list) else [params] if params else []
    for row in rows:
        if not isinstance(row, dict):
            continue
        value = row.get("tenant_id")
        if value is None and state.is_insert:
            row["tenant_id"] = tenant_id
        elif value is not None and value != tenant_id:
            raise CrossTenantAccessError(
                f"cannot write tenant_id={value!r} in a session of tenant {tenant_id!r}"
            )
    values = getattr(state.statement, "_values", None) or {}
    for key, value in values.items():
        name = getattr(key, "key", key)
        bound = getattr(value, "value", value)
        if name == "tenant_id" and bound != tenant_id:
            raise CrossTenantAccessError(
                f"cannot set tenant_id={bound!r} in a session of tenant {tenant_id!r}"
            )


@event.listens_for(TenantSession, "before_flush")
def _stamp_and_guard(session: Session, _ctx: Any, _instances: Any) -> None:
    tenant_id = _session_tenant(session)
    if tenant_id is None:
        return
    _check_context(session, tenant_id)
    for obj in session.new:
        if isinstance(obj, TenantScoped):
            if obj.tenant_id is None:
                obj.tenant_id = tenant_id
            elif obj.tenant_id != tenant_id:
                raise CrossTenantAccessError(
                    f"cannot insert a row of tenant {obj.tenant_id!r} "
                    f"in a session of tenant {tenant_id!r}"
                )
    for obj in list(session.dirty) + list(session.deleted):
        if not isinstance(obj, TenantScoped):
            continue
        history = orm_attributes.get_history(obj, "tenant_id")
        if history.has_changes() or obj.tenant_id != tenant_id:
            raise CrossTenantAccessError(
                f"cannot change or delete a row of tenant {obj.tenant_id!r} "
                f"in a session of tenant {tenant_id!r}"
            )


@event.listens_for(TenantSession, "after_begin")
def _check_transaction(session: Session, _tx: SessionTransaction, _conn: Connection) -> None:
    tenant_id = _session_tenant(session)
    if tenant_id is not None:
        _check_context(session, tenant_id)
