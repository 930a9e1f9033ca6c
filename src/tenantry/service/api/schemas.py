"""What the admin API accepts and returns: pydantic models, their validators, converters.

Input is validated before tenantry sees it, to the limits of the columns it
lands in: text without NUL characters or lone surrogates (PostgreSQL refuses
both), finite numbers, bounded lengths, sizes and times. Bad input is a 4xx
with ``{"error": {"code", "message"}}``, never a 500.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from tenantry.queue import Job, JobState
from tenantry.queue.job import FINISHED_STATES
from tenantry.tenancy.apikeys import ApiKey
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus
from tenantry.tenancy.ids import TENANT_ID_PATTERN

MAX_JSON_DEPTH = 32
MAX_OFFSET = 100_000
MAX_WINDOW = 7 * 86400.0
MAX_DELAY = 10 * 365 * 86400.0


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
