"""Keeping a worker in step with the catalog: sources, weights, control rows, statuses.

The catalog says which databases hold jobs (a tenant database comes and
goes with its tenant), each tenant's fair-share weight, and the settings
the claim statements read from the control rows next to the jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

from tenantry.errors import DB_ERRORS, TenantryError
from tenantry.queue import control
from tenantry.queue.admin import QueueAdmin
from tenantry.queue.sources import JobSource
from tenantry.queue.worker.observe import ErrorLog
from tenantry.queue.worker.state import Runtime
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)

#: A worker serving at least this many tenants keeps all their statuses cached
#: (see CatalogSync.status_listing_due): listed again after this share of the cache's ttl...
STATUS_LISTING_MIN_TENANTS = 64
STATUS_LISTING_SHARE = 0.6
#: ...but listing the statuses takes at most this share of the time.
STATUS_LISTING_MAX_LOAD = 0.05


class Listing(NamedTuple):
    """What a refresh found in the catalog (``CatalogSync.list_tenants``)."""

    grouped: dict[str, tuple[JobSource, list[Tenant]]]
    source_tenants: dict[str, list[str]]
    members: dict[str, frozenset[str]]
    weights: dict[str, int]


class CatalogSync:
    """Refreshes the sources from the catalog, and what the claims read of it.

    *on_new* and *on_gone* hear of sources as they appear and disappear
    (wake-ups to set up, jobs to give up).
    """

    def __init__(
        self,
        rt: Runtime,
        admin: QueueAdmin,
        on_new: Callable[[JobSource], None],
        on_gone: Callable[[str], None],
    ) -> None:
        self._rt = rt
        self._admin = admin
        self._on_new = on_new
        self._on_gone = on_gone
        stores = rt.options.stores
        self._stores = list(stores) if stores else None
        self._full_sync_interval = rt.options.full_sync_interval
        self._errors = ErrorLog(log)
        #: The catalog at the last refresh.
        self.listed: dict[str, Tenant] = {}
        #: Tenant -> fair-share weight (from its queue settings).
        self.weights: dict[str, int] = {}
        #: Source key -> its tenants, sorted; and the same as sets, for lookups.
        self.source_tenants: dict[str, list[str]] = {}
        self.source_members: dict[str, frozenset[str]] = {}
        self._weight_of: dict[str, tuple[Tenant, int]] = {}  # weights, per catalog entry
        self._synced: dict[str, tuple[str, datetime]] = {}  # tenant -> (source, updated_at)
        self._last_full_sync = 0.0
        self._listing_seconds = 0.0  # how long the last status listing took

    async def run(self) -> None:
        """Refresh every ``refresh_interval``; keep the statuses cached when due."""
        options = self._rt.options
        signals = self._rt.report.signals
        tick = min(options.poll_interval, 0.5)
        last_refresh = time.monotonic()
        last_statuses = 0.0
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - last_refresh >= options.refresh_interval:
                last_refresh = now
                try:
                    await self.refresh()
                except DB_ERRORS as exc:
                    self._errors.failed("source refresh", "the catalog", exc)
                else:
                    signals.refreshes.bump()
            if self.status_listing_due(now - last_statuses):
                last_statuses = now
                try:
                    await self._cache_statuses()
                except DB_ERRORS as exc:
                    self._errors.failed("status listing", "the catalog", exc)
                else:
                    signals.status_listings.bump()

    def status_listing_due(self, since: float) -> bool:
        """Whether to list the tenants' statuses now, to keep them cached.

        A job whose tenant's status is not cached waits for a catalog lookup
        before it starts (a claim warms its batch's tenants, at a round trip's
        cost). With thousands of tenants most jobs' tenants were not seen
        within the cache's ttl, so most batches waited. A worker with many
        tenants lists every status (``Catalog.cache_statuses``) before the
        listing expires; with a catalog so large that listing it costs more
        than ``STATUS_LISTING_MAX_LOAD`` of the time, less often (and batches
        warm their tenants as before).
        """
        ttl = self._rt.tenancy.catalog.ttl
        if ttl <= 0 or len(self.weights) < STATUS_LISTING_MIN_TENANTS:
            return False
        every = max(ttl * STATUS_LISTING_SHARE, self._listing_seconds / STATUS_LISTING_MAX_LOAD)
        return since >= every

    async def _cache_statuses(self) -> None:
        started = time.perf_counter()
        await self._rt.threads.offload(self._rt.tenancy.catalog.cache_statuses)
        self._listing_seconds = time.perf_counter() - started

    def list_tenants(self) -> Listing:
        """The catalog, grouped by source, and what the claims need of it.

        Runs on a thread, and does the per-tenant work there: with ten
        thousand tenants, reading every weight from its settings on the event
        loop held jobs up at each refresh. Whole catalog entries are re-read,
        and weights worked out, only for tenants whose entry changed; every
        ``full_sync_interval`` the whole catalog is read, as the control rows
        are compared in full then (an edit made without ``updated_at``).
        """
        catalog = self._rt.tenancy.catalog
        full = time.monotonic() - self._last_full_sync >= self._full_sync_interval
        listed = catalog.list() if full else catalog.list_since(self.listed)
        self.listed = {t.id: t for t in listed}
        grouped = self._admin.tenants_by_source(
            stores=self._stores, tenants=self._rt.tenants, listed=listed
        )
        known = self._weight_of
        weighed: dict[str, tuple[Tenant, int]] = {}
        for _, members in grouped.values():
            for tenant in members:
                hit = known.get(tenant.id)
                weighed[tenant.id] = (
                    hit if hit is not None and hit[0] is tenant else (tenant, weight_of(tenant))
                )
        self._weight_of = weighed
        source_tenants = {key: sorted(t.id for t in m) for key, (_, m) in grouped.items()}
        return Listing(
            grouped,
            source_tenants,
            {k: frozenset(v) for k, v in source_tenants.items()},
            {tenant_id: weight for tenant_id, (_, weight) in weighed.items()},
        )

    async def refresh(self) -> None:
        """Pick up tenants and databases added or removed, and repair control rows."""
        state = self._rt.state
        listing = await self._rt.threads.offload(self.list_tenants)
        grouped = listing.grouped
        known = {s.key for s in state.sources}
        sources = [grouped[k][0] for k in sorted(grouped)]
        for source in sources:
            if source.key in known:
                continue
            log.info("serving jobs from %s", source.key)
            self._on_new(source)
        current = {s.key for s in sources}
        for key in known - current:
            log.info("no longer serving jobs from %s (tenant gone or moved)", key)
            self._on_gone(key)
        state.sources = sources
        self.source_tenants = listing.source_tenants
        self.source_members = listing.members
        self.weights = listing.weights
        await self._rt.threads.offload(self._sync_controls, grouped)

    def _sync_controls(self, grouped: dict[str, tuple[JobSource, list[Tenant]]]) -> None:
        """Write control rows for tenants changed since this worker last synced them.

        A full pass (every tenant, and pruning rows of deleted tenants) runs every
        ``full_sync_interval``; in between only catalog entries with a new
        ``updated_at`` are written, so a thousand tenant databases are not
        visited every refresh.
        """
        now = time.monotonic()
        full = now - self._last_full_sync >= self._full_sync_interval
        failed = False
        for key, (source, members) in grouped.items():
            todo = (
                members
                if full
                else [t for t in members if self._synced.get(t.id) != (key, t.updated_at)]
            )
            if not todo:
                continue
            try:
                with source.engine().begin() as conn:
                    control.sync(conn, todo)
                    if full and self._rt.tenants is None:
                        control.prune_missing(conn, {t.id for t in members})
            except DB_ERRORS as exc:
                failed = True
                self._errors.failed("control-row sync", key, exc)
                continue
            for tenant in todo:
                self._synced[tenant.id] = (key, tenant.updated_at)
        if full and not failed:
            self._last_full_sync = now


def weight_of(tenant: Tenant) -> int:
    """A tenant's fair-share weight; the default share when its settings are unreadable."""
    try:
        return control.QueueSettings.from_settings(tenant.settings).weight
    except TenantryError:
        return 1
