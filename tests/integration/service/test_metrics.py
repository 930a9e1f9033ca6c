"""``/metrics``: valid Prometheus text, real values, and a bounded number of tenant labels."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenantry import tenant_context
from tenantry.service.metrics import OTHER, StickyLabels
from tests.integration.service.conftest import AUTH, ServiceFactory, Svc


async def scrape(svc: Svc) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Family name -> samples (name, labels, value), parsed by prometheus_client's parser."""
    await svc.state.monitor.refresh()  # a fresh reading, not the sampler's last one
    response = await svc.client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name not in families, f"{family.name} exposed twice"
        families[family.name] = [(s.name, dict(s.labels), s.value) for s in family.samples]
    return families


def by_labels(samples: list[tuple[str, dict[str, str], float]], *keys: str) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for _name, labels, value in samples:
        out[tuple(labels[k] for k in keys)] = value
    return out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_metrics_report_the_queue_and_the_worker(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, tenants={"acme": "shared", "initech": "database"})
    for key in ("a", "b"):
        await svc.ok(
            "POST", "/tenants/acme/jobs", 201, json={"kind": "record", "payload": {"key": key}}
        )
    await svc.ok(
        "POST", "/tenants/initech/jobs", 201, json={"kind": "fail", "payload": {"key": "x"}}
    )
    for _ in range(3):
        await svc.ok(
            "POST",
            "/tenants/initech/jobs",
            201,
            json={"kind": "record", "payload": {"key": "later"}, "delay_seconds": 600},
        )
    await svc.wait_for(
        lambda: (
            svc.state.queue.admin.count_jobs(tenant_id="acme")["completed"] == 2
            and svc.state.queue.admin.count_jobs(tenant_id="initech")["dead"] == 1
        ),
        "jobs finished",
    )
    await svc.wait_for(lambda: svc.state.worker.stats.dead == 1, "worker counted")  # type: ignore[union-attr]
    m = await scrape(svc)

    depth = by_labels(m["tenantry_queue_depth"], "tenant", "state", "kind")
    assert depth == {("initech", "scheduled", "record"): 3.0}
    outcomes = by_labels(m["tenantry_worker_jobs"], "tenant", "kind", "outcome")
    outcomes = {k: v for k, v in outcomes.items()}
    assert outcomes[("acme", "record", "completed")] == 2.0
    assert outcomes[("initech", "fail", "dead")] == 1.0
    recent = by_labels(m["tenantry_queue_recent_jobs"], "tenant", "outcome")
    assert recent == {("acme", "completed"): 2.0, ("initech", "dead"): 1.0}
    assert by_labels(m["tenantry_tenants"], "status")[("active",)] == 2.0

    durations = defaultdict(float)
    for name, labels, value in m["tenantry_worker_handler_duration_seconds"]:
        if name.endswith("_count"):
            durations[(labels["kind"], labels["result"])] = value
    assert durations[("record", "ok")] == 2.0
    assert durations[("fail", "error")] == 1.0
    claims = {n: v for n, _, v in m["tenantry_worker_claim_duration_seconds"] if "_bucket" not in n}
    assert claims["tenantry_worker_claim_duration_seconds_count"] >= 1
    latency = {
        labels["kind"]: v
        for n, labels, v in m["tenantry_worker_claim_latency_seconds"]
        if n.endswith("_count")
    }
    assert latency == {"record": 2.0, "fail": 1.0}


async def test_tenant_labels_are_bounded_with_many_tenants(make_service: ServiceFactory) -> None:
    tenants = {f"t{i:03d}": "shared" for i in range(60)}
    svc: Svc = await make_service("sqlite", run_worker=False, tenants=tenants, top_tenants=5)

    def enqueue_all() -> None:
        for i, tid in enumerate(tenants):
            with tenant_context(tid):
                svc.state.queue.enqueue_many(
                    "record", [{"key": str(n)} for n in range(i + 1)], delay=600
                )

    await asyncio.to_thread(enqueue_all)
    m = await scrape(svc)
    depth = by_labels(m["tenantry_queue_depth"], "tenant", "state", "kind")
    labels = {tenant for tenant, _state, _kind in depth}
    # The five deepest queues (t059 has 60 jobs, t058 59, ...) and everything else summed.
    assert labels == {"t059", "t058", "t057", "t056", "t055", OTHER}
    assert depth[("t059", "scheduled", "record")] == 60.0
    assert sum(depth.values()) == sum(range(1, 61))  # nothing lost in the folding
    assert depth[(OTHER, "scheduled", "record")] == sum(range(1, 56))
    folded = m["tenantry_metrics_folded_tenants"]
    assert folded[0][2] == 55.0
    series = sum(len(samples) for samples in m.values())
    assert series < 200  # not one series per tenant and state


def test_counter_labels_stick_so_counters_never_decrease() -> None:
    labels = StickyLabels(2)
    assert [labels(t) for t in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]
