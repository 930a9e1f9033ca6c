"""Fair shares: how one claim batch is split between tenants with runnable jobs.

The rule is weighted fair queuing over each tenant's load in the claiming
worker. Each tenant's next job gets the virtual time ``(load + k) / weight``
(``load``: its jobs this worker holds plus its recent starts there, decaying;
``k`` = 1 for its first job in this batch, 2 for the second ...); the batch
takes the smallest virtual times. A tenant
that already has many jobs in the worker waits behind one that has few, so
over a run each busy tenant's share of the worker follows its weight, and a
tenant with a single job never waits behind another tenant's backlog. Ties go
to the tenant whose next job became due first. Every worker applies the
rule to its own slots, so the fleet's capacity is shared the same way; global
caps (``max_running``) are counted in the database.

PostgreSQL computes the same ordering inside its claim statement; SQLite (one
writer at a time) computes it here. Both use :func:`virtual_key` semantics, and
tests check they agree.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar


class _Claimed(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def scheduled_at(self) -> datetime: ...


_J = TypeVar("_J", bound=_Claimed)

#: Busy tenants one PostgreSQL claim looks at (at least the batch size). With
#: more, each claim takes the next window in tenant id order (``next_after``),
#: so a claim's cost does not grow with the number of busy tenants, and the
#: rule above holds within each window; over a cycle of windows every busy
#: tenant is looked at.
FAIR_WINDOW = 256


def next_after(after: str, claimed: list[str], catalog: list[str], window: int) -> str:
    """Where the next claim's window starts.

    After the last tenant served, in window order (ids above *after*, then
    wrapped around to those at or below it): tenants of the window that were
    not reached come first next time. If nothing was claimed (the window held
    only paused or limited tenants), the window moves on by *window* tenants of
    the sorted *catalog*, so a run of ineligible tenants cannot hold it.
    """
    if claimed:
        above = [t for t in claimed if t > after]
        wrapped = [t for t in claimed if t <= after]
        return max(wrapped) if wrapped else max(above)
    if len(catalog) <= window:
        return ""
    start = bisect.bisect_right(catalog, after)
    return catalog[(start + window - 1) % len(catalog)]


@dataclass(frozen=True)
class Contender:
    """A tenant with runnable jobs, as the claim sees it."""

    tenant_id: str
    weight: int
    running: float  # its load in the claiming worker: jobs held now (+ recent starts)
    #: How many jobs the tenant may start now: limited by its runnable jobs,
    #: its concurrency limit and its rate-limit tokens, and by the batch size.
    allowance: int
    head: datetime  # when its next job (by priority) became due


def shares(contenders: list[Contender], limit: int) -> dict[str, int]:
    """How many jobs each tenant gets out of a batch of *limit*."""
    heap: list[tuple[float, datetime, str, int]] = []
    by_id = {c.tenant_id: c for c in contenders}
    for c in contenders:
        if c.allowance > 0 and c.weight > 0:
            heapq.heappush(heap, (virtual_key(c.running, 1, c.weight), c.head, c.tenant_id, 1))
    taken: dict[str, int] = {}
    while heap and limit > 0:
        _, head, tenant_id, k = heapq.heappop(heap)
        taken[tenant_id] = k
        limit -= 1
        c = by_id[tenant_id]
        if k < c.allowance:
            heapq.heappush(heap, (virtual_key(c.running, k + 1, c.weight), head, tenant_id, k + 1))
    return taken


def interleave(jobs: list[_J]) -> list[_J]:
    """Start order for a claimed batch: round-robin over tenants, priority within each.

    Sorting the batch by priority alone would run one tenant's whole share
    before another tenant's first job.
    """
    rank: dict[str, int] = {}
    keyed = []
    for job in sorted(jobs, key=lambda j: (-j.priority, j.scheduled_at, j.id)):
        k = rank.get(job.tenant_id, 0)
        rank[job.tenant_id] = k + 1
        keyed.append((k, -job.priority, job.scheduled_at, job.id, job))
    keyed.sort(key=lambda t: t[:4])
    return [t[4] for t in keyed]


def virtual_key(running: float, k: int, weight: int) -> float:
    return (running + k) / weight


def rate_tokens(
    tokens: float | None,
    refilled_at: datetime | None,
    now: datetime,
    rate: float,
    burst: float,
) -> float:
    """A token bucket's level now: refilled at *rate* per second, capped at *burst*."""
    if tokens is None or refilled_at is None:
        return burst
    elapsed = max(0.0, (now - refilled_at).total_seconds())
    return min(burst, tokens + elapsed * rate)


def rate_allowance(level: float) -> int:
    # A fraction of a token is not a start; float noise must not round 2.9999 down.
    return max(0, math.floor(level + 1e-9))


class DecayingCounts:
    """Counts per key that halve every *half_life* seconds; reading them is cheap.

    The worker's recent starts per tenant decay like this, and every claim
    reads them all. Decaying each entry with its own power on every read
    grows costly with thousands of tenants seen recently; here values
    are stored scaled to a reference time, so time passing changes one factor
    for all of them. Entries that decayed below ``FLOOR`` are dropped.
    """

    FLOOR = 0.01
    #: Rebase past this many half-lives, long before the scale could overflow.
    _REBASE_AFTER = 64.0

    def __init__(self, half_life: float, now: float) -> None:
        self.half_life = half_life
        self._ref = now
        self._scaled: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._scaled)

    def _exponent(self, now: float) -> float:
        x = (now - self._ref) / self.half_life
        if x > self._REBASE_AFTER:
            factor = 2.0**-x
            self._scaled = {
                k: v * factor for k, v in self._scaled.items() if v * factor >= self.FLOOR
            }
            self._ref, x = now, 0.0
        return x

    def add(self, key: str, now: float, amount: float = 1.0) -> None:
        scale = 2.0 ** self._exponent(now)  # first: it may rebase every stored value
        self._scaled[key] = self._scaled.get(key, 0.0) + amount * scale

    def heavy(self, now: float, at_least: float) -> dict[str, float]:
        """The keys whose decayed count is at least *at_least*, and their counts.

        One comparison per key and nothing built for the rest: with ten
        thousand keys, most below the cut, far cheaper than ``values``.
        """
        factor = 2.0 ** -self._exponent(now)
        cut = at_least / factor
        return {k: v * factor for k, v in self._scaled.items() if v >= cut}

    def value(self, key: str, now: float) -> float:
        """One key's decayed count: 0 when absent or below ``FLOOR``, as ``values`` has it."""
        scaled = self._scaled.get(key)
        if scaled is None:
            return 0.0
        value = scaled * 2.0 ** -self._exponent(now)
        return value if value >= self.FLOOR else 0.0

    def values(self, now: float) -> dict[str, float]:
        """Every key's decayed count at *now* (those at or above ``FLOOR``); drops the rest."""
        out = self.heavy(now, self.FLOOR)
        if len(out) < len(self._scaled):
            self._scaled = {k: v for k, v in self._scaled.items() if k in out}
        return out
