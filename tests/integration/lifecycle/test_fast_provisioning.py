"""New tenants from the compiled script: one round trip, the same tables as create_all, stamped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)

from tenantry import Tenantry, tenant_context
from tenantry.lifecycle.migrations.runner import Migrator
from tenantry.tenancy.isolation import schema_name, strategy_for
from tenantry.tenancy.models import tenant_metadata
from tests.conftest import TenantryFactory, make_config
from tests.integration.lifecycle.support import add_revision, with_migrations

TABLES = 30


def thirty_tables() -> MetaData:
    """Thirty tenant tables, each with an index, a numeric, a timestamp and a foreign key."""
    metadata = tenant_metadata()
    previous: Table | None = None
    for i in range(TABLES):
        columns: list[Any] = [
            Column("id", Integer, primary_key=True),
            Column("tenant_id", String(40), nullable=False, index=True),
            Column("name", String(100), nullable=False, server_default="x"),
            Column("amount", Numeric(12, 2)),
            Column("created_at", DateTime(timezone=True), server_default=func.now()),
        ]
        if previous is not None:
            columns.append(Column("parent_id", ForeignKey(previous.c.id)))
        previous = Table(f"t{i:02d}", metadata, *columns)
    return metadata


@pytest.fixture
def wide(
    request: pytest.FixtureRequest, tmp_path: Path, histories: tuple[Path, Path]
) -> Iterator[Tenantry]:
    """PostgreSQL, thirty tenant tables, a tenant history whose head is ``w1``."""
    add_revision(histories[0], "w1", None, "pass")
    config = with_migrations(make_config("postgresql", request, tmp_path), *histories)
    t = Tenantry(config, tenant_metadata=thirty_tables())
    yield t
    t.close()


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every statement sent by any engine while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def _shape(t: Tenantry, schema: str) -> dict[str, Any]:
    """What a schema's tables look like, from the server's catalog."""
    with t.default_store.admin_engine().connect() as conn:
        insp = inspect(conn)
        shape: dict[str, Any] = {}
        for table in insp.get_table_names(schema=schema):
            shape[table] = (
                [
                    (
                        c["name"],
                        str(c["type"]),
                        c["nullable"],
                        str(c.get("default")).replace(schema, "S"),
                    )
                    for c in insp.get_columns(table, schema=schema)
                ],
                sorted(
                    (i["name"], tuple(i["column_names"]))
                    for i in insp.get_indexes(table, schema=schema)
                ),
                sorted(
                    (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                    for f in insp.get_foreign_keys(table, schema=schema)
                ),
                insp.get_pk_constraint(table, schema=schema)["name"],
            )
        return shape


def test_a_schema_tenant_is_made_in_one_round_trip_and_stamped(wide: Tenantry) -> None:
    wide.create_tenant("warm", isolation="schema")  # once per process: role, grants, jobs
    with statements() as sent:
        tenant = wide.create_tenant("fast", isolation="schema")
    assert tenant.is_active
    (script,) = [s for s in sent if "CREATE TABLE" in s]  # all DDL in one statement
    assert script.startswith('CREATE SCHEMA "t_fast"')
    assert script.count('CREATE TABLE "t_fast".') == TABLES + 1  # + the version table
    assert script.count("CREATE INDEX ix_t") == TABLES
    assert "INSERT INTO \"t_fast\".tenantry_tenant_version (version_num) VALUES ('w1')" in script
    assert "GRANT" in script
    # The rest is the catalog row, the leftover checks, activation and the queue's control row.
    assert len(sent) <= 12, sent
    migrator = Migrator(wide)
    versions = {v.target.label: v.revision for v in migrator.versions(migrator.targets())}
    assert versions["fast"] == "w1"
    with tenant_context("fast"), wide.session() as s:
        t05 = wide.tenant_metadata.tables["tenantry_tenant.t05"]
        s.execute(insert(t05).values(tenant_id="fast", name="a", amount=1.5))
        s.commit()
        assert s.scalar(select(func.count()).select_from(t05)) == 1
        assert s.scalar(text("SELECT current_schema()")) == "t_fast"


def test_the_script_makes_the_same_tables_as_create_all(wide: Tenantry) -> None:
    wide.create_tenant("fast", isolation="schema")
    # An existing empty schema sends provisioning down the step-by-step path.
    with wide.default_store.admin_engine().begin() as conn:
        conn.execute(text('CREATE SCHEMA "t_slow"'))
    with statements() as sent:
        strategy_for("schema").provision(
            wide.default_store, "slow", wide.tenant_metadata, history=wide.tenant_history
        )
    assert not any(s.startswith("CREATE SCHEMA") for s in sent)
    assert len(sent) > TABLES  # a statement (or more) per table
    fast, slow = _shape(wide, schema_name("fast")), _shape(wide, schema_name("slow"))
    assert len(fast) == TABLES + 1
    assert fast == slow
    with wide.default_store.admin_engine().connect() as conn:
        assert wide.tenant_history is not None
        assert wide.tenant_history.current(conn, "t_slow") == "w1"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_tenant_is_stamped_and_complete(
    make_tenantry: TenantryFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    histories: tuple[Path, Path],
    backend: str,
) -> None:
    add_revision(histories[0], "w1", None, "pass")
    config = with_migrations(make_config(backend, request, tmp_path), *histories)
    t = Tenantry(config, tenant_metadata=thirty_tables())
    try:
        t.create_tenant("own", isolation="database")
        engine = t.default_store.tenant_admin_engine("own")
        try:
            with engine.connect() as conn:
                names = set(inspect(conn).get_table_names())
                assert {f"t{i:02d}" for i in range(TABLES)} <= names
                assert t.tenant_history is not None
                assert t.tenant_history.current(conn, None) == "w1"
        finally:
            engine.dispose()
        with tenant_context("own"), t.session() as s:
            t29 = t.tenant_metadata.tables["tenantry_tenant.t29"]
            s.execute(insert(t29).values(tenant_id="own", name="z"))
            s.commit()
    finally:
        t.close()
