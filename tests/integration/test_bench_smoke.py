"""The benchmark harness (benchmarks/suite.py) still runs end to end: its smoke mode.

Small counts, tenantry only, one run: every figure must be in the JSON and
every run verified in the database. The figures themselves are not checked
(CI machines are too noisy for that); ``make bench`` is where they are read.

It takes minutes, so it is not part of the suite: ``make bench-smoke`` (a CI
step of its own) runs it with ``pytest --bench-smoke -s``, which also shows
the table the smoke run printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "suite.py"

EXPECTED = {
    "tenantry-10": {"bulk", "single", "proc1", "proc2", "p50", "p99"},
    "tenantry-best": {"bulk", "single", "proc1", "proc2", "p50", "p99"},
    "tenantry-growth": {"proc1"},
    "tenantry-tenants": {"proc1", "p50", "p99"},
    "tenantry-tx": {"proc1"},
}


@pytest.mark.bench_smoke
@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_bench_smoke_runs_and_verifies(pg_server: str, tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--smoke", "--url", pg_server, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert result["smoke"] is True
    for key in ("cpu_count", "postgresql", "python", "date"):
        assert result["machine"][key], key
    jitter = result["machine"]["cpu_jitter_ms"]
    assert 0 < jitter["p50"] <= jitter["p99"] <= jitter["max"]
    assert any(n.startswith("machine jitter:") for n in result["notes"])
    commits = result["machine"]["commits_per_second"]
    assert len(commits) == 2
    assert all(n > 0 for n in commits)
    assert any(n.startswith("machine commit rate") for n in result["notes"])
    rows = result["rows"]
    assert set(rows) == set(EXPECTED)
    for key, figures in EXPECTED.items():
        row = rows[key]
        assert row["verified"] is True, (key, row["failures"])
        assert set(row["figures"]) == figures, key
        for name, stat in row["figures"].items():
            assert len(stat["samples"]) == 1, (key, name)
            assert stat["median"] > 0, (key, name)
    assert {t["name"] for t in result["targets"]}  # printed, met or not
    print(proc.stdout)  # the smoke run's table, for the CI log
