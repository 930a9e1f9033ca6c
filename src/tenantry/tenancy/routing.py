"""Global tables reached from tenant sessions whose tenant tables are in another database.

Global tables (``GlobalBase``) live in the default store's database, the one
:meth:`~tenantry.tenancy.facade.Tenancy.global_session` uses. A tenant in
shared or schema mode on the default store has its tables in that same
database, so its session reaches both through one connection and nothing is
routed. A tenant with a database of its own, or on another store, does not:
its session sends statements on global tables to the default store's engine
and everything else to the tenant's, the way SQLAlchemy sessions with several
``binds`` do.

A statement is routed by the tables it names (ORM entities, Core tables,
flushes of mapped objects). Raw ``text()`` SQL names no table SQLAlchemy can
see and runs on the tenant's database. A statement naming a global table
*and* another table cannot run in either database: it raises
:class:`~tenantry.errors.GlobalTableJoinError` instead of the database's
"relation does not exist".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, MetaData, Table, inspect
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ClauseElement

from tenantry.errors import GlobalTableJoinError

#: ``Session.info`` key of a tenant session's :class:`GlobalRoute` (absent: nothing routed).
GLOBAL_ROUTE = "tenantry_global_route"


@dataclass(frozen=True)
class GlobalRoute:
    """Where a tenant session sends statements on global tables."""

    #: The default store's app engine (for an async session, its async engine's ``sync_engine``).
    engine: Engine
    tables: frozenset[Table]
    tenant_id: str

    def is_global(self, mapper: Any, clause: ClauseElement | None) -> bool:
        """True: the statement names only global tables; False: none.

        Raises :class:`GlobalTableJoinError` when it names both kinds.
        """
        found_global: set[str] = set()
        found_other: set[str] = set()
        if mapper is not None:
            for table in getattr(inspect(mapper), "tables", ()):
                self._sort(table, found_global, found_other)
        if clause is not None:
            for element in visitors.iterate(clause):
                if isinstance(element, Table):
                    self._sort(element, found_global, found_other)
        if found_global and found_other:
            raise GlobalTableJoinError(
                f"a statement of tenant {self.tenant_id!r} uses global table(s) "
                f"{', '.join(sorted(found_global))} with table(s) "
                f"{', '.join(sorted(found_other))}, which are in another database (the "
                "tenant's own, or another store's): query them separately"
            )
        return bool(found_global)

    def _sort(self, table: Table, found_global: set[str], found_other: set[str]) -> None:
        (found_global if table in self.tables else found_other).add(table.name)


def global_route(
    metadata: MetaData,
    tenant_id: str,
    engine: Callable[[], Engine],
    *,
    reaches_globals: bool,
) -> GlobalRoute | None:
    """The route of a tenant session, or None when its own engine reaches the global tables.

    *reaches_globals*: the tenant's tables are in the database holding the
    global tables (shared or schema mode on the default store). *engine* is
    asked for only when a route is needed.
    """
    if reaches_globals or not metadata.tables:
        return None
    return GlobalRoute(engine(), frozenset(metadata.tables.values()), tenant_id)


__all__ = ["GLOBAL_ROUTE", "GlobalRoute", "global_route"]
