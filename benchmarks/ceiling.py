"""The plain-SQL ceiling: how fast PostgreSQL itself claims and finishes queue rows here.

A table shaped like a job queue (a partial index on the runnable rows, as the
queues have) is filled with ROWS rows; pgbench runs CLIENTS connections, each
doing TRANSACTIONS transactions of::

    BEGIN;
    UPDATE ceiling_jobs SET state = 'done', finished_at = now()
     WHERE id IN (SELECT id FROM ceiling_jobs WHERE state = 'available'
                  ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED);
    COMMIT;

so every row is claimed exactly once; afterwards every row must be ``done``
(the same verification as the queues). The figure is rows / pgbench's elapsed
time (rows/s), with default durability: each transaction is one fsynced commit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench_db import Server

BATCH = 100
SCRIPT = f"""BEGIN;
UPDATE ceiling_jobs SET state = 'done', finished_at = now()
 WHERE id IN (SELECT id FROM ceiling_jobs WHERE state = 'available'
              ORDER BY id LIMIT {BATCH} FOR UPDATE SKIP LOCKED);
COMMIT;
"""
SCHEMA = """
CREATE TABLE ceiling_jobs (
    id bigserial PRIMARY KEY,
    state text NOT NULL,
    payload jsonb NOT NULL,
    finished_at timestamptz
);
CREATE INDEX ceiling_jobs_runnable ON ceiling_jobs (id) WHERE state = 'available';
"""


def pgbench_path() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    for version in (17, 16, 15, 14, 13):
        candidate = Path(f"/usr/lib/postgresql/{version}/bin/pgbench")
        if candidate.exists():
            return str(candidate)
    return None


@dataclass
class CeilingResult:
    rows_per_s: float
    rows: int
    verified: bool
    note: str = ""


def run(server: Server, rows: int = 200_000, clients: int = 4, threads: int = 2) -> CeilingResult:
    pgbench = pgbench_path()
    if pgbench is None:
        raise RuntimeError("pgbench not found (PATH or /usr/lib/postgresql/*/bin)")
    per_client = rows // (clients * BATCH)
    rows = per_client * clients * BATCH
    with server.database("tbench_ceiling") as db, server.connect(db) as conn:
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO ceiling_jobs (state, payload)"
            " SELECT 'available', jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE ceiling_jobs")
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write(SCRIPT)
        env = dict(os.environ, PGPASSWORD=server.password or "")
        try:
            proc = subprocess.run(
                [
                    pgbench,
                    "-n",
                    "-h",
                    server.host,
                    "-p",
                    str(server.port),
                    "-U",
                    server.user,
                    "-c",
                    str(clients),
                    "-j",
                    str(threads),
                    "-t",
                    str(per_client),
                    "-f",
                    f.name,
                    db,
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
                check=False,
            )
        finally:
            os.unlink(f.name)
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed: {proc.stderr.strip()[-500:]}")
        match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
        if match is None:
            raise RuntimeError(f"cannot read pgbench output: {proc.stdout[-500:]}")
        done = conn.execute("SELECT count(*) FROM ceiling_jobs WHERE state = 'done'").fetchone()
        verified = done is not None and done[0] == rows
        note = "" if verified else f"{done[0] if done else 0} of {rows} rows done"
        return CeilingResult(float(match.group(1)) * BATCH, rows, verified, note)
