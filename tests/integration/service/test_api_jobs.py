"""Jobs and stats through the admin API; the embedded worker really runs what is enqueued."""

from __future__ import annotations

import asyncio

import pytest

from tenantry import tenant_context
from tenantry.queue import JobState
from tests.conftest import BACKENDS
from tests.integration.service.conftest import ServiceFactory, Svc, error_of
from tests.models import Note

pytestmark = pytest.mark.parametrize("backend", BACKENDS)
TWO = {"acme": "shared", "initech": "database"}


async def allow(svc: Svc, tenant_id: str, key: str) -> None:
    """Make the downstream system of the ``flaky`` handler accept *key*.

    In a thread: a blocking write on the event loop would wait for a SQLite
    lock held by the worker running on that very loop.
    """

    def write() -> None:
        with tenant_context(tenant_id), svc.t.session() as s:
            s.add(Note(body=f"allow:{key}"))
            s.commit()

    await asyncio.to_thread(write)


async def test_enqueued_jobs_are_run_by_the_embedded_worker(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, tenants=TWO)
    for tid in TWO:
        job = await svc.ok(
            "POST", f"/tenants/{tid}/jobs", 201, json={"kind": "record", "payload": {"key": tid}}
        )
        assert job["tenant_id"] == tid
        assert job["created"] is True

    await svc.wait_for(lambda: all(svc.notes(t) == [t] for t in TWO), "both jobs ran")
    for tid in TWO:
        page = await svc.ok("GET", f"/tenants/{tid}/jobs")
        assert [j["state"] for j in page["items"]] == ["completed"]
        assert page["items"][0]["worker_id"] == svc.state.worker.worker_id  # type: ignore[union-attr]
    worker = await svc.ok("GET", "/worker")
    assert worker["running"] is True
    assert worker["stats"]["completed"] == 2
    assert set(worker["tenants"]) == set(TWO)


async def test_enqueue_validates_before_writing(make_service: ServiceFactory, backend: str) -> None:
    svc: Svc = await make_service(backend, run_worker=False, tenants=TWO)
    cases = [
        ({"kind": "nope", "payload": {}}, 422, "unknown_job_kind"),
        ({"kind": "record", "payload": {"key": 5}}, 422, "invalid_payload"),
        ({"kind": "record", "payload": {"key": "a\x00b"}}, 422, "invalid_request"),
        ({"kind": "record", "payload": {"key": "k"}, "run_at": "2030-01-01T00:00:00"}, 422, None),
        ({"kind": "record", "payload": {"key": "k"}, "priority": 40000}, 422, None),
        ({"kind": "record", "payload": {"key": "k"}, "delay_seconds": -1}, 422, None),
        ({"kind": "record", "payload": {"key": "k"}, "queue": "q" * 101}, 422, None),
        ({"kind": "record", "payload": {"key": "k"}, "max_attempts": 0}, 422, None),
        ({"kind": "record", "payload": {"key": "k"}, "bogus": 1}, 422, None),
    ]
    for body, status, code in cases:
        response = await svc.api("POST", "/tenants/acme/jobs", json=body)
        assert response.status_code == status, (body, response.text)
        if code:
            assert error_of(response)["code"] == code
    nan = await svc.api(
        "POST",
        "/tenants/acme/jobs",
        content=b'{"kind": "record", "payload": {"key": "k", "extra": NaN}}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422
    assert "finite" in error_of(nan)["message"]
    assert svc.state.queue.admin.count_jobs(tenant_id="acme") == dict.fromkeys(
        [s.value for s in JobState], 0
    )

    missing = await svc.api("POST", "/tenants/nobody/jobs", json={"kind": "record", "payload": {}})
    assert missing.status_code in (404, 422)
    await asyncio.to_thread(svc.t.suspend_tenant, "initech")
    suspended = await svc.api(
        "POST", "/tenants/initech/jobs", json={"kind": "record", "payload": {"key": "x"}}
    )
    assert suspended.status_code == 409
    assert error_of(suspended)["code"] == "tenant_suspended"

    body = {"kind": "record", "payload": {"key": "once"}, "idempotency_key": "k-1"}
    first = await svc.api("POST", "/tenants/acme/jobs", json=body)
    second = await svc.api("POST", "/tenants/acme/jobs", json=body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["created"] is False


async def test_without_a_registry_nothing_can_be_enqueued(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, registry=None, tenants={"acme": "shared"})
    refused = await svc.api("POST", "/tenants/acme/jobs", json={"kind": "record", "payload": {}})
    assert refused.status_code == 409
    error = error_of(refused)
    assert error["code"] == "no_job_registry"
    assert "--app" in error["message"]
    assert (await svc.ok("GET", "/kinds")) == {"registry_loaded": False, "kinds": []}
    assert (await svc.ok("GET", "/worker"))["enabled"] is False
    assert svc.state.worker is None


async def test_listing_filters_and_pages(make_service: ServiceFactory, backend: str) -> None:
    svc: Svc = await make_service(backend, run_worker=False, tenants=TWO)
    made = []
    for i in range(7):
        kind = "record" if i % 2 else "fail"
        job = await svc.ok(
            "POST",
            "/tenants/acme/jobs",
            201,
            json={"kind": kind, "payload": {"key": str(i)}, "delay_seconds": 3600},
        )
        made.append(job["id"])
    await svc.ok(
        "POST", "/tenants/initech/jobs", 201, json={"kind": "record", "payload": {"key": "i"}}
    )

    pages, offset = [], 0
    while True:
        page = await svc.ok("GET", "/tenants/acme/jobs", params={"limit": 3, "offset": offset})
        pages.append([j["id"] for j in page["items"]])
        if page["next_offset"] is None:
            break
        offset = page["next_offset"]
    assert pages == [made[::-1][0:3], made[::-1][3:6], made[::-1][6:]]  # newest first

    fails = await svc.ok("GET", "/tenants/acme/jobs", params={"kind": "fail"})
    assert sorted(j["id"] for j in fails["items"]) == made[0::2]
    scheduled = await svc.ok("GET", "/jobs", params={"state": "scheduled", "limit": 100})
    assert len(scheduled["items"]) == 7
    everyone = await svc.ok("GET", "/jobs", params={"limit": 100})
    assert {j["tenant_id"] for j in everyone["items"]} == {"acme", "initech"}
    only = await svc.ok("GET", "/jobs", params={"tenant_id": "initech"})
    assert [j["tenant_id"] for j in only["items"]] == ["initech"]
    for params in ({"state": "sleeping"}, {"tenant_id": "Bad"}, {"limit": 1000}):
        assert (await svc.api("GET", "/jobs", params=params)).status_code == 422, params
    assert (await svc.api("GET", "/jobs", params={"tenant_id": "nobody"})).status_code == 404


async def test_dead_jobs_show_their_errors_and_can_be_retried(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, tenants=TWO)
    job = await svc.ok(
        "POST", "/tenants/initech/jobs", 201, json={"kind": "flaky", "payload": {"key": "k1"}}
    )
    path = f"/tenants/initech/jobs/{job['id']}"

    async def state() -> str:
        return str((await svc.ok("GET", path))["state"])

    await svc.wait_for(
        lambda: svc.state.queue.admin.get_job("initech", job["id"]).state is JobState.DEAD, "dead"
    )
    shown = await svc.ok("GET", path)
    assert shown["error_count"] == 1
    error = shown["errors"][0]
    assert error["type"] == "DownstreamError"
    assert error["message"] == "downstream refused <k1> & said no"
    assert "Traceback" in error["traceback"]
    assert 'raise DownstreamError(f"downstream refused' in error["traceback"]
    listed = await svc.ok("GET", "/tenants/initech/jobs", params={"state": "dead"})
    assert listed["items"][0]["last_error"]["message"] == error["message"]
    assert listed["items"][0]["last_error"]["traceback"] is None  # lists stay small

    await allow(svc, "initech", "k1")
    retried = await svc.ok("POST", f"{path}/retry")
    assert retried["state"] in ("available", "running", "completed")
    await svc.wait_for(lambda: "done:k1" in svc.notes("initech"), "the retried job ran")
    assert await state() == "completed"
    again = await svc.api("POST", f"{path}/retry")
    assert again.status_code == 409
    assert error_of(again)["code"] == "job_state"
    assert (await svc.api("POST", "/tenants/initech/jobs/999999/retry")).status_code == 404
    assert error_of(await svc.api("GET", "/tenants/initech/jobs/999999"))["code"] == "job_not_found"


async def test_cancel_retry_dead_and_purge(make_service: ServiceFactory, backend: str) -> None:
    svc: Svc = await make_service(backend, tenants=TWO)
    later = await svc.ok(
        "POST",
        "/tenants/acme/jobs",
        201,
        json={"kind": "record", "payload": {"key": "later"}, "delay_seconds": 3600},
    )
    cancelled = await svc.ok("POST", f"/tenants/acme/jobs/{later['id']}/cancel")
    assert cancelled["state"] == "cancelled"
    twice = await svc.api("POST", f"/tenants/acme/jobs/{later['id']}/cancel")
    assert twice.status_code == 409

    keys = ["a", "b", "c"]
    for key in keys:
        await svc.ok(
            "POST", "/tenants/acme/jobs", 201, json={"kind": "flaky", "payload": {"key": key}}
        )
    await svc.wait_for(
        lambda: svc.state.queue.admin.count_jobs(tenant_id="acme")["dead"] == 3, "three dead jobs"
    )
    for key in keys:
        await allow(svc, "acme", key)
    assert (await svc.ok("POST", "/tenants/acme/jobs/retry-dead")) == {"count": 3}
    await svc.wait_for(
        lambda: all(f"done:{k}" in svc.notes("acme") for k in keys), "requeued jobs ran"
    )
    assert (await svc.ok("POST", "/tenants/acme/jobs/retry-dead")) == {"count": 0}

    refused = await svc.api("POST", "/jobs/purge", json={"states": ["running"]})
    assert refused.status_code == 409
    assert error_of(refused)["code"] == "job_state"
    purged = await svc.ok(
        "POST", "/jobs/purge", json={"tenant_id": "acme", "states": ["completed", "cancelled"]}
    )
    assert purged == {"count": 4}
    assert svc.state.queue.admin.count_jobs(tenant_id="acme")["completed"] == 0
    assert (await svc.api("POST", "/jobs/purge", json={"tenant_id": "nobody"})).status_code == 404


async def test_stats_overall_and_per_tenant(make_service: ServiceFactory, backend: str) -> None:
    svc: Svc = await make_service(backend, run_worker=False, tenants=TWO)
    for _ in range(3):
        await svc.ok(
            "POST",
            "/tenants/acme/jobs",
            201,
            json={"kind": "record", "payload": {"key": "s"}, "delay_seconds": 60},
        )
    await svc.ok(
        "POST", "/tenants/initech/jobs", 201, json={"kind": "record", "payload": {"key": "i"}}
    )
    overall = await svc.ok("GET", "/stats", params={"window": 60})
    assert overall["window_seconds"] == 60
    assert overall["total"]["depth"] == {"scheduled": 3, "available": 1}
    by_tenant = {t["tenant_id"]: t for t in overall["tenants"]}
    assert by_tenant["acme"]["depth"] == {"scheduled": 3}
    assert by_tenant["initech"]["by_kind"] == [{"state": "available", "kind": "record", "count": 1}]
    one = await svc.ok("GET", "/tenants/initech/stats")
    assert one["depth"] == {"available": 1}
    assert one["oldest_runnable_age"] is not None
    for params in ({"window": 0}, {"window": 10**9}):
        assert (await svc.api("GET", "/stats", params=params)).status_code == 422
    kinds = await svc.ok("GET", "/kinds")
    assert kinds["registry_loaded"] is True
    assert {k["kind"] for k in kinds["kinds"]} == {"record", "flaky", "fail"}
    record = next(k for k in kinds["kinds"] if k["kind"] == "record")
    assert record["payload_schema"]["properties"]["key"]["type"] == "string"
