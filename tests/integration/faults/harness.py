"""Shared machinery of the fault-injection tests: worker subprocesses and checks.

* :class:`WorkerFleet` starts ``tenantry worker`` subprocesses on
  :mod:`tests.queue_app`, each with its own log file, and kills whatever is
  still running when the test ends.
* :class:`JobBook` enqueues ``record`` jobs with unique keys and checks the
  outcome: every job completed, and exactly one note per key.
* Every wait is bounded; on failure, messages carry the job counts per state
  and the tail of every worker's log.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy import select

from tenantry import IsolationMode, JobState, Queue, Tenantry, tenant_context
from tenantry.queue import EnqueuedJob, Job
from tests.models import Note
from tests.queue_app import RecordPayload, registry

REPO_ROOT = Path(__file__).resolve().parents[3]
IN_CI = os.environ.get("CI", "").lower() == "true"
APP = "tests.queue_app:registry"
MODELS = "tests.models:TenantBase"
#: Log lines that mean the worker itself misbehaved (not that a job or the database failed).
INTERNAL_ERROR_MARKERS = (
    "Traceback (most recent call last)",
    "Task exception was never retrieved",
    "Exception in callback",
    "internal error running job",
    "Unhandled exception",
)
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")
_DB_ERROR = re.compile(
    r"^(sqlalchemy\.exc\.OperationalError|psycopg\.OperationalError|psycopg\.errors\.AdminShutdown)",
    re.MULTILINE,
)


# -- waiting ------------------------------------------------------------------------
def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    diagnostics: Callable[[], str] | None = None,
    interval: float = 0.1,
) -> float:
    """Poll *predicate* until true; returns the seconds it took, fails with diagnostics."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            details = diagnostics() if diagnostics is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{details}")
        time.sleep(interval)


# -- worker subprocesses ------------------------------------------------------------
@dataclass
class WorkerProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    started_at: float
    args: list[str]
    signals: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def ready(self) -> bool:
        """The worker logged that it started (signal handlers installed, sources known)."""
        return " started: " in self.log()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class WorkerFleet:
    """``tenantry worker`` subprocesses on one database URL, torn down reliably."""

    def __init__(self, url: str, log_dir: Path) -> None:
        self.url = url
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.workers: list[WorkerProcess] = []

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"TENANTRY_CONFIG", "TENANTRY_DATA_DIR", "PYTEST_CURRENT_TEST"}
            and not k.startswith("PYTEST_XDIST")
        }
        env["TENANTRY_DATABASE_URL"] = self.url
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def start(
        self,
        *,
        concurrency: int = 8,
        lease: float = 2.0,
        grace: float = 1.0,
        poll: float = 0.1,
        extra: Sequence[str] = (),
    ) -> WorkerProcess:
        name = f"w{len(self.workers) + 1}"
        log_path = self.log_dir / f"{name}.log"
        args = [
            sys.executable,
            "-m",
            "tenantry.cli.main",
            "--models",
            MODELS,
            "worker",
            "--app",
            APP,
            "--concurrency",
            str(concurrency),
            "--lease",
            f"{lease:g}",
            "--grace",
            f"{grace:g}",
            "--poll",
            f"{poll:g}",
            *extra,
        ]
        log_file = log_path.open("wb")
        try:
            popen = subprocess.Popen(  # our own interpreter and arguments
                args,
                cwd=REPO_ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # signals for pytest's group never reach workers
            )
        except BaseException:
            log_file.close()
            raise
        worker = WorkerProcess(name, popen, log_path, log_file, time.monotonic(), args)
        self.workers.append(worker)
        return worker

    def wait_ready(self, worker: WorkerProcess, timeout: float = 30.0) -> float:
        def ready() -> bool:
            if not worker.alive:
                raise AssertionError(
                    f"worker {worker.name} exited with {worker.poll()} before it started\n"
                    + worker.tail(60)
                )
            return worker.ready

        return wait_until(
            ready, timeout=timeout, what=f"worker {worker.name} to start", diagnostics=self.report
        )

    def send(self, worker: WorkerProcess, sig: signal.Signals) -> None:
        worker.signals.append(sig.name)
        if worker.alive:
            os.kill(worker.pid, sig)

    def wait_exit(self, worker: WorkerProcess, timeout: float) -> int:
        try:
            return worker.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {worker.name} (pid {worker.pid}) did not exit within {timeout:g}s "
                f"after {', '.join(worker.signals) or 'no signal'}\n{self.report()}"
            ) from None

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive]

    def stop_all(self, timeout: float = 20.0) -> dict[str, int]:
        """SIGTERM every live worker, wait for all; returns each one's exit status.

        A worker still starting is waited for first: before it installs its
        signal handlers a SIGTERM kills it outright (-15), which says nothing
        about its shutdown. A replacement started just before the queue
        drained can be in that window.
        """
        live = self.alive()
        for worker in live:
            self.wait_ready(worker)
        for worker in live:
            self.send(worker, signal.SIGTERM)
        return {w.name: self.wait_exit(w, timeout) for w in live}

    def assert_clean_exits(self) -> None:
        """Every worker has exited: 0, or killed by the SIGKILL the test sent it."""
        bad = []
        for w in self.workers:
            rc = w.poll()
            expected = -signal.SIGKILL if "SIGKILL" in w.signals else 0
            if rc != expected:
                bad.append(f"{w.name}: exit status {rc}, expected {expected}")
        assert not bad, "\n".join(bad) + "\n" + self.report()

    def close(self) -> None:
        """Kill anything still running (teardown: never leave a worker behind)."""
        for worker in self.workers:
            if worker.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.popen.wait(timeout=10)
            worker.log_file.close()

    def records(self, worker: WorkerProcess) -> list[str]:
        """The worker's log as records: a timestamped line plus its continuation lines."""
        out: list[str] = []
        for line in worker.log().splitlines():
            if _LOG_RECORD.match(line) or not out:
                out.append(line)
            else:
                out[-1] += "\n" + line
        return out

    def assert_no_internal_errors(self, *, tolerate_db_errors: bool = False) -> list[str]:
        """No worker logged a Python-level failure of its own (as opposed to a job's).

        With *tolerate_db_errors*, an "internal error" whose cause is the database
        connection breaking is returned instead of failing (tests that break the
        database on purpose report it; test_worker_internal_errors pins it down).
        """
        found: list[str] = []
        tolerated: list[str] = []
        for worker in self.workers:
            for record in self.records(worker):
                if not any(marker in record for marker in INTERNAL_ERROR_MARKERS):
                    continue
                first = record.splitlines()[0]
                if (
                    tolerate_db_errors
                    and "internal error running job" in first
                    and _DB_ERROR.search(record)
                ):
                    tolerated.append(f"{worker.name}: {first}")
                else:
                    found.append(f"{worker.name}: {record}")
        assert not found, "worker internal errors:\n" + "\n".join(found[:5]) + "\n" + self.report()
        return tolerated

    def report(self, lines: int = 25) -> str:
        parts = []
        for w in self.workers:
            status = "running" if w.alive else f"exited {w.poll()}"
            sent = f", signals: {', '.join(w.signals)}" if w.signals else ""
            parts.append(f"--- {w.name} (pid {w.pid}, {status}{sent}) {w.log_path} ---")
            parts.append(w.tail(lines))
        return "\n".join(parts) if parts else "(no workers started)"


# -- tenants, jobs and the exactly-once check -----------------------------------------
def modes_for(backend: str) -> list[IsolationMode]:
    if backend == "postgresql":
        return [IsolationMode.SHARED, IsolationMode.SCHEMA, IsolationMode.DATABASE]
    return [IsolationMode.SHARED, IsolationMode.DATABASE]


def create_tenants(tenantry: Tenantry, prefix: str, modes: Iterable[IsolationMode]) -> list[str]:
    ids = []
    for mode in modes:
        tenant_id = f"{prefix}_{mode.value}"
        tenantry.create_tenant(tenant_id, isolation=mode)
        ids.append(tenant_id)
    return ids


@dataclass
class JobBook:
    """The jobs a test enqueued (keys are unique across tenants) and the checks on them."""

    tenantry: Tenantry
    tenants: list[str]
    queue: Queue = field(init=False)
    keys: dict[str, str] = field(default_factory=dict)  # key -> tenant
    jobs: list[EnqueuedJob] = field(default_factory=list)
    _serial: int = 0

    def __post_init__(self) -> None:
        self.queue = Queue(self.tenantry, registry)

    def setup(self) -> None:
        self.queue.setup()

    def new_key(self, tenant_id: str) -> str:
        self._serial += 1
        key = f"{tenant_id}:{self._serial}"
        self.keys[key] = tenant_id
        return key

    def enqueue(
        self,
        count: int,
        *,
        rng: random.Random,
        sleep: tuple[float, float] = (0.0, 0.02),
        kinds: Sequence[str] = ("record", "record_async"),
        tenants: Sequence[str] | None = None,
    ) -> list[EnqueuedJob]:
        """*count* jobs spread over the tenants, one multi-row INSERT per tenant and kind."""
        targets = list(tenants or self.tenants)
        batches: dict[tuple[str, str], list[RecordPayload]] = {}
        for i in range(count):
            tenant_id = targets[i % len(targets)]
            kind = kinds[rng.randrange(len(kinds))]
            payload = RecordPayload(self.new_key(tenant_id), round(rng.uniform(*sleep), 4))
            batches.setdefault((tenant_id, kind), []).append(payload)
        made: list[EnqueuedJob] = []
        for (tenant_id, kind), payloads in batches.items():
            with tenant_context(tenant_id):
                made.extend(self.queue.enqueue_many(kind, payloads))
        self.jobs.extend(made)
        return made

    # -- observations ------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return self.queue.admin.count_jobs()

    def completed(self) -> int:
        return self.counts()[JobState.COMPLETED.value]

    def all_jobs(self) -> list[Job]:
        return self.queue.admin.list_jobs(limit=len(self.jobs) + 1000)

    def notes(self) -> Counter[str]:
        """Notes per key, read through each tenant's own session (so isolation applies)."""
        found: Counter[str] = Counter()
        for tenant_id in self.tenants:
            with tenant_context(tenant_id), self.tenantry.session() as session:
                bodies = session.scalars(select(Note.body)).all()
            for body in bodies:
                owner = self.keys.get(body)
                assert owner in (None, tenant_id), (
                    f"tenant {tenant_id} holds note {body!r} that belongs to {owner}"
                )
                found[body] += 1
        return found

    def describe(self) -> str:
        try:
            counts = self.counts()
        except Exception as exc:  # diagnostics must not mask the real failure
            return f"job counts unavailable: {type(exc).__name__}: {exc}"
        return f"job counts: {counts} (expected {len(self.jobs)} jobs)"

    # -- checks ------------------------------------------------------------------------
    def wait_all_completed(self, timeout: float, diagnostics: Callable[[], str]) -> float:
        expected = len(self.jobs)

        def done() -> bool:
            return self.completed() >= expected

        return wait_until(
            done,
            timeout=timeout,
            what=f"all {expected} jobs to complete",
            diagnostics=lambda: f"{self.describe()}\n{diagnostics()}",
            interval=0.25,
        )

    def assert_exactly_once(
        self, diagnostics: Callable[[], str], *, uncertain: Iterable[str] = ()
    ) -> None:
        """Every job completed; exactly one note per key; none for keys never enqueued.

        *uncertain* keys are enqueues whose outcome the caller could not know (the
        connection broke around COMMIT): each may have run once, or not at all.
        """
        maybe = set(uncertain)
        counts = self.counts()
        notes = self.notes()
        ran_anyway = sorted(k for k in maybe if notes[k] > 0)
        expected_states = {s.value: 0 for s in JobState}
        expected_states[JobState.COMPLETED.value] = len(self.jobs) + len(ran_anyway)
        missing = sorted(k for k in self.keys if notes[k] == 0)
        duplicated = {k: n for k, n in notes.items() if n > 1}
        unknown = sorted(k for k in notes if k not in self.keys and k not in maybe)
        problems = []
        if counts != expected_states:
            problems.append(f"job states {counts}, expected {expected_states}")
            stuck = [j for j in self.all_jobs() if j.state is not JobState.COMPLETED][:10]
            for job in stuck:
                last = job.errors[-1] if job.errors else None
                problems.append(
                    f"  job {job.id} ({job.tenant_id}, {job.kind}) {job.state.value} "
                    f"attempt {job.attempt}/{job.max_attempts} last error: "
                    f"{last['type'] + ': ' + last['message'] if last else '-'}"
                )
        if missing:
            problems.append(f"{len(missing)} key(s) without a note, e.g. {missing[:10]}")
        if duplicated:
            sample = dict(list(duplicated.items())[:10])
            problems.append(f"{len(duplicated)} key(s) with more than one note: {sample}")
        if unknown:
            problems.append(f"{len(unknown)} note(s) for keys never enqueued: {unknown[:10]}")
        if problems:
            raise AssertionError("\n".join(problems) + "\n" + diagnostics())

    def interrupted_attempts(self) -> dict[str, int]:
        """How many recorded errors of each type the jobs collected (evidence of faults)."""
        seen: Counter[str] = Counter()
        for job in self.all_jobs():
            for error in job.errors:
                seen[str(error.get("type"))] += 1
        return dict(seen)
