"""Autogenerate: compare the models with a *reference* and write what differs as a revision.

Alembic compares a ``MetaData`` with one connection's tables. tenantry's
tenant tables exist many times over, so the tenant history is compared with
one **reference**, chosen in this order:

1. the tenant named by ``--reference ID``;
2. else the first active tenant (by id);
3. else, with no active tenant, a scratch copy that the history itself
   builds from nothing: a schema created inside a transaction that is rolled
   back (PostgreSQL), or an in-memory database (SQLite). Nothing is left behind.

The tenant models live in the placeholder schema; they are compared as
copies with no schema, against the reference's tables made the default ones
(``search_path`` on PostgreSQL, as a migration run sets it), so the rendered
operations name no schema and ``tenantry migrate`` applies them to every
target the way it applies a hand-written revision. The global history is
compared with the default store's global tables.

Tables that are tenantry's own (``tenantry_`` prefix) and those of the other
metadata (the global tables beside a store's shared tenant tables, and the
other way round) are never proposed for dropping.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate.api import RevisionContext
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import Script, ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, MetaData, create_engine, text

from tenantry.errors import MigrationError
from tenantry.lifecycle.migrations.history import History
from tenantry.lifecycle.migrations.runner import Migrator, Target, TargetKind
from tenantry.tenancy.catalog import TenantStatus
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.isolation import postgres as pg

HistoryKind = Literal["tenant", "global"]

#: Names of tables tenantry keeps beside the application's (catalog, jobs, versions).
_OWN_PREFIX = "tenantry_"


@dataclass(frozen=True)
class Reference:
    """The tables the models are compared with, on an open connection."""

    connection: Connection
    history: History
    metadata: MetaData
    #: Table names that are not the history's even though they sit beside its tables.
    foreign: frozenset[str]
    description: str

    def include_object(
        self, obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        """Alembic's filter: leave tables that are not the history's out of the comparison."""
        if type_ == "table" and reflected and compare_to is None and name is not None:
            return not (name.startswith(_OWN_PREFIX) or name in self.foreign)
        return True

    def configure(self, env: EnvironmentContext) -> None:
        """Point an Alembic environment (``env.py``'s ``context``) at this reference."""
        env.configure(
            connection=self.connection,
            target_metadata=self.metadata,
            version_table=self.history.version_table,
            include_object=self.include_object,
            compare_type=True,
            dont_mutate=True,
        )


@dataclass(frozen=True)
class Generated:
    """What ``revision --autogenerate`` wrote (path None: no difference, nothing written)."""

    path: Path | None
    revision: str
    reference: str


def require_setup(tenancy: Tenancy, kind: HistoryKind) -> History:
    """The history to write into, or one line saying what to configure."""
    config = tenancy.config
    directory = config.tenant_migrations if kind == "tenant" else config.global_migrations
    if directory is None:
        raise MigrationError(
            f"no {kind} history to write into: set [tenantry] {kind}_migrations to an Alembic "
            "script directory (create both with `tenantry migrate init DIR`)"
        )
    history = _history(tenancy, kind)
    assert history is not None  # the directory is configured
    return history


def require_models(tenancy: Tenancy, kind: HistoryKind) -> None:
    """Refuse to compare no models at all: every table would be proposed for dropping."""
    metadata = tenancy.tenant_metadata if kind == "tenant" else tenancy.global_metadata
    if not metadata.tables:
        raise MigrationError(
            f"autogenerate compares your {kind} models with the database, and none are known: "
            f'set [tenantry] {kind}_metadata = "module:attr" (a MetaData or a declarative base)'
        )


def _history(tenancy: Tenancy, kind: HistoryKind) -> History | None:
    found = tenancy.tenant_history if kind == "tenant" else tenancy.global_history
    if found is not None and not isinstance(found, History):
        raise MigrationError("autogenerate needs an Alembic history; build tenantry.Tenantry")
    return found


def comparison_metadata(tenancy: Tenancy, kind: HistoryKind) -> MetaData:
    """The models as Alembic compares them: tenant tables copied out of the placeholder schema."""
    if kind == "global":
        return tenancy.global_metadata
    source = tenancy.tenant_metadata
    copy = MetaData(naming_convention=source.naming_convention)
    for table in source.sorted_tables:
        # None: the copy's schema, which is none (documented; the stubs leave it out).
        # Foreign keys to tables of the placeholder schema follow the tables.
        table.to_metadata(copy, schema=None)  # type: ignore[arg-type]
    return copy


@contextmanager
def reference(
    tenancy: Tenancy, kind: HistoryKind, reference_id: str | None = None
) -> Iterator[Reference]:
    """Open the reference of *kind*'s history (module docstring), checked to be at head."""
    history = _history(tenancy, kind)
    if history is None:
        raise MigrationError(f"[tenantry] {kind}_migrations is not set")
    metadata = comparison_metadata(tenancy, kind)
    other = tenancy.global_metadata if kind == "tenant" else tenancy.tenant_metadata
    foreign = frozenset(t.name for t in other.sorted_tables)
    migrator = Migrator(tenancy)
    if kind == "global":
        if reference_id is not None:
            raise MigrationError("--reference names a tenant; the global tables have none")
        target = Target(TargetKind.GLOBAL, tenancy.default_store.name)
        described = f"the global tables on store {target.store!r}"
    else:
        tenant_id = reference_id or _first_active(tenancy)
        if tenant_id is None:
            with _scratch(tenancy, history) as (conn, described):
                yield Reference(conn, history, metadata, foreign, described)
            return
        tenant = tenancy.get_tenant(tenant_id)
        found = migrator.targets(tenant_ids=[tenant_id])
        if not found:
            raise MigrationError(
                f"tenant {tenant_id!r} is {tenant.status.value}: choose an active reference"
            )
        (target,) = found
        described = f"tenant {tenant_id!r} ({tenant.isolation.value} on store {tenant.store!r})"
    (version,) = migrator.versions([target])
    if version.revision != history.head:
        raise MigrationError(
            f"the reference, {described}, is at revision {version.revision or '(none)'} and the "
            f"{kind} history's head is {history.head or '(none)'}: run `tenantry migrate` "
            "first" + (" (or choose another with --reference)" if kind == "tenant" else "")
        )
    with migrator.reading(target) as conn:
        yield Reference(conn, history, metadata, foreign, described)


def _first_active(tenancy: Tenancy) -> str | None:
    active = tenancy.list_tenants(status=TenantStatus.ACTIVE)
    return active[0].id if active else None


@contextmanager
def _scratch(tenancy: Tenancy, history: History) -> Iterator[tuple[Connection, str]]:
    """Tables the history builds from nothing, gone afterwards (no tenant to compare with)."""
    store = tenancy.default_store
    if store.is_postgres:
        schema = f"tenantry_scratch_{secrets.token_hex(4)}"
        with store.admin_engine().connect() as conn, conn.begin() as tx:
            conn.execute(text(f"CREATE SCHEMA {pg.quote(conn, schema)}"))
            conn.execute(text("SELECT set_config('search_path', :p, true)"), {"p": schema})
            _build(history, conn)
            yield conn, f"a scratch schema built by the tenant history on store {store.name!r}"
            tx.rollback()  # the schema and everything in it
        return
    engine = create_engine("sqlite://")
    try:
        with engine.connect() as conn, conn.begin() as tx:
            _build(history, conn)
            yield conn, "a scratch SQLite database built by the tenant history"
            tx.rollback()
    finally:
        engine.dispose()


def _build(history: History, conn: Connection) -> None:
    try:
        history.upgrade(conn, None)
    except Exception as exc:  # a revision script can raise anything
        raise MigrationError(
            "there is no active tenant to compare the models with, and the tenant history "
            f"does not build its tables from an empty database ({type(exc).__name__}: {exc}); "
            "create a tenant, or pass --reference ID"
        ) from exc


def autogenerate(
    tenancy: Tenancy,
    kind: HistoryKind,
    message: str,
    *,
    reference_id: str | None = None,
    rev_id: str | None = None,
) -> Generated:
    """Write a revision with what the models have and the reference does not.

    Nothing is written when there is no difference: an empty revision would
    only add a step every target has to record.
    """
    history = require_setup(tenancy, kind)
    require_models(tenancy, kind)
    config = _alembic_config(history.directory)
    script = ScriptDirectory.from_config(config)
    command_args = {
        "message": message,
        "autogenerate": True,
        "sql": False,
        "head": "head",
        "splice": False,
        "branch_label": None,
        "version_path": None,
        "rev_id": rev_id,
        "depends_on": None,
    }
    revisions = RevisionContext(config, script, command_args)
    with reference(tenancy, kind, reference_id) as ref:
        env = EnvironmentContext(config, script)
        ref.configure(env)
        context = env.get_context()
        try:
            revisions.run_autogenerate(context.get_current_heads(), context)
        except CommandError as exc:
            raise MigrationError(f"autogenerate against {ref.description}: {exc}") from exc
        (generated,) = revisions.generated_revisions
        upgrade_ops = generated.upgrade_ops
        assert upgrade_ops is not None
        rev = str(generated.rev_id)
        if upgrade_ops.is_empty():
            return Generated(None, rev, ref.description)
        with redirect_stdout(io.StringIO()):  # Alembic's "Generating ... done": the caller says it
            (written,) = list(revisions.generate_scripts())
    assert written is not None
    return Generated(Path(written.path), rev, ref.description)


def blank_revision(
    tenancy: Tenancy, kind: HistoryKind, message: str, *, rev_id: str | None = None
) -> Path:
    """A revision with empty ``upgrade()``/``downgrade()`` to write by hand."""
    history = require_setup(tenancy, kind)
    with redirect_stdout(io.StringIO()):
        written = command.revision(_alembic_config(history.directory), message, rev_id=rev_id)
    assert isinstance(written, Script)
    return Path(written.path)


def run_in_env(env: EnvironmentContext, tenancy: Tenancy, kind: HistoryKind) -> None:
    """What a scaffolded ``env.py`` does for ``alembic revision --autogenerate``.

    ``-x reference=ID`` chooses the reference tenant.
    """
    require_setup(tenancy, kind)
    require_models(tenancy, kind)
    reference_id = env.get_x_argument(as_dictionary=True).get("reference")
    with reference(tenancy, kind, reference_id) as ref:
        ref.configure(env)
        env.run_migrations()


def _alembic_config(directory: Path) -> Config:
    ini = directory / "alembic.ini"
    config = Config(str(ini)) if ini.exists() else Config()
    config.set_main_option("script_location", str(directory))
    return config
