"""A SQLite round trip on the core install alone (``pip install tenantry``, no extras).

CI runs this in a fresh venv holding only tenantry's core dependencies: it
proves that the embedded SQLite default needs none of the extras (no psycopg,
no FastAPI, no PyJWT). It creates a tenant, writes a row in its context,
enqueues a job in the same transaction, runs a worker until the job is done,
and checks that nothing imported psycopg along the way.

Run: ``python .ci/core_smoke.py`` (it works in a temporary directory). With
``--extras-installed`` it runs in a full install too and checks only that the
SQLite path imports none of the extras' packages.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import tempfile
from dataclasses import dataclass

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, mapped_column

from tenantry import (
    JobContext,
    JobRegistry,
    JobState,
    Queue,
    TenantBase,
    Tenantry,
    TenantryConfig,
    Worker,
    WorkerOptions,
    tenant_context,
)

#: What the extras bring; the core install has none of them, the SQLite path imports none.
OPTIONAL = ("psycopg", "fastapi", "starlette", "jwt", "uvicorn", "jinja2", "prometheus_client")
FINAL = (JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED)


class Note(TenantBase):
    __tablename__ = "smoke_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(100))


@dataclass
class Stamp:
    note_id: int


registry = JobRegistry()


@registry.handler("stamp", transactional=True)
def stamp(ctx: JobContext, payload: Stamp) -> None:
    note = ctx.session.get(Note, payload.note_id)
    assert note is not None, "the job runs in the tenant that enqueued it"
    note.text += " (stamped)"


async def work(tenantry: Tenantry, queue: Queue, job_id: int) -> JobState:
    """Run a worker until the job has finished; its final state."""
    worker = Worker(tenantry, registry, WorkerOptions(concurrency=2, poll_interval=0.05))
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(30):
            while True:
                job = await asyncio.to_thread(queue.admin.get_job, "acme", job_id)
                if job.state in FINAL:
                    return job.state
                await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await running


def main() -> None:
    installed = [name for name in OPTIONAL if importlib.util.find_spec(name) is not None]
    if installed and "--extras-installed" not in sys.argv[1:]:
        sys.exit(f"not a core-only install: {', '.join(installed)} installed")
    with tempfile.TemporaryDirectory() as data_dir:
        tenantry = Tenantry(TenantryConfig.sqlite_default(data_dir))
        try:
            tenantry.create_tenant("acme", isolation="shared")
            tenantry.create_tenant("globex", isolation="database")
            queue = Queue(tenantry, registry)
            queue.setup()
            with tenant_context("acme"), tenantry.session() as session:
                note = Note(text="hello")
                session.add(note)
                session.flush()
                job = queue.enqueue("stamp", Stamp(note_id=note.id), session=session)
                session.commit()
            state = asyncio.run(work(tenantry, queue, job.id))
            assert state == JobState.COMPLETED, f"the job ended {state}"
            with tenant_context("acme"), tenantry.session() as session:
                assert session.scalars(select(Note.text)).all() == ["hello (stamped)"]
            with tenant_context("globex"), tenantry.session() as session:
                assert session.scalars(select(Note)).all() == [], "globex sees acme's row"
        finally:
            tenantry.close()
    leaked = [name for name in OPTIONAL if name in sys.modules]
    assert not leaked, f"the SQLite path imported {leaked}"
    print("core install: SQLite round trip ok (tenant, row, job enqueued and completed)")


if __name__ == "__main__":
    main()
