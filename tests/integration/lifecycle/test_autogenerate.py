"""Autogenerate: a model change becomes a revision with no schema in it, applied to every tenant.

The models of the next release are a second MetaData (the test's own copy of
``tests.models`` with one more column): the deployed tables are made from
the first, the revision is generated from the difference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Date, MetaData, String, inspect, select, text

from tenantry import Tenantry, tenant_context
from tenantry.errors import MigrationError
from tenantry.lifecycle.migrations.autogen import autogenerate
from tenantry.lifecycle.migrations.runner import Migrator, Outcome, TargetKind
from tenantry.tenancy.isolation import schema_name, strategy_for
from tenantry.tenancy.models import GlobalBase, TenantBase, global_metadata, tenant_metadata
from tests.conftest import make_config, modes_for
from tests.integration.lifecycle.support import add_revision, make_histories, with_migrations
from tests.models import Note

BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


def _next_release(base: MetaData, fresh: MetaData, table: str, column: Column[Any]) -> MetaData:
    """A copy of *base*'s tables in *fresh*, with *column* added to *table*."""
    for t in base.sorted_tables:
        t.to_metadata(fresh)
    (target,) = [t for t in fresh.sorted_tables if t.name == table]
    target.append_column(column)
    return fresh


#: The tenant models with ``notes.due_date`` (importable as --models MODULE:ATTR).
TENANT_V2 = _next_release(
    TenantBase.metadata, tenant_metadata(), "notes", Column("due_date", Date(), nullable=True)
)
#: The global models with ``plans.tier``.
GLOBAL_V2 = _next_release(
    GlobalBase.metadata, global_metadata(), "plans", Column("tier", String(20), nullable=True)
)


@contextmanager
def _release(current: Tenantry, **metadata: MetaData) -> Iterator[Tenantry]:
    """A Tenantry of the next release: same stores and histories, new models."""
    with Tenantry(current.config, **metadata) as t:
        yield t


def _columns(t: Tenantry, tenant_id: str, table: str = "notes") -> set[str]:
    """The columns the tenant's own session sees (its schema, database or shared table)."""
    with tenant_context(tenant_id), t.session() as s:
        tenant = t.get_tenant(tenant_id)
        schema = strategy_for(tenant.isolation).data_schema(tenant_id)
        return {c["name"] for c in inspect(s.connection()).get_columns(table, schema=schema)}


def _ops(path: Path) -> str:
    return path.read_text().split("def upgrade() -> None:", 1)[1]


def _deploy(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Tenantry, tuple[Path, Path]]:
    histories = make_histories(tmp_path / "migrations")
    config = with_migrations(make_config(backend, request, tmp_path), *histories)
    return Tenantry(config), histories


@BACKENDS
def test_a_new_column_is_generated_without_schema_and_reaches_every_tenant_in_every_mode(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    current, (tenant_dir, _) = _deploy(backend, request, tmp_path)
    with current:
        tenants = [f"{mode[:2]}{i}" for mode in modes_for(backend) for i in (1, 2)]
        for tid in tenants:
            mode = {"sh": "shared", "sc": "schema"}.get(tid[:2], "database")
            current.create_tenant(tid, isolation=mode)
            with tenant_context(tid), current.session() as s:
                s.add(Note(body=f"note of {tid}"))
                s.commit()
    # On PostgreSQL the reference is a schema tenant: its schema name must not leak.
    reference = "sc2" if backend == "postgresql" else None
    with _release(current, tenant_metadata=TENANT_V2) as release:
        generated = autogenerate(release, "tenant", "add due date", reference_id=reference)
        assert generated.path is not None
        assert generated.path.parent == tenant_dir / "versions"
        expected = "tenant 'sc2' (schema" if reference else "tenant 'da1' (database"
        assert generated.reference.startswith(expected)
        ops = _ops(generated.path)
        assert re.search(r"op\.add_column\('notes', sa\.Column\('due_date', sa\.Date\(\)", ops)
        assert "op.drop_column('notes', 'due_date')" in ops
        assert "schema" not in ops  # no schema= and no schema name of any tenant
        assert "tenantry_tenant" not in ops
        assert not any(schema_name(tid) in ops for tid in tenants)
        assert "drop_table" not in ops  # tenantry's own and the global tables are left out

    with _release(current, tenant_metadata=TENANT_V2) as release:  # the deploy reads the revision
        report = Migrator(release).run(parallel=2)
        assert not report.failed
        assert {r.outcome for r in report.results} == {Outcome.UPGRADED}
        for tid in tenants:
            assert "due_date" in _columns(release, tid), tid
            with tenant_context(tid), release.session() as s:
                assert s.scalars(select(Note.body)).all() == [f"note of {tid}"]
        # Every target now matches the models: nothing more to generate, whichever the reference.
        for tid in tenants:
            again = autogenerate(release, "tenant", "nothing", reference_id=tid)
            assert again.path is None, (tid, again.path and again.path.read_text())


@BACKENDS
def test_a_global_revision_is_generated_from_the_global_models(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    current, (tenant_dir, global_dir) = _deploy(backend, request, tmp_path)
    with current:
        current.create_tenant("acme", isolation="shared")  # its tables sit beside the global ones
    with _release(current, global_metadata=GLOBAL_V2) as release:
        generated = autogenerate(release, "global", "plan tiers")
        assert generated.path is not None
        assert generated.path.parent == global_dir / "versions"
        ops = _ops(generated.path)
        assert "op.add_column('plans', sa.Column('tier', sa.String(length=20)" in ops
        assert "notes" not in ops  # the shared tenant tables are not the global history's
        assert "drop_table" not in ops
    with _release(current, global_metadata=GLOBAL_V2) as release:
        report = Migrator(release).run()
        assert [(r.target.kind, r.outcome) for r in report.results] == [
            (TargetKind.GLOBAL, Outcome.UPGRADED)
        ]
        with release.default_store.admin_engine().connect() as conn:
            assert "tier" in {c["name"] for c in inspect(conn).get_columns("plans")}
        assert autogenerate(release, "global", "nothing").path is None
    assert list((tenant_dir / "versions").glob("*.py")) == []


@BACKENDS
def test_without_tenants_a_scratch_copy_built_by_the_history_is_compared_and_dropped(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    t, (tenant_dir, _) = _deploy(backend, request, tmp_path)
    with t:
        add_revision(
            tenant_dir,
            "n1",
            None,
            """
            op.create_table(
                "notes",
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("body", sa.String(200), nullable=False),
                sa.Column("tenant_id", sa.String(40), nullable=False),
            )
            """,
        )
    with Tenantry(t.config, tenant_metadata=TENANT_V2) as release:
        generated = autogenerate(release, "tenant", "the rest")
        assert generated.reference.startswith("a scratch")
        assert generated.path is not None
        ops = _ops(generated.path)
        assert "op.create_table('products'" in ops
        assert "op.create_table('reviews'" in ops
        assert "op.add_column('notes', sa.Column('due_date'" in ops
        assert "op.create_table('notes'" not in ops  # the history made it
        if backend == "postgresql":
            with release.default_store.admin_engine().connect() as conn:
                left = conn.execute(
                    text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenantry_scratch%'")
                ).all()
            assert left == []


def test_a_reference_behind_head_is_refused(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    t, (tenant_dir, _) = _deploy("sqlite", request, tmp_path)
    with t:
        t.create_tenant("acme", isolation="database")
    add_revision(tenant_dir, "r1", None, "pass")  # written after acme was made: acme is behind
    with (
        Tenantry(t.config, tenant_metadata=TENANT_V2) as release,
        pytest.raises(MigrationError, match=r"tenant 'acme' .* is at revision \(none\)"),
    ):
        autogenerate(release, "tenant", "x")
    assert [p.name for p in (tenant_dir / "versions").glob("*.py")] == ["r1.py"]


def test_no_history_or_no_models_is_a_clear_error(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    config = make_config("sqlite", request, tmp_path)
    with Tenantry(config) as t, pytest.raises(MigrationError, match="tenant_migrations"):
        autogenerate(t, "tenant", "x")
    histories = make_histories(tmp_path / "migrations")
    with (
        Tenantry(with_migrations(config, *histories), tenant_metadata=MetaData()) as t,
        pytest.raises(MigrationError, match="tenant_metadata"),
    ):
        autogenerate(t, "tenant", "x")
