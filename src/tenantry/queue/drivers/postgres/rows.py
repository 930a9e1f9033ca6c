"""The job's columns as the PostgreSQL driver reads and writes them, and claimed rows as Jobs.

``JOB_COLUMNS`` is the one list: the claim's RETURNING clause, the INSERT
and COPY column lists, the parameter order of the one-row enqueue and the
row builder below are all derived from it, so a column is added here once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tenantry.queue.job import PAYLOAD_TEXT, Job, JobState


@dataclass(frozen=True)
class JobColumn:
    name: str
    #: PostgreSQL type, for the casts of bulk and one-row inserts and binary COPY.
    pg_type: str
    #: Supplied by an enqueue (the rest are set as a job runs).
    written: bool = True
    #: How a claim returns it; None: the worker knows it already (its state,
    #: lease token and worker id are its own, nothing is finished).
    claimed: str | None = ""

    @property
    def claimed_sql(self) -> str:
        return self.claimed or f"j.{self.name}"


# In ``Job``'s field order. The claim returns the payload as text (the
# worker validates it from the text) and an empty error history as NULL:
# decoding rows costs more Python time per job than anything else on the
# claim path.
JOB_COLUMNS: tuple[JobColumn, ...] = (
    JobColumn("id", "bigint", written=False),
    JobColumn("tenant_id", "text"),
    JobColumn("queue", "text"),
    JobColumn("kind", "text"),
    JobColumn("payload", "jsonb", claimed="j.payload::text AS payload"),
    JobColumn("priority", "smallint"),
    JobColumn("state", "text", claimed=None),
    JobColumn("attempt", "integer"),
    JobColumn("max_attempts", "integer"),
    JobColumn("scheduled_at", "timestamptz"),
    JobColumn("created_at", "timestamptz"),
    JobColumn("attempted_at", "timestamptz", written=False),
    JobColumn("finished_at", "timestamptz", written=False, claimed=None),
    JobColumn("lease_expires_at", "timestamptz", written=False),
    JobColumn("lease_token", "text", written=False, claimed=None),
    JobColumn("worker_id", "text", written=False, claimed=None),
    JobColumn("errors", "jsonb", claimed="NULLIF(j.errors, '[]'::jsonb)::text AS errors"),
    JobColumn("idempotency_key", "text"),
    JobColumn("correlation_id", "text"),
)

#: What an enqueue writes, as (column, PostgreSQL type), in statement order.
WRITTEN: tuple[tuple[str, str], ...] = tuple((c.name, c.pg_type) for c in JOB_COLUMNS if c.written)
#: What a claim returns, in order: the RETURNING list and ``claimed_jobs`` agree.
CLAIMED: tuple[JobColumn, ...] = tuple(c for c in JOB_COLUMNS if c.claimed is not None)
CLAIMED_SQL = ", ".join(c.claimed_sql for c in CLAIMED)
#: ``Job`` attributes of the claimed tuple's items (the payload stays text).
_CLAIMED_FIELDS = tuple(PAYLOAD_TEXT if c.name == "payload" else c.name for c in CLAIMED)


def _builder_source() -> str:
    """The text of ``claimed_jobs``, one unpacked name per claimed column.

    Written out per field, as a hand-written loop would be: a generic
    ``zip`` into the instance dict costs more per job, and this runs for
    every claimed job. Generated from ``CLAIMED`` (the way ``dataclasses``
    writes ``__init__``), so the loop and the statement cannot drift apart.
    """
    unpack = ", ".join(_CLAIMED_FIELDS)
    values = ", ".join(
        "errors=loads(errors) if errors is not None else []" if f == "errors" else f"{f}={f}"
        for f in _CLAIMED_FIELDS
    )
    return f"""
def claimed_jobs(rows, token, worker_id):
    loads = json.loads
    running = JobState.RUNNING
    new = object.__new__
    jobs = []
    for ({unpack},) in rows:
        job = new(Job)
        job.__dict__.update(
            {values},
            state=running, finished_at=None, lease_token=token, worker_id=worker_id,
        )
        jobs.append(job)
    return jobs
"""


def _build() -> Callable[[Iterable[tuple[Any, ...]], str, str], list[Job]]:
    namespace: dict[str, Any] = {"json": json, "JobState": JobState, "Job": Job}
    exec(_builder_source(), namespace)  # noqa: S102 - text made above from constants
    built: Callable[[Iterable[tuple[Any, ...]], str, str], list[Job]] = namespace["claimed_jobs"]
    built.__doc__ = """Jobs from claimed tuples (``CLAIMED`` order; psycopg gives aware timestamps).

    Filled in place of the frozen ``__init__`` (one guarded ``object.__setattr__``
    per field), with the payload left as JSON text (``PAYLOAD_TEXT``): the
    worker's validation parses it.
    """
    return built


claimed_jobs = _build()
