"""``tenantry migrate``: the global tables once, then every tenant target that is behind.

A *target* is one place the tenant history is recorded: the shared tables
of a store (once for all its shared tenants), one schema, or one database.
Each has its own version table, so a run that stops half-way (a failure, a
kill) is resumed by running again: the versions are read first, cheaply
(one query per few hundred schemas), and only targets that are behind, or
whose tenants a crashed run left ``migrating``, are touched.

``tenantry migrate downgrade`` runs the same way in the other direction, to
one absolute revision for every target (``-N`` is resolved from head once),
so a re-run after a failure finishes it instead of going further down.

While its target is migrated a tenant is ``migrating``: sessions refuse with
the retryable :class:`~tenantry.errors.TenantMigratingError` and the queue
pauses its jobs (control rows). ``online=True`` skips that for migrations
the application declares safe to run under traffic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

from tenantry.errors import MigrationError, TenantStateError
from tenantry.lifecycle.migrations.history import History
from tenantry.lifecycle.migrations.targets import (
    Outcome,
    Report,
    Result,
    Target,
    TargetKind,
    TargetVersion,
)
from tenantry.lifecycle.migrations.walls import point_at_target, rebuild_wall
from tenantry.tenancy.catalog import Tenant, TenantStatus
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.hooks import VersionHistory
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.models import TENANT_SCHEMA, TENANTRY_SCHEMA

log = get_logger(__name__)

#: What one target's run returns: its revision before and after.
_Step = tuple[str | None, str | None]

#: Schemas whose versions one UNION ALL query reads.
_VERSION_CHUNK = 250
#: Tenants that are not (yet, or any more) complete are not migrated; nor is a
#: tenant being moved (its new copy is made at head, from a source checked at head).
_SKIPPED_STATUSES = (TenantStatus.PROVISIONING, TenantStatus.DELETING, TenantStatus.MOVING)


def _alembic(history: VersionHistory | None) -> History | None:
    """The Alembic history behind *history*: only those run migration scripts."""
    if history is None or isinstance(history, History):
        return history
    raise MigrationError(
        f"migrations need an Alembic history ({type(history).__name__} is not one); "
        "build the application with tenantry.Tenantry"
    )


def _in_shared_tables(tenant: Tenant) -> bool:
    """Its tables are a store's shared ones: one target for all such tenants of the store."""
    return strategy_for(tenant.isolation).shares_tables


def _error_text(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    message = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {message[0] if message else ''}".strip()


class Migrator:
    """Plans and runs migrations of one :class:`~tenantry.tenantry.Tenantry`'s targets."""

    def __init__(self, tenantry: Tenancy) -> None:
        self.tenantry = tenantry
        self.tenant_history = _alembic(tenantry.tenant_history)
        self.global_history = _alembic(tenantry.global_history)
        if self.tenant_history is None and self.global_history is None:
            raise MigrationError(
                "no migrations are configured: set [tenantry] tenant_migrations and/or "
                "global_migrations to Alembic script directories (tenantry migrate init DIR)"
            )

    # -- planning -----------------------------------------------------------------
    def targets(
        self, *, tenant_ids: Sequence[str] = (), stores: Sequence[str] = ()
    ) -> list[Target]:
        """Every target of the selected tenants (all when no filter), global first."""
        for name in stores:
            self.tenantry.config.store(name)  # a typo is an error, not an empty run
        wanted = set(tenant_ids)
        found: list[Tenant] = []
        if wanted:
            found = [self.tenantry.get_tenant(tid) for tid in sorted(wanted)]
        else:
            found = self.tenantry.list_tenants()
        if stores:
            found = [t for t in found if t.store in stores]
        found = [t for t in found if t.status not in _SKIPPED_STATUSES]
        targets: list[Target] = []
        if self.global_history is not None and not wanted:
            default = self.tenantry.default_store.name
            if not stores or default in stores:
                targets.append(Target(TargetKind.GLOBAL, default))
        if self.tenant_history is None:
            return targets
        # A store's shared tables serve all its shared tenants, also those a
        # --tenant filter did not name: all of them are paused while they migrate.
        shared_stores = {t.store for t in found if _in_shared_tables(t)}
        if shared_stores:
            everyone = found if not wanted and not stores else self.tenantry.list_tenants()
            for store_name in sorted(shared_stores):
                served = tuple(
                    t
                    for t in everyone
                    if _in_shared_tables(t)
                    and t.store == store_name
                    and t.status not in _SKIPPED_STATUSES
                )
                targets.append(Target(TargetKind.SHARED, store_name, None, served))
        for tenant in found:
            if not _in_shared_tables(tenant):
                kind = TargetKind(tenant.isolation.value)
                targets.append(Target(kind, tenant.store, tenant.id, (tenant,)))
        return targets

    def _history(self, target: Target) -> History:
        history = self.global_history if target.kind is TargetKind.GLOBAL else self.tenant_history
        assert history is not None  # targets() only plans kinds with a history
        return history

    def versions(self, targets: Sequence[Target], *, parallel: int = 4) -> list[TargetVersion]:
        """Each target's recorded revision, read as cheaply as the modes allow.

        Schemas: one catalog query per store for which schemas have a version
        table, then one UNION ALL per few hundred of them. Databases need a
        connection each, so they are read *parallel* at a time.
        """
        found: dict[Target, str | None] = {}
        by_store: dict[str, list[Target]] = {}
        databases: list[Target] = []
        for target in targets:
            if target.kind is TargetKind.SCHEMA:
                by_store.setdefault(target.store, []).append(target)
            elif target.kind is TargetKind.DATABASE:
                databases.append(target)
            else:
                with self.tenantry.store(target.store).admin_engine().connect() as conn:
                    found[target] = self._history(target).current(conn, None)
        for store_name, group in by_store.items():
            found.update(self._schema_versions(store_name, group))
        if databases:
            with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
                for target, revision in zip(
                    databases, pool.map(self._database_version, databases), strict=True
                ):
                    found[target] = revision
        return [TargetVersion(t, found.get(t), self._history(t).head) for t in targets]

    def _schema_versions(self, store_name: str, group: list[Target]) -> dict[Target, str | None]:
        history = self.tenant_history
        assert history is not None
        table = history.version_table
        result: dict[Target, str | None] = dict.fromkeys(group)
        with self.tenantry.store(store_name).admin_engine().connect() as conn:
            have = set(
                conn.execute(
                    text(
                        "SELECT n.nspname FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relname = :t AND c.relkind IN ('r', 'p')"
                    ),
                    {"t": table},
                ).scalars()
            )
            readable = [t for t in group if t.schema in have]
            by_schema = {t.schema: t for t in readable}
            for start in range(0, len(readable), _VERSION_CHUNK):
                chunk = readable[start : start + _VERSION_CHUNK]
                parts, params = [], {}
                for i, target in enumerate(chunk):
                    schema = target.schema or ""
                    params[f"s{i}"] = schema
                    parts.append(
                        f"SELECT CAST(:s{i} AS text) AS s, version_num "
                        f"FROM {pg.quote(conn, schema)}.{pg.quote(conn, table)}"
                    )
                for schema, version in conn.execute(text(" UNION ALL ".join(parts)), params):
                    result[by_schema[schema]] = version
        return result

    def _database_version(self, target: Target) -> str | None:
        assert target.tenant_id is not None
        engine = self.tenantry.store(target.store).tenant_admin_engine(target.tenant_id)
        try:
            with engine.connect() as conn:
                return self._history(target).current(conn, None)
        finally:
            engine.dispose()

    # -- running --------------------------------------------------------------------
    def run(
        self,
        *,
        tenant_ids: Sequence[str] = (),
        stores: Sequence[str] = (),
        parallel: int = 1,
        skip_failing: bool = False,
        online: bool = False,
        on_plan: Callable[[int], None] | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> Report:
        """Upgrade every selected target that is behind; the global tables first.

        Without *skip_failing* the first failure stops the run: targets that
        have not started are reported ``not run`` (the ones already running
        finish). A failed target's transaction is rolled back, so it stays at
        its old revision, and its tenants are served again.
        """
        if parallel < 1:
            raise MigrationError("parallel must be at least 1")
        versions = self.versions(
            self.targets(tenant_ids=tenant_ids, stores=stores), parallel=parallel
        )
        todo = [v for v in versions if v.behind]

        def upgrade(history: History, conn: Connection, target: Target) -> _Step:
            return history.upgrade(conn, target.schema)

        return self._execute(
            versions,
            todo,
            upgrade,
            Outcome.UPGRADED,
            parallel=parallel,
            skip_failing=skip_failing,
            online=online,
            on_plan=on_plan,
            on_result=on_result,
        )

    def destination(self, spec: str, *, global_: bool = False) -> str | None:
        """The absolute revision ``downgrade SPEC`` goes to (None: base)."""
        history = self.global_history if global_ else self.tenant_history
        if history is None:
            which = "global_migrations" if global_ else "tenant_migrations"
            raise MigrationError(f"nothing to downgrade: [tenantry] {which} is not set")
        return history.resolve_destination(spec)

    def downgrade(
        self,
        spec: str,
        *,
        global_: bool = False,
        tenant_ids: Sequence[str] = (),
        stores: Sequence[str] = (),
        parallel: int = 1,
        skip_failing: bool = False,
        online: bool = False,
        on_plan: Callable[[int], None] | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> Report:
        """Take the tenant targets (or, with *global_*, the global tables) down to *spec*.

        *spec* is a revision id, ``base``, or ``-N``: N steps below head,
        resolved once for every target, so a run repeated after a failure or
        a crash finishes the job instead of going further down. Targets at or
        below the destination are left alone. Each target goes down in one
        transaction, as an upgrade does, with the same pausing and failure rules.
        """
        if parallel < 1:
            raise MigrationError("parallel must be at least 1")
        destination = self.destination(spec, global_=global_)
        if global_ and tenant_ids:
            raise MigrationError("--global takes the global tables down; it has no --tenant")
        planned = self.targets(tenant_ids=tenant_ids, stores=stores)
        chosen = [t for t in planned if (t.kind is TargetKind.GLOBAL) == global_]
        versions = self.versions(chosen, parallel=parallel)
        todo = [
            v
            for v in versions
            if self._history(v.target).above(v.revision, destination) or v.target.interrupted
        ]

        def down(history: History, conn: Connection, target: Target) -> _Step:
            return history.downgrade(conn, target.schema, destination)

        return self._execute(
            versions,
            todo,
            down,
            Outcome.DOWNGRADED,
            parallel=parallel,
            skip_failing=skip_failing,
            online=online,
            on_plan=on_plan,
            on_result=on_result,
        )

    def _execute(
        self,
        versions: list[TargetVersion],
        todo: list[TargetVersion],
        step: Callable[[History, Connection, Target], _Step],
        changed: Outcome,
        *,
        parallel: int,
        skip_failing: bool,
        online: bool,
        on_plan: Callable[[int], None] | None,
        on_result: Callable[[Result], None] | None,
    ) -> Report:
        """Run *step* on each target of *todo*: the global tables first, then the rest."""
        report = Report(untouched=len(versions) - len(todo))
        if on_plan is not None:
            on_plan(len(todo))
        if not todo:
            return report
        stop = threading.Event()
        engines: dict[str, Engine] = {}
        lock = threading.Lock()

        def record(result: Result) -> Result:
            if result.outcome is Outcome.FAILED and not skip_failing:
                stop.set()
            if on_result is not None:
                on_result(result)
            return result

        def one(version: TargetVersion) -> Result:
            if stop.is_set():
                return record(Result(version.target, Outcome.NOT_RUN, before=version.revision))
            return record(
                self._migrate(
                    version,
                    step,
                    changed,
                    online=online,
                    engines=engines,
                    lock=lock,
                    size=parallel,
                )
            )

        try:
            first = [v for v in todo if v.target.kind is TargetKind.GLOBAL]
            rest = [v for v in todo if v.target.kind is not TargetKind.GLOBAL]
            report.results.extend(one(v) for v in first)
            if report.failed:
                stop.set()  # tenant tables may depend on the global ones
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                report.results.extend(pool.map(one, rest))
        finally:
            for engine in engines.values():
                engine.dispose()
        return report

    def _engine_for(
        self, target: Target, engines: dict[str, Engine], lock: threading.Lock, size: int
    ) -> tuple[Engine, bool]:
        """The engine reaching *target*'s tables; True when the caller must dispose it.

        On SQLite the migration takes the write lock at BEGIN: a transaction
        that reads the version table and only then writes fails at once
        ("database is locked") if another connection wrote in between, e.g.
        the catalog marking tenants ``migrating`` from another thread.
        """
        store = self.tenantry.store(target.store)
        immediate = {"sqlite_begin": "BEGIN IMMEDIATE"} if not store.is_postgres else {}
        if target.kind is TargetKind.DATABASE:
            assert target.tenant_id is not None
            engine = store.tenant_admin_engine(target.tenant_id)
            return engine.execution_options(**immediate), True
        if target.kind is not TargetKind.SCHEMA:
            return store.admin_engine().execution_options(**immediate), False
        with lock:
            pooled = engines.get(store.name)
            if pooled is None:
                pooled = engines[store.name] = store.pooled_admin_engine(size)
        translate = {TENANT_SCHEMA: target.schema, TENANTRY_SCHEMA: TENANTRY_SCHEMA}
        return pooled.execution_options(schema_translate_map=translate), False

    def _migrate(
        self,
        version: TargetVersion,
        step: Callable[[History, Connection, Target], _Step],
        changed: Outcome,
        *,
        online: bool,
        engines: dict[str, Engine],
        lock: threading.Lock,
        size: int,
    ) -> Result:
        target = version.target
        started = time.monotonic()
        paused = self._pause(target, online=online)
        engine, dispose = self._engine_for(target, engines, lock, size)
        try:
            store = self.tenantry.store(target.store)
            with engine.begin() as conn:
                point_at_target(conn, store, target)
                before, after = step(self._history(target), conn, target)
                rebuild_wall(conn, store, target, self.tenantry.tenant_metadata)
        except Exception as exc:  # a migration script can raise anything: report it
            verb = "migrating" if changed is Outcome.UPGRADED else "downgrading"
            log.warning("%s %s failed: %s", verb, target.label, _error_text(exc))
            return Result(
                target,
                Outcome.FAILED,
                before=version.revision,
                after=version.revision,
                error=_error_text(exc),
                seconds=time.monotonic() - started,
            )
        finally:
            if dispose:
                engine.dispose()
            self._unpause(paused)
        outcome = changed if before != after else Outcome.CURRENT
        log.info("%s %s: %s -> %s", changed.value, target.label, before, after)
        return Result(target, outcome, before, after, seconds=time.monotonic() - started)

    def _pause(self, target: Target, *, online: bool) -> list[str]:
        """Mark the target's active tenants ``migrating``; returns those to restore.

        Tenants a crashed run left ``migrating`` are restored too. Suspended
        tenants are migrated and stay suspended.
        """
        paused = [t.id for t in target.tenants if t.status is TenantStatus.MIGRATING]
        if online:
            return paused
        for tenant in target.tenants:
            if tenant.status is not TenantStatus.ACTIVE:
                continue
            try:
                changed = self.tenantry.catalog.set_status(
                    tenant.id, TenantStatus.MIGRATING, expect=[TenantStatus.ACTIVE]
                )
            except TenantStateError:
                continue  # suspended (or deleted) meanwhile: leave it as it is
            self.tenantry.status_changed(changed)
            paused.append(tenant.id)
        return paused

    def _unpause(self, tenant_ids: Iterable[str]) -> None:
        for tenant_id in tenant_ids:
            try:
                changed = self.tenantry.catalog.set_status(
                    tenant_id, TenantStatus.ACTIVE, expect=[TenantStatus.MIGRATING]
                )
            except TenantStateError:
                continue
            self.tenantry.status_changed(changed)

    @contextmanager
    def reading(self, target: Target) -> Iterator[Connection]:
        """A connection to *target*'s tables, as a migration sees them, in a transaction
        that is rolled back: for comparing them with the models (autogenerate)."""
        pooled: dict[str, Engine] = {}
        engine, dispose = self._engine_for(target, pooled, threading.Lock(), 1)
        try:
            with engine.connect() as conn, conn.begin() as tx:
                point_at_target(conn, self.tenantry.store(target.store), target)
                yield conn
                tx.rollback()
        finally:
            for made in [*pooled.values(), *([engine] if dispose else [])]:
                made.dispose()

    # -- adoption -------------------------------------------------------------------
    def stamp_unrecorded(
        self,
        revision: str | None = None,
        *,
        tenant_ids: Sequence[str] = (),
        stores: Sequence[str] = (),
    ) -> list[Target]:
        """Record *revision* (default: head) where no version is recorded yet.

        For tables that predate the migration set-up (made by ``create_all``):
        they match the models, so they are at head, but nothing says so.
        Targets that have a version are left alone, and so are those of a
        history with no revision yet (there is nothing to record for them).
        When that leaves nothing to stamp of what is unrecorded, it is an error
        rather than a run that claims to have stamped something.
        """
        versions = self.versions(self.targets(tenant_ids=tenant_ids, stores=stores))
        unrecorded = [v.target for v in versions if v.revision is None]
        todo = [t for t in unrecorded if revision is not None or self._history(t).head is not None]
        if unrecorded and not todo:
            kinds = sorted({self._history(t).kind for t in unrecorded})
            raise MigrationError(
                f"nothing to stamp: the {' and '.join(kinds)} history has no revision yet; "
                "write one (tenantry migrate revision) first. Nothing was recorded"
            )
        stamped = []
        engines: dict[str, Engine] = {}
        try:
            for target in todo:
                engine, dispose = self._engine_for(target, engines, threading.Lock(), 1)
                try:
                    with engine.begin() as conn:
                        self._history(target).stamp(conn, target.schema, revision)
                finally:
                    if dispose:
                        engine.dispose()
                stamped.append(target)
        finally:
            for engine in engines.values():
                engine.dispose()
        return stamped


__all__ = ["Migrator", "Outcome", "Report", "Result", "Target", "TargetKind", "TargetVersion"]
