"""One Alembic history (tenant tables or global tables), run on connections tenantry opens.

tenantry does not go through Alembic's ``env.py`` to migrate: it needs to run
the same scripts on a thousand schemas, from several threads, each on a
connection whose ``search_path`` and ``schema_translate_map`` point at one
tenant. So it builds a :class:`MigrationContext` per connection itself and
calls the revision scripts' ``upgrade()`` functions.

Alembic's ``op`` is a module-level proxy that ``Operations.context()``
installs and removes around each run, for the whole process: two threads
migrating at once would swap each other's target (or find it removed), and
so would an Alembic command run elsewhere in the process. tenantry leaves it
alone. Its :class:`History` loads its own copy of every revision module, and
there it rebinds the names that refer to ``alembic.op`` (``from alembic
import op``, or a function imported from it) to :data:`THREAD_OP`, which
dispatches to the ``Operations`` of the run in the calling thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

import alembic.op
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Executable, Table, insert
from sqlalchemy.schema import CreateTable

from tenantry.errors import MigrationError

#: Version tables, one per history. Distinct names because the global history
#: and the shared tenant tables of the default store share one schema.
TENANT_VERSION_TABLE = "tenantry_tenant_version"
GLOBAL_VERSION_TABLE = "tenantry_global_version"

#: The ``Operations`` of the migration run in this thread (or task).
_operations: ContextVar[Operations | None] = ContextVar("tenantry_migration_op", default=None)


class _ThreadOperations:
    """What ``op`` is in tenantry's revision modules: the calling thread's ``Operations``."""

    def __getattr__(self, name: str) -> Any:
        ops = _operations.get()
        if ops is None:
            raise MigrationError(
                f"alembic.op.{name}() called outside a migration run by tenantry in this thread"
            )
        return getattr(ops, name)


THREAD_OP = _ThreadOperations()


def _dispatching(name: str) -> Callable[..., Any]:
    """Stands in for ``from alembic.op import <name>``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(THREAD_OP, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def _bind_op(module: ModuleType) -> None:
    """Point one revision module's ``op`` (however it was imported) at :data:`THREAD_OP`.

    The module is this history's own copy (Alembic loads revision files
    afresh per script directory, outside ``sys.modules``): nothing else sees
    the change. A helper module shared by revision scripts is not such a
    copy: it takes ``op`` as an argument from the script that calls it.
    """
    proxies = vars(alembic.op)
    for name, value in list(vars(module).items()):
        if value is alembic.op:
            setattr(module, name, THREAD_OP)
        elif isinstance(value, FunctionType) and value.__globals__ is proxies:
            setattr(module, name, _dispatching(value.__name__))


class History:
    """An Alembic script directory, loaded once and shared by every thread of a run."""

    def __init__(self, kind: str, directory: str | Path, version_table: str) -> None:
        self.kind = kind
        self.directory = Path(directory)
        self.version_table = version_table
        if (
            not (self.directory / "script.py.mako").exists()
            or not (self.directory / "versions").is_dir()
        ):
            raise MigrationError(
                f"{kind} migrations: {self.directory} is not an Alembic script directory "
                "(no script.py.mako or versions/); create one with `tenantry migrate init`"
            )
        try:
            self.script = ScriptDirectory(str(self.directory))
            # Loads every revision module now, in this thread: threads then only read.
            heads = self.script.get_heads()
            for revision in self.script.walk_revisions():
                _bind_op(revision.module)
        except CommandError as exc:
            raise MigrationError(f"{kind} migrations in {self.directory}: {exc}") from exc
        if len(heads) > 1:
            raise MigrationError(
                f"{kind} migrations in {self.directory} have {len(heads)} heads "
                f"({', '.join(sorted(heads))}); merge them (alembic merge) first"
            )
        self.head: str | None = heads[0] if heads else None

    def _context(self, conn: Connection, schema: str | None, **opts: Any) -> MigrationContext:
        return MigrationContext.configure(
            connection=conn,
            opts={
                "script": self.script,
                "version_table": self.version_table,
                "version_table_schema": schema,
                **opts,
            },
        )

    def current(self, conn: Connection, schema: str | None) -> str | None:
        """The revision recorded on *conn*'s database (None: no version table or row)."""
        heads = self._context(conn, schema).get_current_heads()
        return heads[0] if heads else None

    def upgrade(self, conn: Connection, schema: str | None) -> tuple[str | None, str | None]:
        """Run the missing revisions to head inside *conn*'s current transaction.

        Returns (before, after). The caller owns the transaction: on
        PostgreSQL and SQLite the whole upgrade commits or rolls back as one.
        """
        script = self.script

        def steps(heads: Sequence[str], _ctx: MigrationContext) -> Iterable[Any]:
            return script._upgrade_revs("heads", heads)  # type: ignore[arg-type]

        ctx = self._context(conn, schema, fn=steps, transactional_ddl=True)
        before_heads = ctx.get_current_heads()
        before = before_heads[0] if before_heads else None
        if before == self.head:
            return before, before
        token = _operations.set(Operations(ctx))
        try:
            ctx.run_migrations()
        finally:
            _operations.reset(token)
        return before, self.current(conn, schema)

    def downgrade(
        self, conn: Connection, schema: str | None, destination: str | None
    ) -> tuple[str | None, str | None]:
        """Run the revisions above *destination* down, inside *conn*'s current transaction.

        *destination* is absolute (None: base, no tables of the history),
        never relative: a run that is repeated after a failure leaves the
        targets already there alone instead of taking them one step further.
        A target at or below *destination* is not touched. Returns (before, after).
        """
        script = self.script
        down_to = destination or "base"

        def steps(heads: Sequence[str], _ctx: MigrationContext) -> Iterable[Any]:
            return script._downgrade_revs(down_to, heads)  # type: ignore[arg-type]

        ctx = self._context(conn, schema, fn=steps, transactional_ddl=True)
        before_heads = ctx.get_current_heads()
        before = before_heads[0] if before_heads else None
        if not self.above(before, destination):
            return before, before
        token = _operations.set(Operations(ctx))
        try:
            ctx.run_migrations()
        finally:
            _operations.reset(token)
        return before, self.current(conn, schema)

    def ancestors(self, revision: str) -> set[str]:
        """The revisions *revision* is built on (not itself)."""
        found: set[str] = set()
        todo = [revision]
        while todo:
            script = self.script.get_revision(todo.pop())
            if script is None:
                continue
            for down in script._all_down_revisions:
                if down not in found:
                    found.add(down)
                    todo.append(down)
        return found

    def above(self, revision: str | None, destination: str | None) -> bool:
        """Whether a target at *revision* must go down to reach *destination*."""
        if revision is None or revision == destination:
            return False
        return destination is None or destination in self.ancestors(revision)

    def resolve_destination(self, spec: str) -> str | None:
        """The absolute revision a downgrade goes to: an id, ``base``, or ``-N`` below head.

        ``-N`` counts from head, once, for every target: targets already at
        or below it stay where they are.
        """
        if spec == "base":
            return None
        if spec.startswith("-") and spec[1:].isdigit():
            steps = int(spec[1:])
            revision = self.head
            for _ in range(steps):
                if revision is None:
                    raise MigrationError(
                        f"{self.kind} migrations: {spec} goes below base "
                        "(the history is shorter than that)"
                    )
                script = self.script.get_revision(revision)
                assert script is not None
                downs = script._all_down_revisions
                if len(downs) > 1:
                    raise MigrationError(
                        f"{self.kind} migrations: {spec} crosses the merge {revision}; "
                        "name the revision to go down to"
                    )
                revision = downs[0] if downs else None
            return revision
        try:
            script = self.script.get_revision(spec)
        except (CommandError, RevisionError) as exc:
            raise MigrationError(f"{self.kind} migrations: no revision {spec!r}") from exc
        if script is None:
            raise MigrationError(f"{self.kind} migrations: no revision {spec!r}")
        return script.revision

    def stamp(self, conn: Connection, schema: str | None, revision: str | None = None) -> None:
        """Record *revision* (default: head) without running any script."""
        target = revision or self.head
        if target is None:
            return
        ctx = self._context(conn, schema)
        try:
            ctx.stamp(self.script, target)
        except CommandError as exc:
            raise MigrationError(f"{self.kind} migrations: cannot stamp {target!r}: {exc}") from exc

    def stamp_statements(self, dialect_name: str, schema: str | None) -> list[Executable]:
        """CREATE TABLE and INSERT that record head (for provisioning scripts).

        The table is Alembic's own definition (name, column, primary key), so
        Alembic later reads it like one it made itself.
        """
        if self.head is None:
            return []
        ctx = MigrationContext.configure(
            dialect_name=dialect_name,
            opts={"version_table": self.version_table, "version_table_schema": schema},
        )
        table: Table = ctx._version
        return [CreateTable(table), insert(table).values(version_num=self.head)]
