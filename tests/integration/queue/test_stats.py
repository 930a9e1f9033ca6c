"""QueueAdmin.stats(): per-tenant depth, oldest runnable age, recent outcomes, from the database."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantry.cli.main import cli
from tenantry.errors import ConfigError, TenantNotFoundError
from tenantry.queue import JobState
from tenantry.queue.job import utcnow
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import noop_registry
from tests.integration.queue.support import CASES, Env, build_env


def _prepare(env: Env) -> dict[str, int]:
    """acme: 2 completed, 1 dead, 1 retryable, 1 running, 3 available (2 record, 1 other),
    1 scheduled; globex: nothing; initech: 1 available."""
    ids = [j.id for j in env.enqueue_many("acme", "record", [{"n": i} for i in range(7)])]
    other = env.enqueue("acme", "other", {"n": 99}).id
    env.enqueue("acme", "record", {"n": 100}, delay=3600)
    env.enqueue("initech", "record", {"n": 1})
    env.finish_directly("acme", 2)  # the two oldest: completed now
    now = utcnow()
    env.set_columns("acme", ids[2], state="dead", finished_at=now, attempt=1)
    env.set_columns(
        "acme", ids[3], state="retryable", attempted_at=now, attempt=1, scheduled_at=now
    )
    env.set_columns("acme", ids[4], state="running", attempted_at=now, attempt=1, lease_token="t")
    # The oldest runnable job became due ten minutes ago.
    env.set_columns("acme", ids[5], scheduled_at=now - timedelta(minutes=10))
    return {"other": other}


@CASES
def test_stats_per_tenant_state_and_kind(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry(), ("acme", "globex", "initech"))
    _prepare(env)
    stats = env.queue.admin.stats()
    acme = stats.tenants["acme"]
    assert acme.depth == {"available": 3, "running": 1, "retryable": 1, "scheduled": 1}
    assert acme.by_kind == {
        ("available", "record"): 2,
        ("available", "other"): 1,
        ("running", "record"): 1,
        ("retryable", "record"): 1,
        ("scheduled", "record"): 1,
    }
    assert acme.running == 1
    assert acme.runnable == 3
    assert acme.completed == 2
    assert acme.dead == 1
    assert acme.failed_attempts == 1
    assert acme.throughput == pytest.approx(2 / 300)
    assert acme.oldest_runnable_age is not None
    assert 9 * 60 < acme.oldest_runnable_age < 11 * 60
    # A tenant of the catalog with no jobs is listed, with zeros.
    globex = stats.tenants["globex"]
    assert globex.depth == {}
    assert globex.oldest_runnable_age is None
    assert stats.tenants["initech"].depth == {"available": 1}
    total = stats.total()
    assert total.depth["available"] == 4
    assert total.completed == 2
    assert total.oldest_runnable_age == acme.oldest_runnable_age
    data = stats.to_dict()
    assert [t["tenant_id"] for t in data["tenants"]] == ["acme", "globex", "initech"]
    json.dumps(data)  # JSON-ready


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_stats_of_one_tenant_and_the_window(make_tenantry: TenantryFactory, backend: str) -> None:
    env = build_env(make_tenantry, backend, "shared", noop_registry(), ("acme", "initech"))
    _prepare(env)
    only = env.queue.admin.stats(tenant_id="initech")
    assert set(only.tenants) == {"initech"}
    # Finished before the window: not counted as recent outcomes.
    for job in env.queue.admin.list_jobs(tenant_id="acme", state=JobState.COMPLETED):
        env.set_columns("acme", job.id, finished_at=utcnow() - timedelta(hours=2))
    narrow = env.queue.admin.stats(tenant_id="acme", window=timedelta(hours=1)).tenants["acme"]
    assert narrow.completed == 0
    assert narrow.dead == 1
    wide = env.queue.admin.stats(tenant_id="acme", window=timedelta(hours=3)).tenants["acme"]
    assert wide.completed == 2
    with pytest.raises(ConfigError):
        env.queue.admin.stats(window=timedelta(0))
    with pytest.raises(TenantNotFoundError):
        env.queue.admin.stats(tenant_id="nobody")


def test_queue_stats_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    run("init")
    run("tenants", "create", "acme", "--setting", 'queue={"weight": 2}')
    data = json.loads(run("queue", "stats", "--json"))
    assert [t["tenant_id"] for t in data["tenants"]] == ["acme"]
    assert data["total"]["depth"] == {}
    table = run("queue", "stats")
    assert "acme" in table
    bad = runner.invoke(cli, ["queue", "stats", "--tenant", "Bad Id!"])
    assert bad.exit_code != 0
    assert bad.stderr.startswith("error: ")
