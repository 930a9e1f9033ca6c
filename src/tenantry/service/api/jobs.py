"""``/api/v1/jobs`` and a tenant's jobs: list, enqueue, inspect, retry, cancel, purge."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response

from tenantry.queue import Job, JobState
from tenantry.service.api.deps import ERRORS, Service
from tenantry.service.api.schemas import (
    Count,
    EnqueuedOut,
    EnqueueIn,
    JobIdPath,
    JobOut,
    JobPage,
    Limit,
    Offset,
    PurgeIn,
    TenantIdPath,
    Text,
    job_out,
    job_summary,
)
from tenantry.tenancy.context import tenant_context
from tenantry.tenancy.ids import TENANT_ID_PATTERN

router = APIRouter()


def _page(jobs: list[Job], limit: int, offset: int) -> JobPage:
    more = len(jobs) > limit
    return JobPage(
        items=[job_summary(j) for j in jobs[:limit]],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if more else None,
    )


@router.get("/jobs", response_model=JobPage, tags=["jobs"], responses=ERRORS)
def list_jobs(
    svc: Service,
    tenant_id: Annotated[str, Query(pattern=TENANT_ID_PATTERN, max_length=40)] | None = None,
    state: JobState | None = None,
    kind: Annotated[Text, Query(max_length=200)] | None = None,
    queue: Annotated[Text, Query(max_length=100)] | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> JobPage:
    """Jobs newest first, across every tenant unless one is given."""
    jobs = svc.queue.admin.list_jobs(
        tenant_id=tenant_id, state=state, kind=kind, queue=queue, limit=limit + 1, offset=offset
    )
    return _page(jobs, limit, offset)


@router.get("/tenants/{tenant_id}/jobs", response_model=JobPage, tags=["jobs"], responses=ERRORS)
def list_tenant_jobs(
    svc: Service,
    tenant_id: TenantIdPath,
    state: JobState | None = None,
    kind: Annotated[Text, Query(max_length=200)] | None = None,
    queue: Annotated[Text, Query(max_length=100)] | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> JobPage:
    """One tenant's jobs, newest first."""
    jobs = svc.queue.admin.list_jobs(
        tenant_id=tenant_id, state=state, kind=kind, queue=queue, limit=limit + 1, offset=offset
    )
    return _page(jobs, limit, offset)


@router.post(
    "/tenants/{tenant_id}/jobs",
    status_code=201,
    response_model=EnqueuedOut,
    tags=["jobs"],
    responses={**ERRORS, 200: {"description": "An unfinished job holds the idempotency key."}},
)
def enqueue_job(
    svc: Service, tenant_id: TenantIdPath, body: EnqueueIn, response: Response
) -> EnqueuedOut:
    """Enqueue a job for the tenant; the kind and payload are checked by the job registry."""
    registry = svc.require_registry()
    registry.get(body.kind)  # UnknownJobKind before the tenant is even looked at
    with tenant_context(tenant_id):
        job = svc.queue.enqueue(
            body.kind,
            body.payload,
            delay=body.delay_seconds,
            run_at=body.run_at,
            priority=body.priority,
            queue=body.queue,
            max_attempts=body.max_attempts,
            idempotency_key=body.idempotency_key,
            correlation_id=body.correlation_id,
        )
    if not job.created:
        response.status_code = 200
    return EnqueuedOut(
        id=job.id,
        tenant_id=job.tenant_id,
        kind=job.kind,
        queue=job.queue,
        state=job.state,
        created=job.created,
    )


@router.get(
    "/tenants/{tenant_id}/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=ERRORS
)
def show_job(svc: Service, tenant_id: TenantIdPath, job_id: JobIdPath) -> JobOut:
    """A job with its payload and every failed attempt (message and traceback)."""
    return job_out(svc.queue.admin.get_job(tenant_id, job_id))


@router.post(
    "/tenants/{tenant_id}/jobs/{job_id}/retry",
    response_model=JobOut,
    tags=["jobs"],
    responses=ERRORS,
)
def retry_job(svc: Service, tenant_id: TenantIdPath, job_id: JobIdPath) -> JobOut:
    """Run a dead, cancelled or waiting job again now, with one more attempt allowed."""
    return job_out(svc.queue.admin.retry_job(tenant_id, job_id))


@router.post(
    "/tenants/{tenant_id}/jobs/{job_id}/cancel",
    response_model=JobOut,
    tags=["jobs"],
    responses=ERRORS,
)
def cancel_job(svc: Service, tenant_id: TenantIdPath, job_id: JobIdPath) -> JobOut:
    """Cancel an unfinished job (a running one's outcome is voided)."""
    return job_out(svc.queue.admin.cancel_job(tenant_id, job_id))


@router.post(
    "/tenants/{tenant_id}/jobs/retry-dead", response_model=Count, tags=["jobs"], responses=ERRORS
)
def retry_dead(svc: Service, tenant_id: TenantIdPath) -> Count:
    """Requeue every dead job of the tenant; returns how many."""
    return Count(count=svc.queue.admin.retry_dead(tenant_id))


@router.post("/jobs/purge", response_model=Count, tags=["jobs"], responses=ERRORS)
def purge_jobs(svc: Service, body: PurgeIn) -> Count:
    """Delete finished jobs (of one tenant, or older than a cutoff); returns how many."""
    older = timedelta(seconds=body.older_than_seconds) if body.older_than_seconds else None
    deleted = svc.queue.admin.purge(tenant_id=body.tenant_id, states=body.states, older_than=older)
    return Count(count=deleted)
