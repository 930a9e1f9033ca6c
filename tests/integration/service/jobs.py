"""The job registry the service tests load (also by ``--app`` in subprocesses).

``record`` writes a :class:`tests.models.Note` in the job's transaction.
``flaky`` fails until the tenant has a note ``allow:<key>``, then records
``done:<key>``: a test makes it dead, "fixes the downstream system" and
retries it. ``fail`` always fails. Both failing kinds allow one attempt, so
the first failure dead-letters the job.
"""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenantry.queue import JobContext, JobRegistry, RetryPolicy
from tests.models import Note

registry = JobRegistry(default_retry=RetryPolicy(max_attempts=3, base=0.05, jitter=0))


class Keyed(BaseModel):
    key: str


class DownstreamError(RuntimeError):
    """The (simulated) system a handler talks to refused the request."""


@registry.handler("record", transactional=True)
def record(ctx: JobContext, payload: Keyed) -> None:
    session: Session = ctx.session
    session.add(Note(body=payload.key))


#: On SQLite a transaction that reads before it writes is refused ("database is
#: locked") when another connection commits in between; a handler that reads
#: first therefore starts its transaction as a write transaction.
WRITE_FIRST = {"sqlite_begin": "BEGIN IMMEDIATE"}


@registry.handler("flaky", transactional=True, max_attempts=1)
def flaky(ctx: JobContext, payload: Keyed) -> None:
    session: Session = ctx.session
    session.connection(execution_options=WRITE_FIRST)
    allowed = session.scalar(select(Note.id).where(Note.body == f"allow:{payload.key}"))
    if allowed is None:
        raise DownstreamError(f"downstream refused <{payload.key}> & said no")
    session.add(Note(body=f"done:{payload.key}"))


@registry.handler("fail", max_attempts=1)
def fail(ctx: JobContext, payload: Keyed) -> None:
    raise DownstreamError(f"boom: {payload.key}")
