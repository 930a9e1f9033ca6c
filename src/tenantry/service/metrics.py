"""Prometheus metrics: the queue as the database sees it, and the embedded worker.

Two sources, because they answer different questions:

* **Queue gauges** are read from the jobs tables at scrape time
  (:meth:`QueueAdmin.stats`), so they cover every worker of every process.
* **Worker counters and histograms** come from the embedded worker through its
  observer hook (:class:`tenantry.queue.WorkerObserver`): outcomes, handler
  durations, claim round trips and claim latency. They cover this process only.

Label cardinality is bounded, because a deployment may have many thousands of
tenants and a time series per tenant would swamp Prometheus:

* gauges give their own ``tenant`` label to the ``top_tenants`` tenants with
  the most unfinished jobs *at this scrape* (then, among tenants without a
  backlog, the most jobs finished within the stats window) and sum the rest as
  ``tenant="_other"`` (likewise ``top_kinds`` for ``kind``). Gauges may change
  membership between scrapes; a sum over ``tenant`` is always exact;
* counters must never go down, so a tenant cannot move between its own series
  and ``_other``: the first ``top_tenants`` tenants the worker records get
  their own series for the life of the process, later ones count as
  ``_other``. Histograms have no tenant label at all, and their ``kind`` is
  one of the registry's kinds (anything else is ``_other``).

``_other`` starts with an underscore so it can never be a real tenant id.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tenantry.queue import Job, QueueStats
from tenantry.tenancy.catalog import Tenant, TenantStatus

OTHER = "_other"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class StickyLabels:
    """At most *limit* values get a label of their own, for good; later ones are ``_other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._kept:
                return value
            if len(self._kept) < self.limit:
                self._kept.add(value)
                return value
            return OTHER


def top(values: Mapping[str, Any], n: int) -> set[str]:
    """The *n* keys with the largest values (compared as given; ties broken by name).

    Keys whose value is zero (or all zeros) are never chosen: they have no series.
    """

    def weight(key: str) -> tuple[Any, ...]:
        value = values[key]
        return tuple(value) if isinstance(value, tuple) else (value,)

    ranked = sorted(
        (k for k in values if any(weight(k))), key=lambda k: (*(-w for w in weight(k)), k)
    )
    return set(ranked[:n])


class _Families(Collector):
    """Hands precomputed families to ``generate_latest`` (one scrape's snapshot)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


@dataclass(frozen=True)
class Budget:
    top_tenants: int
    top_kinds: int


class ServiceMetrics:
    """The worker's measurements (as its observer) and the scrape-time queue gauges."""

    def __init__(self, *, kinds: Iterable[str], top_tenants: int, top_kinds: int) -> None:
        self.budget = Budget(top_tenants, top_kinds)
        self.kinds = frozenset(kinds)
        self.tenant_label = StickyLabels(top_tenants)
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "tenantry_worker_jobs",
            "Attempts the embedded worker finished, by outcome (completed, retried, dead, lost).",
            ["tenant", "kind", "outcome"],
            registry=self.registry,
        )
        self.handler_duration = Histogram(
            "tenantry_worker_handler_duration_seconds",
            "How long handlers ran, by kind and result (ok, error).",
            ["kind", "result"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.claim_duration = Histogram(
            "tenantry_worker_claim_duration_seconds",
            "Round trip of one claim transaction (acknowledgements included).",
            buckets=_CLAIM_BUCKETS,
            registry=self.registry,
        )
        self.claim_latency = Histogram(
            "tenantry_worker_claim_latency_seconds",
            "How long a job waited from becoming due (scheduled_at) until it was claimed.",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def kind_label(self, kind: str) -> str:
        return kind if kind in self.kinds else OTHER

    # -- WorkerObserver ---------------------------------------------------------------
    def claimed(self, jobs: Sequence[Job], seconds: float) -> None:
        self.claim_duration.observe(seconds)
        for job in jobs:
            if job.attempted_at is not None:
                waited = (job.attempted_at - job.scheduled_at).total_seconds()
                self.claim_latency.labels(self.kind_label(job.kind)).observe(max(0.0, waited))

    def handler_finished(self, job: Job, seconds: float, error: BaseException | None) -> None:
        result = "ok" if error is None else "error"
        self.handler_duration.labels(self.kind_label(job.kind), result).observe(seconds)

    def outcome(self, job: Job, outcome: str) -> None:
        self.jobs.labels(self.tenant_label(job.tenant_id), self.kind_label(job.kind), outcome).inc()

    # -- exposition --------------------------------------------------------------------
    def render(self, stats: QueueStats, tenants: Sequence[Tenant]) -> bytes:
        """The whole exposition: worker metrics plus this scrape's queue gauges."""
        scrape = CollectorRegistry()
        scrape.register(_Families(queue_families(stats, tenants, self.budget)))
        return generate_latest(self.registry) + generate_latest(scrape)


def queue_families(stats: QueueStats, tenants: Sequence[Tenant], budget: Budget) -> list[Metric]:
    """Gauges from one :class:`QueueStats`, with tenants and kinds folded into ``_other``."""
    depth_of = {tid: sum(t.depth.values()) for tid, t in stats.tenants.items()}
    # Deepest queues first; among tenants with no backlog, the busiest recently.
    activity = {
        tid: (depth_of[tid], t.completed + t.dead + t.cancelled) for tid, t in stats.tenants.items()
    }
    kept = top(activity, budget.top_tenants)
    kind_depth: Tally[str] = Tally()
    for t in stats.tenants.values():
        for (_state, kind), n in t.by_kind.items():
            kind_depth[kind] += n
    kept_kinds = top(kind_depth, budget.top_kinds)

    depth: Tally[tuple[str, str, str]] = Tally()
    oldest: dict[str, float] = {}
    recent: Tally[tuple[str, str]] = Tally()
    for tid, t in stats.tenants.items():
        label = tid if tid in kept else OTHER
        for (state, kind), n in t.by_kind.items():
            depth[(label, state, kind if kind in kept_kinds else OTHER)] += n
        if t.oldest_runnable_age is not None:
            oldest[label] = max(oldest.get(label, 0.0), t.oldest_runnable_age)
        outcomes = (("completed", t.completed), ("dead", t.dead), ("cancelled", t.cancelled))
        for outcome, n in outcomes:
            if n:
                recent[(label, outcome)] += n

    depth_family = GaugeMetricFamily(
        "tenantry_queue_depth",
        "Unfinished jobs (every worker) by tenant, state and kind; tenants and kinds "
        "beyond the top N by depth are summed as '_other'.",
        labels=["tenant", "state", "kind"],
    )
    for (tenant, state, kind), n in sorted(depth.items()):
        depth_family.add_metric([tenant, state, kind], n)
    oldest_family = GaugeMetricFamily(
        "tenantry_queue_oldest_runnable_age_seconds",
        "Seconds the oldest runnable (available) job has waited, by tenant ('_other': the max).",
        labels=["tenant"],
    )
    for tenant, age in sorted(oldest.items()):
        oldest_family.add_metric([tenant], age)
    recent_family = GaugeMetricFamily(
        "tenantry_queue_recent_jobs",
        f"Jobs that finished within the last {stats.window_seconds:g}s (every worker), "
        "by tenant and outcome.",
        labels=["tenant", "outcome"],
    )
    for (tenant, outcome), n in sorted(recent.items()):
        recent_family.add_metric([tenant, outcome], n)
    status_family = GaugeMetricFamily(
        "tenantry_tenants", "Tenants in the catalog by status.", labels=["status"]
    )
    by_status = Tally(t.status.value for t in tenants)
    for status in TenantStatus:
        status_family.add_metric([status.value], by_status.get(status.value, 0))
    folded = GaugeMetricFamily(
        "tenantry_metrics_folded_tenants",
        "Tenants with unfinished or recent jobs whose series are summed into tenant='_other'.",
        value=sum(1 for tid, a in activity.items() if any(a) and tid not in kept),
    )
    return [depth_family, oldest_family, recent_family, status_family, folded]
