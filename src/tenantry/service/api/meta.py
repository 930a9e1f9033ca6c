"""Queue statistics and the service itself: its job kinds and its embedded worker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter

from tenantry.service.api.deps import ERRORS, Service
from tenantry.service.api.schemas import KindList, KindOut, TenantIdPath, Window, WorkerOut

router = APIRouter()


@router.get("/stats", tags=["stats"], responses=ERRORS)
def stats(svc: Service, window: Window = 300.0) -> dict[str, Any]:
    """Per tenant and overall: depth by state and kind, oldest runnable age, recent outcomes."""
    return svc.queue.admin.stats(window=timedelta(seconds=window)).to_dict()


@router.get("/tenants/{tenant_id}/stats", tags=["stats"], responses=ERRORS)
def tenant_stats(svc: Service, tenant_id: TenantIdPath, window: Window = 300.0) -> dict[str, Any]:
    svc.tenantry.get_tenant(tenant_id)
    found = svc.queue.admin.stats(tenant_id=tenant_id, window=timedelta(seconds=window))
    return found.tenants[tenant_id].to_dict()


@router.get("/kinds", response_model=KindList, tags=["service"], responses=ERRORS)
def kinds(svc: Service) -> KindList:
    """The job kinds this service can enqueue, with their payloads' JSON schemas."""
    if svc.registry is None:
        return KindList(registry_loaded=False, kinds=[])
    out = []
    for kind in svc.registry.kinds:
        handler = svc.registry.get(kind)
        try:
            schema: dict[str, Any] | None = handler.adapter.json_schema()
        except Exception:  # some payload types have no JSON schema; the kind still works
            schema = None
        out.append(
            KindOut(
                kind=kind,
                queue=handler.queue,
                priority=handler.priority,
                max_attempts=handler.retry.max_attempts,
                transactional=handler.transactional,
                timeout=handler.timeout,
                payload_schema=schema,
            )
        )
    return KindList(registry_loaded=True, kinds=out)


@router.get("/worker", response_model=WorkerOut, tags=["service"], responses=ERRORS)
async def worker(svc: Service) -> WorkerOut:
    """The embedded worker: whether it runs, and its own counters (this process only)."""
    w = svc.worker
    if w is None:
        return WorkerOut(enabled=svc.run_worker and svc.registry is not None, running=False)
    running = svc.worker_task is not None and not svc.worker_task.done()
    return WorkerOut(
        enabled=True,
        running=running,
        worker_id=w.worker_id,
        concurrency=w.concurrency,
        queues=list(w.queues),
        stats=dict(vars(w.stats)),
        tenants={tid: dict(vars(c)) for tid, c in sorted(w.tenant_stats.items())},
    )
