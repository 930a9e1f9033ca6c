"""What the PostgreSQL isolation wall costs: the code before it and after it, side by side.

    .venv/bin/python benchmarks/isolation_wall.py [--url URL] [--rounds 3] [--before REF]

The *before* code is a ``git worktree`` of ``REF`` (a commit without the wall)
in a temporary directory, removed at the end; the *after* code is this
checkout's ``src/``. Each runs in a subprocess of its own, this same file with
``PYTHONPATH`` pointing at that tree's ``src`` (both use this interpreter's
packages), and each subprocess creates a fresh database on the server, sets
up 10 shared and 10 schema tenants in it, and drops it (and the session login
the wall creates for it) at the end.

The two subprocesses of a round are alive together and take turns: each step
is cut into ``--slice``-second slices, run before, after, after, before, ...
(``--seconds`` per tree and step, after a ``CHECKPOINT``), so a busy moment on
a shared machine lands on both rather than on one. Every round starts two new
subprocesses on two new databases. The table shows, per figure, the median
over the rounds and the ratio of the medians (after / before), with each
round's own ratio beside it.

Besides wall-clock rates and latencies, each step records CPU time per
request: the client's (``time.process_time``, all its threads) and the
server's (every backend on the subprocess's database, from
``/proc/<pid>/schedstat``; only for a server on this machine). Where other
work loads the machine, wall-clock figures mostly measure the wait for a CPU;
CPU time stays close to the work done.

Steps (every request or transaction is checked, not only timed):

* ``session``: ``with tenant_context(t), tenantry.session() as s``, one ORM
  ``s.get()`` by primary key and a commit, over 10 tenants round-robin, for
  ``--seconds`` seconds: requests/s and p50/p99 latency; shared and schema mode;
* ``async session``: the same through ``async with tenantry.async_session()``;
* ``enqueue in session``: ``queue.enqueue(..., session=s)`` and a commit, one
  job per transaction (commit-bound: every commit waits for its WAL flush);
* ``claim + complete``: ``--jobs`` no-op jobs of the 10 shared tenants
  bulk-enqueued (in two halves, one per turn), then drained by one in-process
  worker at 10 slots; jobs/s from the worker's start to the last
  acknowledgement written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psycopg
from bench_db import Server
from queue_noop import Noop, registry
from runner import percentile
from sqlalchemy.orm import Mapped, mapped_column

from tenantry import (
    Queue,
    TenantBase,
    Tenantry,
    TenantryConfig,
    Worker,
    tenant_context,
)
from tenantry.queue import WorkerOptions

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_URL = os.environ.get(
    "TENANTRY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
#: Marks the lines of the step protocol on a child's stdout (anything else is ignored).
MARK = "WALLBENCH "
SHARED = [f"s{i:02d}" for i in range(10)]
SCHEMA = [f"c{i:02d}" for i in range(10)]
#: The queue of the enqueue step's jobs: the drain's worker (``default``) leaves them alone.
ENQUEUE_QUEUE = "wallbench"
JOBS = "tenantry.tenantry_jobs"


class WallBenchRow(TenantBase):
    """A tenant table read by primary key, one row per tenant."""

    __tablename__ = "wall_bench_rows"

    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int]


def drop_roles(server: Server, db: str) -> list[str]:
    """Drop the logins made for database *db* (dropped already); those that would not go.

    The wall's session login is named after its database (``tenantry_rls_<db>``),
    and *db* has a random suffix, so a role whose name holds it was made for it.
    """
    with server.connect() as conn:
        roles = [
            str(r[0])
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE strpos(rolname, %s) > 0", (db,)
            )
        ]
    left = []
    for role in roles:
        try:
            with server.connect() as conn:
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        except psycopg.Error:
            left.append(role)
    return left


# -- the child: one tree's code, one database ---------------------------------------------
class Bench:
    """One subprocess's database, tenants and steps (run with one tree's ``src`` on the path)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.db = server.create("tbench_wall")
        self.t = Tenantry(TenantryConfig.single(server.dsn(self.db, "postgresql+psycopg")))
        self.queue = Queue(self.t, registry)
        self.loop = asyncio.new_event_loop()
        self.rows: dict[str, tuple[int, int]] = {}
        #: On the ``postgres`` database, so its own backend is not counted.
        self.monitor = server.connect()
        self.local = server.host in ("127.0.0.1", "localhost", "::1")

    def _backends(self) -> dict[int, int]:
        """CPU time (ns) so far of every backend on this database, by pid (local server)."""
        if not self.local:
            return {}
        rows = self.monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db,)
        ).fetchall()
        found = {}
        for (pid,) in rows:
            with suppress(OSError, ValueError, IndexError):
                found[pid] = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        return found

    def cpu_start(self) -> tuple[int, dict[int, int]]:
        return time.process_time_ns(), self._backends()

    def cpu_since(self, start: tuple[int, dict[int, int]]) -> dict[str, int | None]:
        """Client (this process) and server (its backends) CPU µs since *start*.

        Where the load on a shared machine stretches every wall-clock figure,
        CPU time per request stays close to the work done. A backend that
        connected meanwhile counts from zero (its start-up is part of the cost).
        """
        client = (time.process_time_ns() - start[0]) // 1000
        if not self.local:
            return {"cpu_client": client, "cpu_server": None}
        now = self._backends()
        server = sum(ns - start[1].get(pid, 0) for pid, ns in now.items()) // 1000
        return {"cpu_client": client, "cpu_server": server}

    def setup(self) -> None:
        for tenants, mode in ((SHARED, "shared"), (SCHEMA, "schema")):
            for i, tid in enumerate(tenants):
                self.t.create_tenant(tid, isolation=mode)
                with tenant_context(tid), self.t.session() as s:
                    row = WallBenchRow(n=1000 + i)
                    s.add(row)
                    s.commit()
                    self.rows[tid] = (row.id, row.n)
        self.queue.setup()

    def close(self) -> list[str]:
        """Drop the database, then the roles made for it; the roles that could not be dropped."""
        self.t.close()
        self.loop.close()
        self.monitor.close()
        self.server.drop(self.db)
        return drop_roles(self.server, self.db)

    # -- steps: each runs one slice and returns its raw figures ---------------------------
    def session(self, tenants: list[str], seconds: float, warmup: int) -> dict[str, Any]:
        def one(i: int) -> bool:
            tid = tenants[i % len(tenants)]
            pk, n = self.rows[tid]
            with tenant_context(tid), self.t.session() as s:
                row = s.get(WallBenchRow, pk)
                ok = row is not None and row.n == n
                s.commit()
            return ok

        for i in range(warmup):
            one(i)
        samples: list[int] = []
        errors = i = 0
        cpu = self.cpu_start()
        started = time.perf_counter()
        end = started + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter_ns()
            ok = one(i)
            samples.append((time.perf_counter_ns() - t0) // 1000)
            errors += not ok
            i += 1
        elapsed = time.perf_counter() - started
        return {"samples": samples, "elapsed": elapsed, "errors": errors, **self.cpu_since(cpu)}

    def async_session(self, tenants: list[str], seconds: float, warmup: int) -> dict[str, Any]:
        async def one(i: int) -> bool:
            tid = tenants[i % len(tenants)]
            pk, n = self.rows[tid]
            with tenant_context(tid):
                async with self.t.async_session() as s:
                    row = await s.get(WallBenchRow, pk)
                    ok = row is not None and row.n == n
                    await s.commit()
            return ok

        async def run() -> dict[str, Any]:
            for i in range(warmup):
                await one(i)
            samples: list[int] = []
            errors = i = 0
            cpu = self.cpu_start()
            started = time.perf_counter()
            end = started + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter_ns()
                ok = await one(i)
                samples.append((time.perf_counter_ns() - t0) // 1000)
                errors += not ok
                i += 1
            elapsed = time.perf_counter() - started
            return {"samples": samples, "elapsed": elapsed, "errors": errors, **self.cpu_since(cpu)}

        return self.loop.run_until_complete(run())

    def enqueue(self, tenants: list[str], seconds: float, warmup: int) -> dict[str, Any]:
        def one(i: int) -> bool:
            with tenant_context(tenants[i % len(tenants)]), self.t.session() as s:
                self.queue.enqueue("noop", Noop(i), session=s, queue=ENQUEUE_QUEUE)
                s.commit()
            return True

        count = f"SELECT count(*) FROM {JOBS} WHERE queue = '{ENQUEUE_QUEUE}'"
        for i in range(warmup):
            one(i)
        had = self._count(count)
        samples: list[int] = []
        i = 0
        cpu = self.cpu_start()
        started = time.perf_counter()
        end = started + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter_ns()
            one(i)
            samples.append((time.perf_counter_ns() - t0) // 1000)
            i += 1
        elapsed = time.perf_counter() - started
        used = self.cpu_since(cpu)
        # Every job committed, each in a transaction of its own; then gone again.
        errors = abs(self._count(count) - had - len(samples))
        self.server.execute(self.db, f"DELETE FROM {JOBS} WHERE queue = '{ENQUEUE_QUEUE}'")
        return {"samples": samples, "elapsed": elapsed, "errors": errors, **used}

    def drain(self, tenants: list[str], jobs: int) -> dict[str, Any]:
        """Bulk-enqueue *jobs* over *tenants*, then drain them with one worker (10 slots)."""
        per = jobs // len(tenants)
        total = per * len(tenants)
        completed = f"SELECT count(*) FROM {JOBS} WHERE state = 'completed'"
        done_before = self._count(completed)
        for tid in tenants:
            with tenant_context(tid):
                self.queue.enqueue_many("noop", [Noop(n) for n in range(per)])
        self.server.execute(self.db, "ANALYZE")
        self.server.settle()

        cpu = self.cpu_start()

        async def run() -> float:
            worker = Worker(self.t, registry, WorkerOptions(concurrency=10))
            task = asyncio.create_task(worker.run())
            await worker.wait_started()
            start = time.perf_counter()
            waiter = asyncio.ensure_future(worker.signals.acknowledged.reach(total))
            await asyncio.wait({task, waiter}, timeout=600, return_when=asyncio.FIRST_COMPLETED)
            elapsed = time.perf_counter() - start
            if not waiter.done():
                waiter.cancel()
            worker.stop()
            await task
            return elapsed

        elapsed = self.loop.run_until_complete(run())
        used = self.cpu_since(cpu)
        done = self._count(completed) - done_before
        left = self._count(
            f"SELECT count(*) FROM {JOBS} WHERE queue = 'default' AND state <> 'completed'"
        )
        errors = abs(total - done) + left
        return {"count": total, "elapsed": elapsed, "errors": errors, **used}

    def _count(self, sql: str) -> int:
        return int(self.server.scalar(self.db, sql))


def child(url: str) -> int:
    """The protocol: a ``ready`` line, then one result line per step read from stdin."""
    import tenantry

    server = Server(url)
    bench = Bench(server)
    try:
        bench.setup()
        _say({"ready": True, "tenantry": str(Path(tenantry.__file__).parent), "db": bench.db})
        for line in sys.stdin:
            cmd = json.loads(line)
            step = cmd["step"]
            if step == "quit":
                break
            tenants = SHARED if cmd.get("mode", "shared") == "shared" else SCHEMA
            if step == "drain":
                result = bench.drain(tenants, cmd["jobs"])
            else:
                run = {
                    "session": bench.session,
                    "async": bench.async_session,
                    "enqueue": bench.enqueue,
                }[step]
                result = run(tenants, cmd["seconds"], cmd["warmup"])
            _say(result)
    finally:
        left = bench.close()
    _say({"closed": True, "roles_left": left})
    return 0


def _say(data: dict[str, Any]) -> None:
    print(MARK + json.dumps(data), flush=True)


# -- the parent: the two trees, in turns ---------------------------------------------------
@dataclass(frozen=True)
class Step:
    """A step of the plan: *slices* commands to each child, in turns."""

    key: str
    label: str
    unit: str
    command: dict[str, Any]
    slices: int
    #: Requests (or jobs) run untimed in each child's first slice of the step.
    warmup: int = 0

    @property
    def figures(self) -> tuple[str, ...]:
        cpu = ("cpu_client", "cpu_server")
        return ("rate", *cpu) if self.key == "drain" else ("rate", "p50", "p99", *cpu)


def steps(seconds: float, slice_seconds: float, jobs: int) -> list[Step]:
    slices = max(1, round(seconds / slice_seconds))

    def timed(step: str, mode: str) -> dict[str, Any]:
        return {"step": step, "mode": mode, "seconds": seconds / slices}

    return [
        Step(
            "sync-shared", "session, shared", "requests/s", timed("session", "shared"), slices, 200
        ),
        Step(
            "sync-schema", "session, schema", "requests/s", timed("session", "schema"), slices, 200
        ),
        Step(
            "async-shared",
            "async session, shared",
            "requests/s",
            timed("async", "shared"),
            slices,
            200,
        ),
        Step(
            "async-schema",
            "async session, schema",
            "requests/s",
            timed("async", "schema"),
            slices,
            200,
        ),
        Step(
            "enqueue",
            "enqueue in session, shared",
            "jobs/s",
            timed("enqueue", "shared"),
            slices,
            20,
        ),
        Step(
            "drain",
            f"claim + complete, {jobs:,} jobs",
            "jobs/s",
            {"step": "drain", "mode": "shared", "jobs": jobs // 2},
            2,
        ),
    ]


class Child:
    """A running child: one tree's code on its own database."""

    def __init__(self, side: str, src: Path, url: str, log: IO[bytes]) -> None:
        self.side = side
        self.log = log
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", "--url", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
            cwd=str(HERE),
        )
        self.src = src
        self.db: str | None = None

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                data: dict[str, Any] = json.loads(line[len(MARK) :])
                return data
        self.proc.wait()
        self.log.flush()
        tail = Path(self.log.name).read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{self.side} child exited {self.proc.returncode}: " + " | ".join(tail))

    def ready(self) -> None:
        data = self.read()
        self.db = data["db"]
        expected = self.src / "tenantry"
        if Path(data["tenantry"]) != expected:
            raise RuntimeError(f"{self.side} imported {data['tenantry']}, not {expected}")

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        self.send(command)
        return self.read()

    def quit(self) -> None:
        """Ask the child to drop its database and roles, and wait for it."""
        with suppress(BrokenPipeError, OSError):
            self.send({"step": "quit"})
        with suppress(RuntimeError):  # it died: the parent cleans up after it
            while "closed" not in self.read():
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def worktree(ref: str, tmp: Path) -> Iterator[Path]:
    """A detached ``git worktree`` of *ref* in *tmp*, removed afterwards."""
    path = tmp / "before"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--quiet", "--detach", str(path), ref],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False
        )


def _load() -> str:
    with suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


@dataclass
class Tally:
    """One step's slices in one child of one round, pooled."""

    count: int = 0
    elapsed: float = 0.0
    errors: int = 0
    samples: list[int] = field(default_factory=list)
    cpu_client: int = 0
    cpu_server: int | None = 0

    def add(self, result: dict[str, Any]) -> None:
        self.samples += result.get("samples", [])
        self.count += result.get("count", len(result.get("samples", [])))
        self.elapsed += result["elapsed"]
        self.errors += result["errors"]
        self.cpu_client += result["cpu_client"]
        if self.cpu_server is not None and result["cpu_server"] is not None:
            self.cpu_server += result["cpu_server"]
        else:
            self.cpu_server = None

    def figure(self, name: str) -> float:
        if name == "rate":
            return self.count / self.elapsed
        if name == "cpu_client":
            return self.cpu_client / self.count
        if name == "cpu_server":
            return float("nan") if self.cpu_server is None else self.cpu_server / self.count
        return percentile([float(x) for x in self.samples], 50 if name == "p50" else 99)


Results = dict[str, dict[str, list[Tally]]]


def measure(
    server: Server, sides: dict[str, Path], plan: list[Step], rounds: int, tmp: Path
) -> tuple[Results, list[str]]:
    """Every step of *plan* in each of *rounds* rounds, the two children taking turns.

    Each step is cut into slices; the children alternate slice by slice
    (before, after, after, before, ...), so a burst of load elsewhere on the
    machine lands on both, and neither always goes first.
    """
    results: Results = {s.key: {side: [] for side in sides} for s in plan}
    notes: list[str] = []
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}: setting up (load {_load()})", file=sys.stderr, flush=True)
        children: list[Child] = []
        try:
            for side, src in sides.items():
                log = (tmp / f"{side}-{r}.log").open("wb")
                children.append(Child(side, src, server.dsn("postgres"), log))
            for c in children:
                c.ready()
            for step in plan:
                tallies = {c.side: Tally() for c in children}
                server.settle()
                for k in range(step.slices):
                    for c in children if k % 2 == 0 else children[::-1]:
                        warmup = step.warmup if k < 2 else 0
                        tallies[c.side].add(c.run({**step.command, "warmup": warmup}))
                for side, tally in tallies.items():
                    results[step.key][side].append(tally)
                    if tally.errors:
                        notes.append(f"errors: round {r + 1} {side} {step.label}: {tally.errors}")
                figures = ", ".join(f"{s} {t.figure('rate'):,.0f}" for s, t in tallies.items())
                print(
                    f"  {step.label} ({step.unit}): {figures} (load {_load()})",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            for c in children:
                c.quit()
                if c.db is not None:  # a child that died did not clean up
                    server.drop(c.db)
                    for role in drop_roles(server, c.db):
                        notes.append(f"role {role} left on the server (drop it by hand)")
                c.log.close()
    return results, notes


LATENCY = {"p50": "p50 µs", "p99": "p99 µs"}
CPU = {"cpu_client": "CPU µs, client", "cpu_server": "CPU µs, server"}


def table(plan: list[Step], results: Results) -> list[str]:
    lines = [
        "| step | figure | before | after | after/before | per round |",
        "|---|---|---:|---:|---:|---|",
    ]
    for step in plan:
        for fig in step.figures:
            before = [t.figure(fig) for t in results[step.key]["before"]]
            after = [t.figure(fig) for t in results[step.key]["after"]]
            b, a = statistics.median(before), statistics.median(after)
            rounds = " ".join(f"{y / x:.2f}" for x, y in zip(before, after, strict=True))
            unit = LATENCY.get(fig) or CPU.get(fig) or step.unit
            if fig in CPU:
                unit += " per job" if step.unit == "jobs/s" else " per request"
            lines.append(
                f"| {step.label} | {unit} | {b:,.0f} | {a:,.0f} | {a / b:.2f} | {rounds} |"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="the PostgreSQL server (any database)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default="3cd7faf", help="the commit measured as 'before'")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="timed length of each step, per tree and round"
    )
    parser.add_argument("--slice", type=float, default=0.25, help="seconds per turn in a step")
    parser.add_argument("--jobs", type=int, default=10000, help="jobs drained per tree and round")
    parser.add_argument(
        "--skip",
        default="",
        help="steps to leave out, comma-separated: "
        "sync-shared, sync-schema, async-shared, async-schema, enqueue, drain",
    )
    parser.add_argument("--json", default=None, help="also write every round's figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.url)

    server = Server(args.url)
    skip = {k.strip() for k in args.skip.split(",") if k.strip()}
    plan = [s for s in steps(args.seconds, args.slice, args.jobs) if s.key not in skip]
    if unknown := skip - {s.key for s in steps(args.seconds, args.slice, args.jobs)}:
        parser.error(f"unknown steps to skip: {', '.join(sorted(unknown))}")
    started = datetime.now(UTC)
    load_start = _load()
    with tempfile.TemporaryDirectory(prefix="tbench-wall-") as name:
        tmp = Path(name)
        with worktree(args.before, tmp) as before:
            sides = {"before": before / "src", "after": REPO / "src"}
            results, notes = measure(server, sides, plan, args.rounds, tmp)
    load_end = _load()
    cpus = os.cpu_count()
    print(
        f"\nisolation wall: before {args.before}, after this checkout; PostgreSQL "
        f"{server.version()}, {cpus} CPUs; {args.rounds} rounds, medians; "
        f"{args.seconds:g} s per step and tree in turns of {args.slice:g} s; "
        f"{started:%Y-%m-%d %H:%M} UTC; "
        f"load average {load_start} at start, {load_end} at end\n"
    )
    print("\n".join(table(plan, results)))
    for note in notes:
        print(f"NOTE: {note}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "started": started.isoformat(),
                    "results": {
                        k: {side: [t.__dict__ for t in ts] for side, ts in v.items()}
                        for k, v in results.items()
                    },
                }
            )
        )
    return 1 if any("errors" in n for n in notes) else 0


if __name__ == "__main__":
    sys.exit(main())
