"""A project directory for the command line: a tenantry.toml on SQLite or PostgreSQL.

Each test runs the CLI in-process (``CliRunner``) in a fresh working directory
with the tenantry environment variables removed, against a configuration that
declares the test tables (``tests.models``). The same configuration builds a
:class:`Tenantry` for the test's own set-up (rows, jobs), so the CLI and the
test look at the same stores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tenantry import Tenantry, tenant_context
from tenantry.cli.main import cli
from tenantry.queue import JobState, Queue
from tenantry.queue.drivers import ClaimRequest
from tenantry.tenancy.config import load_config
from tests.conftest import BACKENDS
from tests.integration.queue.handlers import noop_registry

_ENV_TO_CLEAR = (
    "TENANTRY_CONFIG",
    "TENANTRY_DATABASE_URL",
    "TENANTRY_DATA_DIR",
    "FORCE_COLOR",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "COLUMNS",
)

Invoke = Callable[..., Result]


@dataclass
class Project:
    """The working directory, the CLI runner, and a Tenantry on the same configuration."""

    path: Path
    backend: str
    t: Tenantry
    queue: Queue

    def run(self, *args: str, input: str | None = None) -> Result:
        """The CLI in-process; unexpected exceptions propagate and fail the test."""
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    def enqueue(self, tenant_id: str, kind: str, count: int) -> list[int]:
        with tenant_context(tenant_id):
            return [j.id for j in self.queue.enqueue_many(kind, [{"n": i} for i in range(count)])]

    def kill(self, tenant_id: str, count: int) -> list[int]:
        """Claim the tenant's *count* oldest available jobs and dead-letter them (as a worker)."""
        source = self.queue.admin.source_for(tenant_id)
        error = {
            "at": "2030-01-01T00:00:00+00:00",
            "attempt": 1,
            "type": "ValueError",
            "message": "boom",
            "traceback": '  File "jobs.py", line 3, in record\nValueError: boom',
        }
        with source.engine().begin() as conn:
            claimed = source.driver.claim(
                conn,
                ClaimRequest(
                    worker_id="test",
                    queues=["default"],
                    limit=count,
                    lease_seconds=30,
                    tenants=[tenant_id],
                ),
            )
            for job in claimed:
                assert source.driver.fail(conn, job, error, retry_at=None, dead=True)
        assert len(claimed) == count
        return sorted(j.id for j in claimed)

    def state(self, tenant_id: str, job_id: int) -> JobState:
        return self.queue.admin.get_job(tenant_id, job_id).state

    def create(self, *tenant_ids: str, isolation: str = "shared") -> None:
        for tid in tenant_ids:
            self.t.create_tenant(tid, isolation=isolation)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in _ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _write_config(path: Path, url: str) -> Path:
    # A short catalog cache: a move waits that long for other processes' caches.
    config = path / "tenantry.toml"
    config.write_text(
        "[tenantry]\n"
        'tenant_metadata = "tests.models:TenantBase"\n'
        "catalog_cache_ttl = 0.05\n"
        f'data_dir = "{path / "data"}"\n\n'
        "[stores.default]\n"
        f'url = "{url}"\n'
    )
    (path / "data").mkdir(exist_ok=True)
    return config


@pytest.fixture
def make_project(
    request: pytest.FixtureRequest, workdir: Path
) -> Iterator[Callable[[str], Project]]:
    made: list[Project] = []

    def factory(backend: str) -> Project:
        if backend == "sqlite":
            url = f"sqlite:///{workdir / 'data' / 'main.db'}"
        else:
            url = request.getfixturevalue("pg_database")
        config = load_config(_write_config(workdir, url))
        t = Tenantry(config)
        queue = Queue(t, noop_registry())
        queue.setup()
        project = Project(workdir, backend, t, queue)
        made.append(project)
        return project

    yield factory
    for project in made:
        project.t.close()


@pytest.fixture
def sqlite_project(make_project: Callable[[str], Project]) -> Project:
    return make_project("sqlite")


@pytest.fixture(params=BACKENDS)
def project(request: pytest.FixtureRequest, make_project: Callable[[str], Project]) -> Project:
    """On SQLite and on PostgreSQL."""
    return make_project(str(request.param))


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output
    return result


def one_line_error(result: Result, *fragments: str, exit_code: int = 1) -> str:
    """The result is exactly one ``error: ...`` line on stderr with *exit_code*."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == "", result.stdout
    return lines[0]


def bad_inputs(project: Project, cases: Sequence[tuple[Sequence[str], int, str]]) -> None:
    """Each (arguments, exit status, fragment) is a one-line error with that status."""
    for args, status, fragment in cases:
        one_line_error(project.run(*args), fragment, exit_code=status)


def data(result: Result) -> Any:
    """The JSON a successful command printed."""
    return json.loads(ok(result).stdout)
