"""Claimed jobs waiting for a slot, and how many of them a worker should hold.

A worker claims in batches (each claim is a commit) and keeps what it cannot
start yet in this buffer. Two things decide its speed and its manners:

* which buffered job starts next. In fair mode, the one whose tenant runs the
  fewest jobs in this worker, so a tenant's single job claimed just now does
  not wait behind everything prefetched earlier for a busier tenant. Jobs
  are kept per tenant, with a heap of each tenant's first job: when the
  first-claimed tenant runs nothing here (with many tenants, nearly always)
  the choice is that heap's top; otherwise one look per buffered tenant, never
  per buffered job (a scan of the whole buffer per start made a 200-job
  buffer quadratic);
* how many jobs to hold beyond the running ones (``AdaptivePrefetch``).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator, Mapping
from itertools import count
from typing import Generic, Protocol, TypeVar


class _HasTenant(Protocol):
    @property
    def tenant_id(self) -> str: ...


class _Item(Protocol):
    @property
    def job(self) -> _HasTenant: ...


T = TypeVar("T", bound=_Item)


class JobBuffer(Generic[T]):
    """Claimed jobs in claim order, kept per tenant."""

    def __init__(self, *, fair: bool) -> None:
        self.fair = fair
        self._seq = count()
        # tenant -> its jobs in claim order, each with its place in the claim order
        self._by_tenant: dict[str, deque[tuple[int, T]]] = {}
        self._size = 0
        # (place, tenant) of each tenant's first job, smallest first; entries
        # whose job has gone are dropped when they reach the top (_first).
        self._heads: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        """Every buffered job, in claim order."""
        ordered = sorted(
            (entry for jobs in self._by_tenant.values() for entry in jobs),
            key=lambda entry: entry[0],
        )
        return iter([item for _, item in ordered])

    def __contains__(self, item: object) -> bool:
        tenant_id = getattr(getattr(item, "job", None), "tenant_id", None)
        jobs = self._by_tenant.get(tenant_id) if isinstance(tenant_id, str) else None
        return jobs is not None and any(held is item for _, held in jobs)

    def append(self, item: T) -> None:
        tenant_id = item.job.tenant_id
        jobs = self._by_tenant.get(tenant_id)
        place = next(self._seq)
        if jobs is None:
            jobs = self._by_tenant[tenant_id] = deque()
            heapq.heappush(self._heads, (place, tenant_id))
        jobs.append((place, item))
        self._size += 1

    def _first(self) -> str:
        """The tenant whose first job was claimed first."""
        heads, by_tenant = self._heads, self._by_tenant
        while True:
            place, tenant_id = heads[0]
            jobs = by_tenant.get(tenant_id)
            if jobs is not None and jobs[0][0] == place:
                return tenant_id
            heapq.heappop(heads)  # that job started or was removed

    def pop_next(self, active: Mapping[str, int]) -> T:
        """The job to start next.

        Fair: the tenant with the fewest jobs running here (``active``), ties
        to the tenant whose job was claimed first. FIFO: the first claimed.
        """
        if not self._size:
            raise IndexError("pop from an empty job buffer")
        tenant_id = self._first()
        if self.fair and active.get(tenant_id, 0):
            # The first-claimed tenant runs jobs here: one that runs fewer may
            # come first. With thousands of tenants each running nothing, the
            # common case above needs no scan (the scan was a sixth of the loop).
            tenant_id = min(
                self._by_tenant,
                key=lambda t: (active.get(t, 0), self._by_tenant[t][0][0]),
            )
        return self._pop_first_of(tenant_id)

    def _pop_first_of(self, tenant_id: str) -> T:
        jobs = self._by_tenant[tenant_id]
        _, item = jobs.popleft()
        if jobs:
            heapq.heappush(self._heads, (jobs[0][0], tenant_id))
        else:
            del self._by_tenant[tenant_id]
        self._size -= 1
        return item

    def remove(self, item: T) -> bool:
        """Take one job out (cancelled or taken over before it started)."""
        tenant_id = item.job.tenant_id
        jobs = self._by_tenant.get(tenant_id)
        if jobs is None:
            return False
        for index, entry in enumerate(jobs):
            if entry[1] is item:
                del jobs[index]
                break
        else:
            return False
        if not jobs:
            del self._by_tenant[tenant_id]
        elif index == 0:
            heapq.heappush(self._heads, (jobs[0][0], tenant_id))
        self._size -= 1
        return True

    def clear(self) -> list[T]:
        """Empty the buffer; returns what it held, in claim order."""
        items = list(self)
        self._by_tenant.clear()
        self._heads.clear()
        self._size = 0
        return items


class AdaptivePrefetch:
    """How many claimed jobs to hold beyond the running ones.

    A claim is a round trip and a commit. Holding too few jobs, slots go idle
    while the next claim is under way: with no-op jobs and a 10-job buffer a
    worker spent most of its time waiting for claims. Holding too many, jobs
    sit leased in one worker while others could run them, and a long job's
    batch waits behind it. So the buffer covers what the slots start during
    a few claim round trips (``horizon``), measured as the worker goes:
    fast jobs get a deep buffer and big claims, slow jobs get ``minimum``.
    """

    def __init__(self, minimum: int, maximum: int, *, horizon: float = 4.0) -> None:
        self.minimum = max(0, minimum)
        self.maximum = max(self.minimum, maximum)
        self.horizon = horizon
        self._rate = 0.0  # job starts per second, smoothed
        self._latency = 0.0  # seconds per claim, smoothed
        self._starts = 0
        self._since: float | None = None

    def started(self, n: int = 1) -> None:
        self._starts += n

    def claimed(self, seconds: float) -> None:
        self._latency = seconds if not self._latency else 0.8 * self._latency + 0.2 * seconds

    def value(self, now: float) -> int:
        if self._since is None:
            self._since = now
        elapsed = now - self._since
        if elapsed >= 0.05:
            rate = self._starts / elapsed
            self._rate = 0.7 * self._rate + 0.3 * rate
            self._starts = 0
            self._since = now
        want = math.ceil(self._rate * self._latency * self.horizon)
        return min(self.maximum, max(self.minimum, want))


class FixedPrefetch:
    """A prefetch set by hand (``Worker(prefetch=N)``)."""

    def __init__(self, size: int) -> None:
        self.size = max(0, size)

    def started(self, n: int = 1) -> None:
        pass

    def claimed(self, seconds: float) -> None:
        pass

    def value(self, now: float) -> int:
        return self.size
