"""Revision scripts run by tenantry reach the migration of their own thread, and nothing else.

Alembic's ``op`` is a process-wide proxy. tenantry's histories rebind ``op``
in their own copies of the revision modules instead of replacing it, so two
tenantry migrations in two threads, and a plain Alembic run in a third, each
write to their own database at the same moment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import alembic.op
import pytest
import sqlalchemy as sa
from alembic import op
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from tenantry.errors import MigrationError
from tenantry.lifecycle.migrations.history import (
    TENANT_VERSION_TABLE,
    THREAD_OP,
    History,
)
from tests.integration.lifecycle.support import add_revision, make_histories

#: Every migrating thread waits here until all of them are inside a migration.
RENDEZVOUS = threading.Barrier(3, timeout=30)

#: Each thread holds its migration open across the rendezvous, so the runs overlap.
_CREATE_ITEMS = """
from tests.integration.lifecycle.test_history import RENDEZVOUS
bind = op.get_bind()
RENDEZVOUS.wait()
op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))
assert op.get_bind() is bind
"""

#: The same through a function imported from ``alembic.op``.
_CREATE_PARTS = """
add_column("items", sa.Column("part", sa.String(20), nullable=True))
"""


def _history(tmp_path: Path) -> History:
    tenant, _ = make_histories(tmp_path / "migrations")
    add_revision(tenant, "r1", None, _CREATE_ITEMS)
    add_revision(tenant, "r2", "r1", _CREATE_PARTS, imports="from alembic.op import add_column")
    return History("tenant", tenant, TENANT_VERSION_TABLE)


def _in_thread(target: Callable[[], None], failures: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except BaseException as exc:
            failures.append(exc)
            RENDEZVOUS.abort()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_two_migrations_in_two_threads_and_a_plain_alembic_run_do_not_interfere(
    tmp_path: Path,
) -> None:
    RENDEZVOUS.reset()
    history = _history(tmp_path)
    engines = {name: sa.create_engine(f"sqlite:///{tmp_path / name}.db") for name in "abc"}
    before = vars(alembic.op).get("_proxy")
    results: dict[str, tuple[str | None, str | None]] = {}
    failures: list[BaseException] = []

    def migrate(name: str) -> Callable[[], None]:
        def run() -> None:
            with engines[name].begin() as conn:
                results[name] = history.upgrade(conn, None)

        return run

    def plain_alembic() -> None:
        with (
            engines["c"].begin() as conn,
            Operations.context(MigrationContext.configure(conn)),
        ):
            RENDEZVOUS.wait()
            op.create_table("other", sa.Column("id", sa.Integer, primary_key=True))

    threads = [
        _in_thread(migrate("a"), failures),
        _in_thread(migrate("b"), failures),
        _in_thread(plain_alembic, failures),
    ]
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert results == {"a": (None, "r2"), "b": (None, "r2")}
    for name, engine in engines.items():
        tables = set(sa.inspect(engine).get_table_names())
        if name == "c":
            assert tables == {"other"}
        else:
            assert tables == {"items", TENANT_VERSION_TABLE}
            columns = {c["name"] for c in sa.inspect(engine).get_columns("items")}
            assert columns == {"id", "part"}
        engine.dispose()
    assert vars(alembic.op).get("_proxy") is before


def test_the_revision_modules_op_is_tenantrys_and_alembics_is_untouched(tmp_path: Path) -> None:
    history = _history(tmp_path)
    modules: dict[str, Any] = {r.revision: r.module for r in history.script.walk_revisions()}
    assert modules["r1"].op is THREAD_OP
    assert modules["r2"].add_column is not alembic.op.add_column
    assert "_proxy" not in vars(alembic.op) or vars(alembic.op)["_proxy"] is not THREAD_OP


def test_op_outside_a_run_is_a_clear_error(tmp_path: Path) -> None:
    history = _history(tmp_path)
    (r1,) = [r for r in history.script.walk_revisions() if r.revision == "r1"]
    with pytest.raises(MigrationError, match="outside a migration run"):
        r1.module.op.create_table("x")
