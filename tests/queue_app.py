"""A job registry for worker *subprocesses* in the fault-injection tests.

Run a worker on it with (from the repository root)::

    TENANTRY_DATABASE_URL=... python -m tenantry.cli.main --models tests.models:TenantBase \
        worker --app tests.queue_app:registry

``record`` and ``record_async`` are transactional: they insert one
:class:`tests.models.Note` with ``body=key`` in the same transaction that marks
the job completed, so a test can check the exactly-once effect by counting the
notes per key. ``noop`` is an ordinary (non-transactional) handler. ``span``
(transactional) sleeps and records when it ran, wall clock, in its note:
``"{key}|{start}|{end}"``, so tests can check how many jobs overlapped across
processes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tenantry.queue import JobContext, JobRegistry
from tests.models import Note

registry = JobRegistry()


@dataclass
class RecordPayload:
    key: str
    sleep: float = 0.0


@dataclass
class NoopPayload:
    key: str = ""
    sleep: float = 0.0


@registry.handler("record", transactional=True)
def record(ctx: JobContext, payload: RecordPayload) -> None:
    """Sleep (blocking, in the worker's thread pool), then write the note."""
    if payload.sleep > 0:
        time.sleep(payload.sleep)
    session: Session = ctx.session
    session.add(Note(body=payload.key))
    session.flush()


@registry.handler("record_async", transactional=True)
async def record_async(ctx: JobContext, payload: RecordPayload) -> None:
    """Sleep (on the event loop), then write the note."""
    if payload.sleep > 0:
        await asyncio.sleep(payload.sleep)
    session: AsyncSession = ctx.session
    session.add(Note(body=payload.key))
    await session.flush()


@dataclass
class SpanPayload:
    key: str
    sleep: float = 0.0


@registry.handler("span", transactional=True)
def span(ctx: JobContext, payload: SpanPayload) -> None:
    start = time.time()
    if payload.sleep > 0:
        time.sleep(payload.sleep)
    session: Session = ctx.session
    session.add(Note(body=f"{payload.key}|{start:.6f}|{time.time():.6f}"))
    session.flush()


@registry.handler("noop")
def noop(ctx: JobContext, payload: NoopPayload) -> None:
    if payload.sleep > 0:
        time.sleep(payload.sleep)
