"""Per-tenant queue control rows, kept next to the jobs they govern.

Claims must know, inside their own SQL, whether a tenant may start jobs (its
status), its fair-share weight and its limits. The catalog may live on another
server than the jobs, so each database that holds jobs also holds one control
row per tenant (``tenantry.tenantry_queue_tenants``). The catalog stays the
source of truth: tenant operations write the row at once, and every worker
reconciles the rows with the catalog periodically, which repairs a write that
failed because the store was down.

A tenant without a row gets the defaults (weight 1, no limits, not paused), so
jobs enqueued before the row exists are served, never stranded.

The rate limit's token bucket lives in the same row: claims that start jobs of
a rate-limited tenant lock the row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL),
so every worker process draws from one bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from tenantry.errors import ConfigError
from tenantry.queue.job import utcnow
from tenantry.queue.schema import control_table
from tenantry.tenancy.catalog import Tenant, TenantStatus

#: The key in a tenant's catalog settings that holds its queue settings.
SETTINGS_KEY = "queue"
MAX_WEIGHT = 1000


@dataclass(frozen=True)
class QueueSettings:
    """A tenant's queue settings, from ``settings["queue"]`` in the catalog.

    ``weight``: its share of worker capacity relative to other busy tenants.
    ``max_running``: at most this many of its jobs run at once, across all workers.
    ``rate`` / ``burst``: at most ``rate`` job starts per second on average,
    ``burst`` at once (default: one second's worth, at least 1).
    """

    weight: int = 1
    max_running: int | None = None
    rate: float | None = None
    burst: float | None = None

    @property
    def effective_burst(self) -> float | None:
        if self.rate is None:
            return None
        return self.burst if self.burst is not None else max(1.0, self.rate)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> QueueSettings:
        raw = (settings or {}).get(SETTINGS_KEY) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"settings[{SETTINGS_KEY!r}] must be a mapping")
        unknown = set(raw) - {"weight", "max_running", "rate", "burst"}
        if unknown:
            raise ConfigError(
                f"unknown queue settings: {', '.join(sorted(map(str, unknown)))} "
                "(known: weight, max_running, rate, burst)"
            )
        weight = _int(raw.get("weight", 1), "weight", 1, MAX_WEIGHT)
        max_running = raw.get("max_running")
        if max_running is not None:
            max_running = _int(max_running, "max_running", 1, 1_000_000)
        rate = _positive(raw.get("rate"), "rate")
        burst = _positive(raw.get("burst"), "burst")
        if burst is not None and rate is None:
            raise ConfigError("queue setting 'burst' needs 'rate'")
        if burst is not None and burst < 1:
            raise ConfigError("queue setting 'burst' must be at least 1")
        return cls(weight=weight, max_running=max_running, rate=rate, burst=burst)


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"queue setting {name!r} must be an integer from {low} to {high}")
    return value


def _positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"queue setting {name!r} must be a number")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"queue setting {name!r} must be a positive number")
    return number


def desired_row(tenant: Tenant) -> dict[str, Any]:
    """The control row the catalog entry calls for (without the token bucket)."""
    settings = QueueSettings.from_settings(tenant.settings)
    return {
        "tenant_id": tenant.id,
        "weight": settings.weight,
        "max_running": settings.max_running,
        "rate": settings.rate,
        "burst": settings.effective_burst,
        # Only active tenants start jobs; suspended, provisioning and deleting
        # ones keep theirs waiting.
        "paused": tenant.status is not TenantStatus.ACTIVE,
    }


_COMPARED = ("weight", "max_running", "rate", "burst", "paused")


def sync(conn: Connection, tenants: Iterable[Tenant]) -> int:
    """Make the control rows of *tenants* match the catalog; returns rows written.

    Reads first and writes only what differs, so the periodic reconcile of a
    thousand unchanged tenants costs one SELECT.
    """
    wanted = {t.id: desired_row(t) for t in tenants}
    if not wanted:
        return 0
    existing: dict[str, dict[str, Any]] = {}
    ids = list(wanted)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for found in conn.execute(
            select(control_table).where(control_table.c.tenant_id.in_(chunk))
        ).mappings():
            existing[found["tenant_id"]] = dict(found)
    written = 0
    now = utcnow()
    for tenant_id, row in wanted.items():
        have = existing.get(tenant_id)
        if have is None:
            conn.execute(control_table.insert().values(**row, updated_at=now))
            written += 1
        elif any(_differs(have[c], row[c]) for c in _COMPARED):
            values = {**row, "updated_at": now}
            if have["rate"] != row["rate"] or have["burst"] != row["burst"]:
                values.update(tokens=None, refilled_at=None)  # a new bucket starts full
            conn.execute(
                update(control_table).where(control_table.c.tenant_id == tenant_id).values(**values)
            )
            written += 1
    return written


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is None or b is None or abs(float(a) - float(b)) > 1e-9
    return bool(a != b)


def remove(conn: Connection, tenant_id: str) -> None:
    conn.execute(delete(control_table).where(control_table.c.tenant_id == tenant_id))


def prune_missing(conn: Connection, known: set[str]) -> int:
    """Drop control rows of tenants the catalog no longer has (on this database)."""
    have = set(conn.execute(select(control_table.c.tenant_id)).scalars())
    gone = sorted(have - known)
    for start in range(0, len(gone), 500):
        conn.execute(
            delete(control_table).where(control_table.c.tenant_id.in_(gone[start : start + 500]))
        )
    return len(gone)
