"""Jobs as the queue sees them: states, rows and the error history."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any


class JobState(StrEnum):
    """Life cycle of a job row.

    ``scheduled`` (due in the future) and ``retryable`` (waiting for its backoff)
    become ``available`` when due; ``available`` jobs are claimed into
    ``running``; a run ends ``completed``, ``retryable`` (attempts left),
    ``dead`` (the dead-letter state) or ``cancelled``.
    """

    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    RUNNING = "running"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    DEAD = "dead"
    CANCELLED = "cancelled"


#: States in which a job still counts as "not finished" (idempotency keys hold).
PENDING_STATES = (JobState.SCHEDULED, JobState.AVAILABLE, JobState.RUNNING, JobState.RETRYABLE)
FINISHED_STATES = (JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time tenantry stores is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class JobError:
    """One failed attempt, as kept in the job's ``errors`` history."""

    at: str
    attempt: int
    type: str
    message: str
    traceback: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "attempt": self.attempt,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
        }


#: Where a claimed job keeps its payload's JSON text until ``payload`` is read.
#: The worker validates a job's payload from this text, in JSON mode
#: (``Handler.validate_job``), so nothing needs the decoded objects unless a
#: handler reads ``ctx.job.payload``.
PAYLOAD_TEXT = "_payload_text"


@dataclass(frozen=True)
class Job:
    """A job row. ``lease_token`` fences the current attempt (see the worker)."""

    id: int
    tenant_id: str
    queue: str
    kind: str
    payload: Any
    priority: int
    state: JobState
    attempt: int
    max_attempts: int
    scheduled_at: datetime
    created_at: datetime
    attempted_at: datetime | None = None
    finished_at: datetime | None = None
    lease_expires_at: datetime | None = None
    lease_token: str | None = None
    worker_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    idempotency_key: str | None = None
    correlation_id: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        m = row._mapping if hasattr(row, "_mapping") else row
        return cls(
            id=int(m["id"]),
            tenant_id=m["tenant_id"],
            queue=m["queue"],
            kind=m["kind"],
            payload=m["payload"],
            priority=int(m["priority"]),
            state=JobState(m["state"]),
            attempt=int(m["attempt"]),
            max_attempts=int(m["max_attempts"]),
            scheduled_at=as_utc(m["scheduled_at"]) or utcnow(),
            created_at=as_utc(m["created_at"]) or utcnow(),
            attempted_at=as_utc(m["attempted_at"]),
            finished_at=as_utc(m["finished_at"]),
            lease_expires_at=as_utc(m["lease_expires_at"]),
            lease_token=m["lease_token"],
            worker_id=m["worker_id"],
            errors=list(m["errors"] or []),
            idempotency_key=m["idempotency_key"],
            correlation_id=m["correlation_id"],
        )

    if not TYPE_CHECKING:  # for mypy every other attribute stays checked

        def __getattr__(self, name: str) -> Any:
            # Only reached for a claimed job's payload before its first read
            # (see ``PAYLOAD_TEXT``): decoded once, then an ordinary attribute.
            fields = self.__dict__
            if name == "payload" and PAYLOAD_TEXT in fields:
                value = json.loads(fields[PAYLOAD_TEXT])
                object.__setattr__(self, "payload", value)
                return value
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.payload  # noqa: B018 - decoded, so that it is in __dict__ below
        for key, value in self.__dict__.items():
            if key == PAYLOAD_TEXT:
                continue
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, JobState):
                value = value.value
            out[key] = value
        return out
