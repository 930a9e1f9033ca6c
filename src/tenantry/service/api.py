"""The admin JSON API under ``/api/v1``: tenants, API keys, jobs, stats.

Every route requires the admin token (a router-level dependency, so a new
route cannot forget it). Routes that touch the database are plain ``def``
functions: FastAPI runs them in its thread pool, so tenantry's blocking calls
never stall the event loop that the embedded worker shares.

Input is validated before tenantry sees it, to the limits of the columns it
lands in: text without NUL characters or lone surrogates (PostgreSQL refuses
both), finite numbers, bounded lengths, sizes and times. Bad input is a 4xx
with ``{"error": {"code", "message"}}``, never a 500.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from tenantry.errors import AuthenticationError
from tenantry.queue import Job, JobState
from tenantry.queue.job import FINISHED_STATES
from tenantry.service.state import ServiceState, service_of
from tenantry.tenancy.apikeys import ApiKey
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus
from tenantry.tenancy.context import tenant_context
from tenantry.tenancy.ids import TENANT_ID_PATTERN

MAX_JSON_DEPTH = 32
MAX_OFFSET = 100_000
MAX_WINDOW = 7 * 86400.0
MAX_DELAY = 10 * 365 * 86400.0

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="adminToken",
    description="The service's admin token (--admin-token / TENANTRY_ADMIN_TOKEN).",
)


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Refuse the request (401) unless it carries the admin token."""
    if not service_of(request).auth.is_admin(request.headers.get("authorization")):
        raise AuthenticationError("this endpoint needs the admin token (Authorization: Bearer ...)")


# -- input hygiene ----------------------------------------------------------------------
def _check_text(text: str) -> str:
    if "\x00" in text:
        raise ValueError("text must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return text


def clean_json(value: Any) -> Any:
    """*value* unchanged if it can be stored as JSON by every backend; else ValueError."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(str(key))
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return value


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("run_at needs a timezone (e.g. 2030-01-01T00:00:00Z)")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("run_at is out of range") from None
    if not 1970 <= utc.year <= 9998:
        raise ValueError("run_at must be between the years 1970 and 9998")
    return utc


Text = Annotated[str, AfterValidator(_check_text)]
Json = Annotated[JsonValue, AfterValidator(clean_json)]
JsonObject = Annotated[dict[str, JsonValue], AfterValidator(clean_json)]
TenantIdPath = Annotated[
    str, Path(pattern=TENANT_ID_PATTERN, max_length=40, description="A tenant id.")
]
JobIdPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="A job id (unique per tenant).")]
KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="An API key's public id.")]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Window = Annotated[
    float, Query(gt=0, le=MAX_WINDOW, description="Seconds over which outcomes are counted.")
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- models -------------------------------------------------------------------------------
class TenantIn(_In):
    id: Annotated[str, Field(pattern=TENANT_ID_PATTERN, max_length=40)]
    name: Annotated[Text, Field(min_length=1, max_length=200)] | None = None
    isolation: IsolationMode = IsolationMode.SHARED
    store: Annotated[Text, Field(min_length=1, max_length=40)] | None = None
    settings: JsonObject = Field(default_factory=dict)


class TenantPatch(_In):
    name: Annotated[Text, Field(min_length=1, max_length=200)] | None = None
    settings: JsonObject | None = None


class TenantOut(BaseModel):
    id: str
    name: str
    status: TenantStatus
    isolation: IsolationMode
    store: str
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, tenant: Tenant) -> TenantOut:
        return cls(
            id=tenant.id,
            name=tenant.name,
            status=tenant.status,
            isolation=tenant.isolation,
            store=tenant.store,
            settings=dict(tenant.settings),
            created_at=tenant.created_at,
            updated_at=tenant.updated_at,
        )


class TenantPage(BaseModel):
    items: list[TenantOut]
    total: int
    limit: int
    offset: int


class ApiKeyIn(_In):
    name: Annotated[Text, Field(max_length=200)] = ""


class ApiKeyOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyOut:
        return cls(
            id=key.id,
            tenant_id=key.tenant_id,
            name=key.name,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            last_used_at=key.last_used_at,
        )


class IssuedKeyOut(BaseModel):
    key: str = Field(description="The key itself: shown only in this response, never stored.")
    api_key: ApiKeyOut


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


class EnqueueIn(_In):
    kind: Annotated[Text, Field(min_length=1, max_length=200)]
    payload: Json = None
    delay_seconds: Annotated[float, Field(ge=0, le=MAX_DELAY)] | None = None
    run_at: Annotated[datetime, AfterValidator(_aware)] | None = None
    priority: Annotated[int, Field(ge=-32768, le=32767)] | None = None
    queue: Annotated[Text, Field(min_length=1, max_length=100)] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=10_000)] | None = None
    idempotency_key: Annotated[Text, Field(min_length=1, max_length=200)] | None = None
    correlation_id: Annotated[Text, Field(max_length=200)] | None = None


class EnqueuedOut(BaseModel):
    id: int
    tenant_id: str
    kind: str
    queue: str
    state: JobState
    created: bool = Field(description="False: an unfinished job with this idempotency key exists.")


class JobError(BaseModel):
    at: str | None = None
    attempt: int | None = None
    type: str | None = None
    message: str | None = None
    traceback: str | None = None


class JobSummary(BaseModel):
    id: int
    tenant_id: str
    queue: str
    kind: str
    state: JobState
    priority: int
    attempt: int
    max_attempts: int
    scheduled_at: datetime
    created_at: datetime
    attempted_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    idempotency_key: str | None
    correlation_id: str | None
    error_count: int
    last_error: JobError | None = Field(description="The latest failure, without its traceback.")


class JobOut(JobSummary):
    payload: Any
    lease_expires_at: datetime | None
    errors: list[JobError] = Field(description="Every failed attempt, oldest first.")


def _error(entry: Any, *, traceback: bool) -> JobError:
    data = entry if isinstance(entry, dict) else {"message": str(entry)}
    attempt = data.get("attempt")
    return JobError(
        at=_opt_str(data.get("at")),
        attempt=attempt if isinstance(attempt, int) else None,
        type=_opt_str(data.get("type")),
        message=_opt_str(data.get("message")),
        traceback=_opt_str(data.get("traceback")) if traceback else None,
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _summary_fields(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "tenant_id": job.tenant_id,
        "queue": job.queue,
        "kind": job.kind,
        "state": job.state,
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "scheduled_at": job.scheduled_at,
        "created_at": job.created_at,
        "attempted_at": job.attempted_at,
        "finished_at": job.finished_at,
        "worker_id": job.worker_id,
        "idempotency_key": job.idempotency_key,
        "correlation_id": job.correlation_id,
        "error_count": len(job.errors),
        "last_error": _error(job.errors[-1], traceback=False) if job.errors else None,
    }


def job_summary(job: Job) -> JobSummary:
    return JobSummary(**_summary_fields(job))


def job_out(job: Job) -> JobOut:
    """A job with its payload and whole error history (the lease token stays private)."""
    return JobOut(
        **_summary_fields(job),
        payload=job.payload,
        lease_expires_at=job.lease_expires_at,
        errors=[_error(e, traceback=True) for e in job.errors],
    )


class JobPage(BaseModel):
    items: list[JobSummary]
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last.")


class PurgeIn(_In):
    tenant_id: Annotated[str, Field(pattern=TENANT_ID_PATTERN, max_length=40)] | None = None
    states: list[JobState] = Field(default_factory=lambda: list(FINISHED_STATES), max_length=7)
    older_than_seconds: Annotated[float, Field(ge=0, le=MAX_DELAY)] | None = None


class Count(BaseModel):
    count: int


class KindOut(BaseModel):
    kind: str
    queue: str
    priority: int
    max_attempts: int
    transactional: bool
    timeout: float | None
    payload_schema: dict[str, Any] | None


class KindList(BaseModel):
    registry_loaded: bool
    kinds: list[KindOut]


class WorkerOut(BaseModel):
    enabled: bool
    running: bool
    worker_id: str | None = None
    concurrency: int | None = None
    queues: list[str] = Field(default_factory=list)
    stats: dict[str, int] = Field(default_factory=dict)
    tenants: dict[str, dict[str, int]] = Field(default_factory=dict)


Service = Annotated[ServiceState, Depends(service_of)]
router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_admin)])
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "The admin token is missing or wrong."},
    404: {"description": "No such tenant, job or API key."},
    409: {"description": "The tenant's or job's state does not allow this."},
    422: {"description": "Invalid input."},
}


# -- tenants -------------------------------------------------------------------------------
@router.get("/tenants", response_model=TenantPage, tags=["tenants"], responses=_ERRORS)
def list_tenants(
    svc: Service,
    status: TenantStatus | None = None,
    isolation: IsolationMode | None = None,
    store: Annotated[Text, Query(max_length=40)] | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> TenantPage:
    """Tenants of the catalog, by id, optionally filtered."""
    found = svc.tenantry.list_tenants(status=status, isolation=isolation, store=store)
    found.sort(key=lambda t: t.id)
    page = found[offset : offset + limit]
    return TenantPage(
        items=[TenantOut.of(t) for t in page], total=len(found), limit=limit, offset=offset
    )


@router.post(
    "/tenants", status_code=201, response_model=TenantOut, tags=["tenants"], responses=_ERRORS
)
def create_tenant(svc: Service, body: TenantIn) -> TenantOut:
    """Register a tenant and provision its storage (idempotent DDL)."""
    return TenantOut.of(
        svc.tenantry.create_tenant(
            body.id,
            name=body.name,
            isolation=body.isolation,
            store=body.store,
            settings=body.settings,
        )
    )


@router.get("/tenants/{tenant_id}", response_model=TenantOut, tags=["tenants"], responses=_ERRORS)
def show_tenant(svc: Service, tenant_id: TenantIdPath) -> TenantOut:
    return TenantOut.of(svc.tenantry.get_tenant(tenant_id))


@router.patch("/tenants/{tenant_id}", response_model=TenantOut, tags=["tenants"], responses=_ERRORS)
def update_tenant(svc: Service, tenant_id: TenantIdPath, body: TenantPatch) -> TenantOut:
    """Change the name or replace the settings (queue settings are checked)."""
    return TenantOut.of(
        svc.tenantry.update_tenant(tenant_id, name=body.name, settings=body.settings)
    )


@router.post(
    "/tenants/{tenant_id}/suspend", response_model=TenantOut, tags=["tenants"], responses=_ERRORS
)
def suspend_tenant(svc: Service, tenant_id: TenantIdPath) -> TenantOut:
    """Stop serving an active tenant: sessions refuse, its jobs wait."""
    return TenantOut.of(svc.tenantry.suspend_tenant(tenant_id))


@router.post(
    "/tenants/{tenant_id}/resume", response_model=TenantOut, tags=["tenants"], responses=_ERRORS
)
def resume_tenant(svc: Service, tenant_id: TenantIdPath) -> TenantOut:
    return TenantOut.of(svc.tenantry.resume_tenant(tenant_id))


@router.delete("/tenants/{tenant_id}", status_code=204, tags=["tenants"], responses=_ERRORS)
def delete_tenant(svc: Service, tenant_id: TenantIdPath) -> Response:
    """Delete a tenant with ALL of its data, jobs and API keys."""
    svc.tenantry.delete_tenant(tenant_id)
    return Response(status_code=204)


# -- API keys ------------------------------------------------------------------------------
@router.get(
    "/tenants/{tenant_id}/api-keys", response_model=ApiKeyList, tags=["api keys"], responses=_ERRORS
)
def list_api_keys(
    svc: Service, tenant_id: TenantIdPath, include_revoked: bool = True
) -> ApiKeyList:
    svc.tenantry.get_tenant(tenant_id)  # 404 for an unknown tenant, not an empty list
    keys = svc.tenantry.api_keys.list(tenant_id, include_revoked=include_revoked)
    return ApiKeyList(items=[ApiKeyOut.of(k) for k in keys])


@router.post(
    "/tenants/{tenant_id}/api-keys",
    status_code=201,
    response_model=IssuedKeyOut,
    tags=["api keys"],
    responses=_ERRORS,
)
def issue_api_key(svc: Service, tenant_id: TenantIdPath, body: ApiKeyIn) -> IssuedKeyOut:
    """Issue a key for the tenant; the response is the only place the key appears."""
    issued = svc.tenantry.api_keys.issue(tenant_id, name=body.name)
    return IssuedKeyOut(key=issued.key, api_key=ApiKeyOut.of(issued.info))


@router.delete(
    "/tenants/{tenant_id}/api-keys/{key_id}",
    response_model=ApiKeyOut,
    tags=["api keys"],
    responses=_ERRORS,
)
def revoke_api_key(svc: Service, tenant_id: TenantIdPath, key_id: KeyIdPath) -> ApiKeyOut:
    """Revoke a key for good (revoking twice is fine)."""
    return ApiKeyOut.of(svc.tenantry.api_keys.revoke(key_id, tenant_id=tenant_id))


# -- jobs ----------------------------------------------------------------------------------
def _page(jobs: list[Job], limit: int, offset: int) -> JobPage:
    more = len(jobs) > limit
    return JobPage(
        items=[job_summary(j) for j in jobs[:limit]],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if more else None,
    )


@router.get("/jobs", response_model=JobPage, tags=["jobs"], responses=_ERRORS)
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
    jobs = svc.queue.list_jobs(
        tenant_id=tenant_id, state=state, kind=kind, queue=queue, limit=limit + 1, offset=offset
    )
    return _page(jobs, limit, offset)


@router.get("/tenants/{tenant_id}/jobs", response_model=JobPage, tags=["jobs"], responses=_ERRORS)
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
    jobs = svc.queue.list_jobs(
        tenant_id=tenant_id, state=state, kind=kind, queue=queue, limit=limit + 1, offset=offset
    )
    return _page(jobs, limit, offset)


@router.post(
    "/tenants/{tenant_id}/jobs",
    status_code=201,
    response_model=EnqueuedOut,
    tags=["jobs"],
    responses={**_ERRORS, 200: {"description": "An unfinished job holds the idempotency key."}},
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
    "/tenants/{tenant_id}/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=_ERRORS
)
def show_job(svc: Service, tenant_id: TenantIdPath, job_id: JobIdPath) -> JobOut:
    """A job with its payload and every failed attempt (message and traceback)."""
    return job_out(svc.queue.get_job(tenant_id, job_id))


@router.post(
    "/tenants/{tenant_id}/jobs/{job_id}/retry",
    response_model=JobOut,
    tags=["jobs"],
    responses=_ERRORS,
)
def retry_job(svc: Service, tenant_id: TenantIdPath, job_id: JobIdPath) -> JobOut:
    """Run a dead, cancelled or waiting job again now, with one more attempt allowed."""
    return job_out(svc.queue.retry_job(tenant_id, job_id))


@router.post(
    "/tenants/{tenant_id}/jobs/{job_id}/cancel",
    response_model=JobOut,
    tags=["jobs"],
    responses=_ERRORS,
)
def cancel_job(svc: Service, tenant_id: TenantIdPath, job_id: JobIdPath) -> JobOut:
    """Cancel an unfinished job (a running one's outcome is voided)."""
    return job_out(svc.queue.cancel_job(tenant_id, job_id))


@router.post(
    "/tenants/{tenant_id}/jobs/retry-dead", response_model=Count, tags=["jobs"], responses=_ERRORS
)
def retry_dead(svc: Service, tenant_id: TenantIdPath) -> Count:
    """Requeue every dead job of the tenant; returns how many."""
    return Count(count=svc.queue.retry_dead(tenant_id))


@router.post("/jobs/purge", response_model=Count, tags=["jobs"], responses=_ERRORS)
def purge_jobs(svc: Service, body: PurgeIn) -> Count:
    """Delete finished jobs (of one tenant, or older than a cutoff); returns how many."""
    older = timedelta(seconds=body.older_than_seconds) if body.older_than_seconds else None
    deleted = svc.queue.purge(tenant_id=body.tenant_id, states=body.states, older_than=older)
    return Count(count=deleted)


# -- stats and the service itself -------------------------------------------------------------
@router.get("/stats", tags=["stats"], responses=_ERRORS)
def stats(svc: Service, window: Window = 300.0) -> dict[str, Any]:
    """Per tenant and overall: depth by state and kind, oldest runnable age, recent outcomes."""
    return svc.queue.stats(window=timedelta(seconds=window)).to_dict()


@router.get("/tenants/{tenant_id}/stats", tags=["stats"], responses=_ERRORS)
def tenant_stats(svc: Service, tenant_id: TenantIdPath, window: Window = 300.0) -> dict[str, Any]:
    svc.tenantry.get_tenant(tenant_id)
    found = svc.queue.stats(tenant_id=tenant_id, window=timedelta(seconds=window))
    return found.tenants[tenant_id].to_dict()


@router.get("/kinds", response_model=KindList, tags=["service"], responses=_ERRORS)
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


@router.get("/worker", response_model=WorkerOut, tags=["service"], responses=_ERRORS)
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
