"""One measurement at a time: each system's driver in its own processes, checked in the database.

Method (the same for every system; docs/performance.md explains it):

* every scenario runs on a fresh database (created here, dropped afterwards);
* enqueue figures are timed inside the enqueuing process around the library
  call(s) only (connections are opened before the clock starts);
* processing throughput is ``jobs / (t_end - t_first)``: ``t_first`` is the
  wall-clock time the first handler started (recorded by the worker process),
  ``t_end`` the time this process, polling the database every 20 ms, first sees
  no runnable or running job left, i.e. the last completion was committed;
* latency is enqueue-to-handler-start, from the probe's send time (taken just
  before the enqueue call) to its handler's first line, both ``time.time()``
  on the same machine;
* before each timed step (enqueue, processing) the server is checkpointed,
  so no system's figure pays for writing out the previous step's dirty pages;
* afterwards the database must show every job finished, no job left over, and
  every handler must have started exactly once: otherwise the run is FAILED.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_db import Server

HERE = Path(__file__).resolve().parent
SYSTEMS_DIR = HERE / "systems"


@dataclass(frozen=True)
class System:
    """One library: its driver and how to read its jobs' states in the database."""

    driver: str  # file in benchmarks/systems
    peer: bool  # run with the peers' environment
    url_driver: str  # the DSN's scheme for this driver
    pending_sql: str  # true while any job is runnable or running
    finished_sql: str  # jobs finished successfully
    unfinished_sql: str  # jobs not finished (queued, running, failed...)


@dataclass(frozen=True)
class Spec:
    """A row of the table: one system at one setting (a profile of its driver)."""

    key: str
    label: str
    system: System
    profile: str

    @property
    def peer(self) -> bool:
        return self.system.peer


_TJ = "tenantry.tenantry_jobs"
TENANTRY = System(
    "tenantry_sys.py",
    peer=False,
    url_driver="postgresql+psycopg",
    pending_sql=f"SELECT EXISTS (SELECT 1 FROM {_TJ} WHERE state IN ('available', 'running'))",
    finished_sql=f"SELECT count(*) FROM {_TJ} WHERE kind <> 'filler' AND state = 'completed'",
    unfinished_sql=f"SELECT count(*) FROM {_TJ} WHERE kind <> 'filler' AND state <> 'completed'",
)
PGQUEUER = System(
    "pgqueuer_sys.py",
    peer=True,
    url_driver="postgresql",
    # Finished jobs are deleted from the pgqueuer table and logged as 'successful'.
    pending_sql="SELECT EXISTS (SELECT 1 FROM pgqueuer)",
    finished_sql="SELECT count(DISTINCT job_id) FROM pgqueuer_log WHERE status = 'successful'",
    unfinished_sql="SELECT count(*) FROM pgqueuer",
)
PROCRASTINATE = System(
    "procrastinate_sys.py",
    peer=True,
    url_driver="postgresql",
    pending_sql="SELECT EXISTS (SELECT 1 FROM procrastinate_jobs"
    " WHERE status IN ('todo', 'doing'))",
    finished_sql="SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
    unfinished_sql="SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'",
)
CHANCY = System(
    "chancy_sys.py",
    peer=True,
    url_driver="postgresql",
    pending_sql="SELECT EXISTS (SELECT 1 FROM chancy_jobs"
    " WHERE state IN ('pending', 'running', 'retrying'))",
    finished_sql="SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'",
    unfinished_sql="SELECT count(*) FROM chancy_jobs WHERE state <> 'succeeded'",
)

SPECS: dict[str, Spec] = {
    s.key: s
    for s in [
        Spec("tenantry-10", "tenantry (10 slots)", TENANTRY, "10"),
        Spec("tenantry-best", "tenantry (best settings)", TENANTRY, "best"),
        Spec("pgqueuer-10", "pgqueuer 1.6.0 (10 slots)", PGQUEUER, "10"),
        Spec("pgqueuer-defaults", "pgqueuer 1.6.0 (library defaults)", PGQUEUER, "defaults"),
        Spec("procrastinate", "procrastinate 3.10.0 (10 slots)", PROCRASTINATE, "10"),
        Spec("chancy", "chancy 0.26.0 (10 slots)", CHANCY, "10"),
        # For tuning only (not in the default rows): Worker keyword arguments
        # as JSON in TENANTRY_BENCH_WORKER_OPTS.
        Spec("tenantry-custom", "tenantry (TENANTRY_BENCH_WORKER_OPTS)", TENANTRY, "custom"),
    ]
}
#: The rows ``make bench`` shows.
DEFAULT_ROWS = [k for k in SPECS if k != "tenantry-custom"]


class RunFailed(Exception):
    """A driver crashed or the database did not show every job finished."""


@dataclass
class Outcome:
    figures: dict[str, float] = field(default_factory=dict)
    verified: bool = True
    notes: list[str] = field(default_factory=list)

    def check(self, what: str, got: Any, expected: Any) -> None:
        if got != expected:
            self.verified = False
            self.notes.append(f"{what}: {got}, expected {expected}")


@dataclass
class _WorkerProc:
    proc: subprocess.Popen[bytes]
    out: Path
    ready: Path
    log: Path


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Runner:
    def __init__(self, server: Server, project_python: str, peers_python: str | None) -> None:
        self.server = server
        self.project_python = project_python
        self.peers_python = peers_python
        self.tmp = Path(tempfile.mkdtemp(prefix="tbench-"))
        self._seq = 0

    # -- processes ----------------------------------------------------------------
    def python(self, spec: Spec) -> str:
        if not spec.peer:
            return self.project_python
        if not self.peers_python:
            raise RunFailed("no peers environment (run `make bench`, or pass --peers-python)")
        return self.peers_python

    def dsn(self, spec: Spec, db: str) -> str:
        return self.server.dsn(db, spec.system.url_driver)

    def call(self, spec: Spec, command: str, db: str, *extra: str, timeout: float = 900) -> Any:
        argv = [
            self.python(spec),
            str(SYSTEMS_DIR / spec.system.driver),
            command,
            self.dsn(spec, db),
        ]
        argv += ["--profile", spec.profile, *extra]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RunFailed(
                f"{spec.system.driver} {command} timed out after {timeout:.0f}s"
            ) from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RunFailed(
                f"{spec.system.driver} {command} exited {proc.returncode}: {' | '.join(tail)}"
            )
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def _start_worker(self, spec: Spec, db: str) -> _WorkerProc:
        self._seq += 1
        base = self.tmp / f"worker{self._seq}"
        out, ready, log = (
            base.with_suffix(".json"),
            base.with_suffix(".ready"),
            base.with_suffix(".log"),
        )
        argv = [
            self.python(spec),
            str(SYSTEMS_DIR / spec.system.driver),
            "work",
            self.dsn(spec, db),
        ]
        argv += ["--profile", spec.profile, "--out", str(out), "--ready", str(ready)]
        with log.open("wb") as f:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
        return _WorkerProc(proc, out, ready, log)

    def _stop_workers(self, workers: list[_WorkerProc]) -> list[dict[str, Any]]:
        # A worker still starting up (when another one drained the queue alone)
        # has no signal handler yet: let it get there, so SIGTERM stops it cleanly.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
            w.proc.poll() is None and not w.ready.exists() for w in workers
        ):
            time.sleep(0.02)
        for w in workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        results = []
        for w in workers:
            try:
                w.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            if not w.out.exists():
                tail = w.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RunFailed(
                    f"worker exited {w.proc.returncode} with no record: {' | '.join(tail)}"
                )
            results.append(json.loads(w.out.read_text()))
        return results

    @staticmethod
    def _wait_ready(workers: list[_WorkerProc], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not all(w.ready.exists() for w in workers):
            if any(w.proc.poll() is not None for w in workers):
                raise RunFailed("a worker exited before it was ready")
            if time.monotonic() > deadline:
                raise RunFailed("workers not ready after 60 s")
            time.sleep(0.02)

    def _drain(
        self,
        spec: Spec,
        db: str,
        workers: list[_WorkerProc],
        jobs: int,
        timeout: float | None = None,
    ) -> float:
        timeout = timeout or max(60.0, jobs / 50)  # 50 jobs/s at the very least
        end = self.server.wait_until_false(
            db,
            spec.system.pending_sql,
            timeout,
            alive=lambda: all(w.proc.poll() is None for w in workers),
        )
        if end is None:
            done = self.server.scalar(db, spec.system.finished_sql)
            dead = [w.proc.returncode for w in workers if w.proc.poll() is not None]
            why = f"worker exited {dead}" if dead else f"timed out after {timeout:.0f} s"
            raise RunFailed(
                f"{why}; {done:,} jobs finished in all (~{done / timeout:,.0f} jobs/s),"
                f" waiting for {jobs:,}"
            )
        return end

    def _verify(self, spec: Spec, db: str, out: Outcome, total: int, starts: int) -> None:
        out.check("finished jobs", self.server.scalar(db, spec.system.finished_sql), total)
        out.check("unfinished jobs", self.server.scalar(db, spec.system.unfinished_sql), 0)
        out.check("handler starts", starts, total)

    # -- scenarios ------------------------------------------------------------------
    def template(self, spec: Spec, *setup_args: str, fill: int = 0) -> str:
        """A prepared database to clone (``CREATE DATABASE ... TEMPLATE``) per run."""
        db = self.server.create("tbench_tpl")
        try:
            self.call(spec, "setup", db, *setup_args)
            if fill:
                self.call(spec, "fill", db, "--jobs", str(fill))
        except BaseException:
            self.server.drop(db)
            raise
        return db

    def processing(
        self,
        spec: Spec,
        jobs: int,
        workers: int = 1,
        *,
        template: str | None = None,
        enqueue_args: tuple[str, ...] = (),
        checks: tuple[tuple[str, str, int], ...] = (),
        figure: str = "",
        timeout: float | None = None,
    ) -> Outcome:
        """Bulk-enqueue *jobs*, then drain them with *workers* worker processes."""
        out = Outcome()
        with self.server.database(template=template) as db:
            if template is None:
                self.call(spec, "setup", db)
            self.server.settle()
            r = self.call(spec, "bulk", db, "--jobs", str(jobs), *enqueue_args)
            out.figures["bulk"] = jobs / r["seconds"]
            out.check("enqueued jobs", self.server.scalar(db, spec.system.unfinished_sql), jobs)
            # Planner statistics as autovacuum keeps them on a long-lived table (a
            # freshly filled table has none); the same for every system.
            self.server.execute(db, "ANALYZE")
            self.server.settle()
            procs = [self._start_worker(spec, db) for _ in range(workers)]
            try:
                end = self._drain(spec, db, procs, jobs, timeout)
            finally:
                records = self._stop_workers(procs)
            started = [r for r in records if r["count"]]
            if not started:
                raise RunFailed("no handler ever started")
            first = min(r["first"] for r in started)
            out.figures[figure or f"proc{workers}"] = jobs / (end - first)
            self._verify(spec, db, out, jobs, sum(r["count"] for r in records))
            for what, sql, expected in checks:
                out.check(what, self.server.scalar(db, sql), expected)
        return out

    def latency(
        self,
        spec: Spec,
        single: int,
        probes: int,
        interval: float,
        *,
        template: str | None = None,
        enqueue_args: tuple[str, ...] = (),
    ) -> Outcome:
        """Single enqueue of *single* jobs; then, with the worker idle, *probes* probes."""
        out = Outcome()
        with self.server.database(template=template) as db:
            if template is None:
                self.call(spec, "setup", db)
            self.server.settle()
            if single:
                r = self.call(spec, "single", db, "--jobs", str(single), *enqueue_args)
                out.figures["single"] = single / r["seconds"]
                out.check(
                    "enqueued jobs", self.server.scalar(db, spec.system.unfinished_sql), single
                )
            procs = [self._start_worker(spec, db)]
            try:
                self._wait_ready(procs)
                if single:
                    self._drain(spec, db, procs, single)
                time.sleep(1.0)  # an idle worker: nothing queued, nothing running
                self.call(
                    spec,
                    "produce",
                    db,
                    "--jobs",
                    str(probes),
                    "--interval",
                    str(interval),
                    *enqueue_args,
                )
                self._drain(spec, db, procs, probes)
            finally:
                records = self._stop_workers(procs)
            lat = [x for r in records for x in r["latencies_ms"]]
            out.check("probes measured", len(lat), probes)
            out.figures["p50"] = percentile(lat, 50)
            out.figures["p99"] = percentile(lat, 99)
            self._verify(spec, db, out, single + probes, sum(r["count"] for r in records))
        return out

    def cleanup(self) -> None:
        for p in sorted(self.tmp.glob("*")):
            p.unlink(missing_ok=True)
        os.rmdir(self.tmp)


def run_guarded(fn: Callable[[], Outcome]) -> Outcome:
    """Run one scenario; a crash becomes a failed outcome instead of ending the suite."""
    try:
        return fn()
    except RunFailed as exc:
        return Outcome(verified=False, notes=[str(exc)])
    except Exception as exc:
        return Outcome(verified=False, notes=[f"{type(exc).__name__}: {exc}"])


def peer_versions(peers_python: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {'python': sys.version.split()[0]}\n"
        "for n in ('pgqueuer', 'procrastinate', 'chancy', 'asyncpg', 'psycopg'):\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [peers_python, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return dict(json.loads(proc.stdout))


def project_python() -> str:
    return sys.executable
