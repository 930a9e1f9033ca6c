"""A new tenant's tables from one precompiled script, not from ``create_all``'s dialogue.

``metadata.create_all(checkfirst=True)`` asks the server about every table
before creating it and sends each CREATE TABLE and CREATE INDEX on its own:
with 30 tables that is some 90 round trips per tenant. What it would create
does not depend on the tenant, so tenantry records it once per process (a
mock engine runs ``create_all`` against no database, DDL events included),
compiles it with the tenant placeholder left as SQLAlchemy's schema token,
and per tenant only substitutes the schema and sends the whole script at once.
The version table of the tenant migration history, at head, is part of the
script: a new tenant is born migrated, with no history replayed.

The models are the definition of head (Alembic's own recipe for a fresh
database is ``create_all`` and then ``stamp head``). Objects that only
migrations create (a trigger, a function, seed rows) must therefore also be
attached to the metadata, e.g. ``event.listen(table, "after_create", DDL(...))``,
which the recording captures.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, MetaData, create_mock_engine
from sqlalchemy.engine import URL

from tenantry.tenancy.models import TENANT_SCHEMA
from tenantry.tenancy.urls import SYNC_DRIVERS

if TYPE_CHECKING:
    from tenantry.tenancy.hooks import VersionHistory

#: What SQLAlchemy renders for the placeholder schema when it is translated.
SCHEMA_TOKEN = f"__[SCHEMA_{TENANT_SCHEMA}]."

_cache: dict[tuple[Any, ...], TenantDDL] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class TenantDDL:
    """The statements that create a tenant's tables (and version table), schema left open."""

    statements: tuple[str, ...]
    head: str | None

    def render(self, schema: str | None) -> list[str]:
        """The statements for one tenant: *schema* (already quoted) or the default schema."""
        prefix = f"{schema}." if schema else ""
        return [s.replace(SCHEMA_TOKEN, prefix) for s in self.statements]

    def run(
        self,
        conn: Connection,
        schema: str | None,
        *,
        prologue: Sequence[str] = (),
        epilogue: Sequence[str] = (),
    ) -> None:
        """Send the script: one round trip on PostgreSQL, statement by statement on SQLite.

        psycopg sends a parameterless query with several statements as one
        simple-protocol message; SQLite has no round trips to save and its
        driver takes one statement per call.
        """
        statements = [*prologue, *self.render(schema), *epilogue]
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(";\n".join(statements))
            return
        for statement in statements:
            conn.exec_driver_sql(statement)


def tenant_ddl(metadata: MetaData, dialect_name: str, history: VersionHistory | None) -> TenantDDL:
    """The compiled script for *metadata* on *dialect_name*, recorded once per process."""
    head = history.head if history is not None else None
    key = (id(metadata), tuple(sorted(metadata.tables)), dialect_name, head)
    with _lock:
        found = _cache.get(key)
        if found is not None:
            return found
    recorded: list[Any] = []
    mock = create_mock_engine(
        URL.create(SYNC_DRIVERS[dialect_name]), lambda sql, *a, **kw: recorded.append(sql)
    )
    metadata.create_all(mock, checkfirst=False)
    if history is not None:
        recorded.extend(history.stamp_statements(dialect_name, TENANT_SCHEMA))
    translate = {TENANT_SCHEMA: TENANT_SCHEMA}
    statements = tuple(
        str(
            element.compile(
                dialect=mock.dialect,
                schema_translate_map=translate,
                compile_kwargs={"literal_binds": True},
            )
        ).strip()
        for element in recorded
    )
    ddl = TenantDDL(statements, head)
    with _lock:
        _cache[key] = ddl
    return ddl
