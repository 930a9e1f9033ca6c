"""The ``tenantry`` command line, run in-process (CliRunner) and as the installed script.

Each test runs in its own working directory with the tenantry environment
variables removed, so the CLI's default lookup (./tenantry.toml, then SQLite
under ./tenantry-data) is exercised exactly as a user would hit it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from sqlalchemy.engine import make_url

import tenantry.cli.demo as cli_demo
import tenantry.cli.tenants as cli_tenants
from tenantry import Tenantry, TenantryConfig
from tenantry.cli.main import cli
from tenantry.cli.running import worker_options
from tenantry.demo.tour import DEMO_SETTING, DemoBase, run_demo
from tenantry.queue import WorkerOptions

#: Variables that change what the CLI reads or how rich renders; removed per test.
_ENV_TO_CLEAR = (
    "TENANTRY_CONFIG",
    "TENANTRY_DATABASE_URL",
    "TENANTRY_DATA_DIR",
    "FORCE_COLOR",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "COLUMNS",
)
SECRET = "hunter2-Sup3rSecret"
UNREACHABLE_PG = "postgresql://postgres:${SOME_SECRET}@127.0.0.1:1/nowhere"

Invoke = Callable[..., Result]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in _ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def invoke(workdir: Path) -> Invoke:
    """Run the CLI in-process; unexpected exceptions propagate and fail the test."""
    runner = CliRunner()

    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        return runner.invoke(cli, list(args), env=env, input=input, catch_exceptions=False)

    return run


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output
    return result


def assert_one_line_error(result: Result, *fragments: str, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def tenants_json(invoke: Invoke, *extra: str, env: dict[str, str] | None = None) -> list[Any]:
    data = json.loads(ok(invoke("tenants", "list", "--json", *extra, env=env)).stdout)
    assert isinstance(data, list)
    return data


def sqlite_tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


# -- init -------------------------------------------------------------------------------
def test_init_writes_config_and_creates_catalog(invoke: Invoke, workdir: Path) -> None:
    result = ok(invoke("init"))
    config = tomllib.loads((workdir / "tenantry.toml").read_text())
    assert config["stores"]["default"]["url"] == "sqlite:///tenantry-data/default.db"
    assert config["tenantry"]["default_store"] == "default"
    assert "tenantry_tenants" in sqlite_tables(workdir / "tenantry-data" / "default.db")
    assert "sqlite:///tenantry-data/default.db" in result.stdout
    assert tenants_json(invoke) == []


def test_init_refuses_to_overwrite_without_force(invoke: Invoke, workdir: Path) -> None:
    ok(invoke("init"))
    config_file = workdir / "tenantry.toml"
    config_file.write_text(config_file.read_text() + "# hand edited\n")

    assert_one_line_error(invoke("init"), "already exists", "--force")
    assert config_file.read_text().endswith("# hand edited\n")

    ok(invoke("init", "--force", "--data-dir", "elsewhere"))
    config = tomllib.loads(config_file.read_text())
    assert config["stores"]["default"]["url"] == "sqlite:///elsewhere/default.db"
    assert config["tenantry"]["data_dir"] == "elsewhere"
    assert (workdir / "elsewhere" / "default.db").exists()


def test_init_honours_config_path(invoke: Invoke, workdir: Path) -> None:
    ok(invoke("--config", "conf/app.toml", "init", "--data-dir", "data"))
    assert (workdir / "conf" / "app.toml").exists()
    assert not (workdir / "tenantry.toml").exists()
    ok(invoke("--config", "conf/app.toml", "tenants", "create", "acme"))
    assert [t["id"] for t in tenants_json(invoke, env={"TENANTRY_CONFIG": "conf/app.toml"})] == [
        "acme"
    ]
    assert (workdir / "data" / "default.db").exists()


def test_init_rejects_a_malformed_url_without_writing(invoke: Invoke, workdir: Path) -> None:
    assert_one_line_error(invoke("init", "--database-url", "not a url"), "malformed URL")
    assert not (workdir / "tenantry.toml").exists()


# -- tenants ----------------------------------------------------------------------------
def test_tenant_lifecycle_roundtrip_on_sqlite(invoke: Invoke, workdir: Path) -> None:
    ok(invoke("init"))
    created = ok(
        invoke(
            "tenants",
            "create",
            "acme",
            "--name",
            "Acme [bold]Inc",
            "--setting",
            "plan=pro",
            "--setting",
            "seats=5",
        )
    )
    assert "created tenant 'acme'" in created.stdout
    ok(invoke("tenants", "create", "initech", "--isolation", "database"))
    initech_db = workdir / "tenantry-data" / "default_tenants" / "initech.db"
    assert initech_db.exists()

    table = ok(invoke("tenants", "list")).stdout
    for text in ("acme", "Acme [bold]Inc", "initech", "shared", "database", "active"):
        assert text in table
    shown = json.loads(ok(invoke("tenants", "show", "acme", "--json")).stdout)
    assert shown["settings"] == {"plan": "pro", "seats": 5}
    assert shown["name"] == "Acme [bold]Inc"
    assert "Acme [bold]Inc" in ok(invoke("tenants", "show", "acme")).stdout

    ok(invoke("tenants", "suspend", "acme"))
    assert [t["id"] for t in tenants_json(invoke, "--status", "suspended")] == ["acme"]
    assert_one_line_error(invoke("tenants", "suspend", "acme"), "suspended")
    ok(invoke("tenants", "resume", "acme"))
    assert tenants_json(invoke, "--status", "suspended") == []

    ok(invoke("tenants", "delete", "initech", "--yes"))
    assert not initech_db.exists()
    assert_one_line_error(invoke("tenants", "show", "initech"), "does not exist")
    assert [t["id"] for t in tenants_json(invoke)] == ["acme"]


def test_json_output_parses(invoke: Invoke) -> None:
    ok(invoke("tenants", "create", "acme", "--setting", "tags=[1, 2]"))
    ok(invoke("tenants", "create", "globex", "--isolation", "database"))
    listed = tenants_json(invoke)
    assert [(t["id"], t["isolation"], t["status"]) for t in listed] == [
        ("acme", "shared", "active"),
        ("globex", "database", "active"),
    ]
    shown = json.loads(ok(invoke("tenants", "show", "acme", "--json")).stdout)
    assert set(shown) >= {"id", "name", "status", "isolation", "store", "settings", "created_at"}
    assert shown["settings"] == {"tags": [1, 2]}
    assert tenants_json(invoke, "--store", "default", "--status", "active") == listed


@pytest.mark.parametrize("bad_id", ["a;drop", "Robert'); --", "Acme", "pg_catalog", "x" * 41])
def test_invalid_tenant_id_creates_nothing(invoke: Invoke, workdir: Path, bad_id: str) -> None:
    assert_one_line_error(invoke("tenants", "create", bad_id), "invalid tenant id")
    assert not (workdir / "tenantry-data").exists()  # not even the catalog database
    assert tenants_json(invoke) == []


@pytest.mark.parametrize(
    "command", [["show"], ["suspend"], ["resume"], ["delete", "--yes"], ["delete"]]
)
def test_invalid_tenant_id_in_other_commands(invoke: Invoke, command: list[str]) -> None:
    ok(invoke("init"))
    assert_one_line_error(invoke("tenants", *command, "a;drop"), "invalid tenant id")


def test_schema_isolation_on_sqlite_is_a_clear_error(invoke: Invoke) -> None:
    result = invoke("tenants", "create", "acme", "--isolation", "schema")
    assert_one_line_error(result, "needs PostgreSQL", "'database'")
    assert tenants_json(invoke) == []


def test_delete_without_yes_refuses_when_not_interactive(invoke: Invoke) -> None:
    ok(invoke("tenants", "create", "acme"))
    assert_one_line_error(invoke("tenants", "delete", "acme"), "--yes", "not running interactively")
    assert_one_line_error(invoke("tenants", "delete", "acme", input="y\n"), "--yes")
    assert [t["id"] for t in tenants_json(invoke)] == ["acme"]


def test_delete_asks_for_confirmation_when_interactive(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_tenants, "_stdin_is_interactive", lambda: True)
    ok(invoke("tenants", "create", "acme"))
    declined = invoke("tenants", "delete", "acme", input="n\n")
    assert declined.exit_code == 1
    assert "Delete tenant 'acme'" in declined.stderr  # stdout stays for results
    assert "error: tenant 'acme' (shared on store 'default') was not deleted" in declined.stderr
    assert [t["id"] for t in tenants_json(invoke)] == ["acme"]

    ok(invoke("tenants", "delete", "acme", input="y\n"))
    assert tenants_json(invoke) == []


def test_unknown_tenant_store_and_config_are_one_line_errors(invoke: Invoke) -> None:
    assert_one_line_error(invoke("tenants", "show", "nobody"), "'nobody' does not exist")
    assert_one_line_error(invoke("tenants", "delete", "nobody", "--yes"), "does not exist")
    assert_one_line_error(invoke("tenants", "list", "--store", "nope"), "no store named 'nope'")
    assert_one_line_error(invoke("tenants", "create", "acme", "--store", "nope"), "'nope'")
    assert_one_line_error(invoke("--config", "missing.toml", "tenants", "list"), "does not exist")


def test_usage_errors_are_one_line_with_exit_status_2(invoke: Invoke) -> None:
    bad_mode = invoke("tenants", "create", "acme", "--isolation", "bogus")
    assert_one_line_error(bad_mode, "--isolation", "bogus", exit_code=2)
    assert_one_line_error(invoke("--bogus", "tenants", "list"), "--bogus", exit_code=2)
    bad_setting = invoke("tenants", "create", "acme", "--setting", "novalue")
    assert_one_line_error(bad_setting, "KEY=VALUE", exit_code=2)
    assert_one_line_error(invoke("tenants", "frobnicate"), "frobnicate", exit_code=2)
    assert tenants_json(invoke) == []


def test_models_option_selects_the_provisioned_tables(invoke: Invoke, workdir: Path) -> None:
    ok(
        invoke(
            "--models",
            "tenantry.demo.tour:DemoBase",
            "tenants",
            "create",
            "acme",
            "--isolation",
            "database",
        )
    )
    tenant_db = workdir / "tenantry-data" / "default_tenants" / "acme.db"
    tables = sqlite_tables(tenant_db)
    assert "demo_products" in tables
    assert not tables & {"notes", "products", "reviews"}  # TenantBase's tables: not provisioned
    assert_one_line_error(
        invoke("--models", "no_such_module:Base", "tenants", "list"), "cannot import"
    )


def test_verbose_logs_to_stderr_and_restores_logging(invoke: Invoke) -> None:
    logger = logging.getLogger("tenantry")
    before = (list(logger.handlers), logger.level, logger.propagate)
    result = ok(invoke("-v", "tenants", "create", "acme"))
    assert "tenant acme is active" in result.stderr
    assert "[tenant=" in result.stderr
    assert (list(logger.handlers), logger.level, logger.propagate) == before
    quiet = ok(invoke("tenants", "create", "globex"))
    assert quiet.stderr == ""


# -- secrets ----------------------------------------------------------------------------
def test_secret_from_env_is_never_printed(
    invoke: Invoke, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_SECRET", SECRET)
    init = invoke("init", "--database-url", UNREACHABLE_PG)
    line = assert_one_line_error(init, "cannot connect to store 'default'", "postgres:***@")
    assert "Connection refused" in line or "connect" in line
    assert SECRET not in init.output
    # The file keeps the reference, never the expanded value.
    assert "${SOME_SECRET}" in (workdir / "tenantry.toml").read_text()
    assert SECRET not in (workdir / "tenantry.toml").read_text()

    listed = invoke("tenants", "list")
    assert_one_line_error(listed, "cannot connect to store", "***")
    assert SECRET not in listed.output
    created = invoke("tenants", "create", "acme", "--isolation", "database")
    assert_one_line_error(created, "cannot connect to store")
    assert SECRET not in created.output


def test_literal_password_in_url_is_masked(invoke: Invoke) -> None:
    url = "postgresql://app:literal-Pa55word@127.0.0.1:1/app"
    result = invoke("tenants", "list", env={"TENANTRY_DATABASE_URL": url})
    assert_one_line_error(result, "cannot connect to store", "app:***@127.0.0.1:1/app")
    assert "literal-Pa55word" not in result.output


def test_missing_secret_variable_is_a_clear_error(invoke: Invoke) -> None:
    result = invoke("tenants", "list", env={"TENANTRY_DATABASE_URL": UNREACHABLE_PG})
    assert_one_line_error(result, "SOME_SECRET", "not set")


# -- demo -------------------------------------------------------------------------------
#: The demo serves until Ctrl-C without --once; tests also let it pick free ports.
DEMO_ONCE = ("--once", "--port", "0", "--app-port", "0")
SUMMARY_TITLE = "Jobs processed per tenant"


def _table_rows(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 2 and cells[1] in {"acme", "globex", "initech", "umbrella"}:
            rows[cells[1]] = line
    return rows


def _demo_rows(output: str) -> dict[str, str]:
    """The isolation check's table (printed before the catalogue demo's summary)."""
    return _table_rows(output.split(SUMMARY_TITLE)[0])


def _summary_rows(output: str) -> dict[str, list[str]]:
    """The --once summary: tenant -> cells (isolation, reached by, updates, done, dead, audit)."""
    assert SUMMARY_TITLE in output, output
    rows = _table_rows(output.split(SUMMARY_TITLE)[1])
    return {t: [c.strip() for c in line.split("│")][2:-1] for t, line in rows.items()}


def _check_summary(output: str, tenants: set[str]) -> None:
    summary = _summary_rows(output)
    assert set(summary) == tenants
    for tenant, (_isolation, _way, updates, done, dead, audited) in summary.items():
        assert int(done) > 0, tenant
        assert done == audited, tenant  # one audit row per completed job
        assert int(done) + int(dead) == int(updates), tenant
    assert summary["acme"][4] == "1"  # the rename the search index refuses


def test_demo_is_rerunnable_and_marks_its_tenants(invoke: Invoke, workdir: Path) -> None:
    for args in ([], [], ["--no-reset"]):
        result = ok(invoke("demo", "--data-dir", "demo-data", *DEMO_ONCE, *args))
        rows = _demo_rows(result.stdout)
        assert set(rows) == {"acme", "globex", "initech"}
        for tenant, line in rows.items():
            assert "yes" in line
            assert f"{tenant}: " in line
        assert "all 3 tenants saw exactly their own rows" in result.stdout
        assert str(workdir / "demo-data") in result.stdout
        assert "skipping 'umbrella'" in result.stdout
        if not args:
            _check_summary(result.stdout, {"acme", "globex", "initech"})

    env = {"TENANTRY_DATABASE_URL": "sqlite:///demo-data/default.db"}
    listed = tenants_json(invoke, env=env)
    assert [(t["id"], t["isolation"]) for t in listed] == [
        ("acme", "shared"),
        ("globex", "shared"),
        ("initech", "database"),
    ]
    assert all(t["settings"] == {DEMO_SETTING: True} for t in listed)
    assert (workdir / "demo-data" / "default_tenants" / "initech.db").exists()
    assert not (workdir / "tenantry-data").exists()


def test_demo_refuses_to_touch_a_tenant_it_did_not_create(invoke: Invoke) -> None:
    env = {"TENANTRY_DATABASE_URL": "sqlite:///demo-data/default.db"}
    ok(invoke("tenants", "create", "acme", env=env))
    result = invoke("demo", "--data-dir", "demo-data")
    assert_one_line_error(result, "'acme'", "not created by the demo")
    assert [t["id"] for t in tenants_json(invoke, env=env)] == ["acme"]


def test_demo_fails_when_a_tenant_sees_foreign_rows(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    def leaky(
        _tenantry: Tenantry, _console: Console, *, reset: bool = True
    ) -> list[dict[str, Any]]:
        return [
            {"tenant": "acme", "only_own_rows": True},
            {"tenant": "globex", "only_own_rows": False},
        ]

    monkeypatch.setattr(cli_demo, "run_demo", leaky)
    assert_one_line_error(invoke("demo", "--data-dir", "d"), "isolation check failed", "globex")


def test_run_demo_reports_each_tenant_and_shares_the_table(workdir: Path) -> None:
    data_dir = workdir / "demo-data"
    out = io.StringIO()
    with Tenantry(
        TenantryConfig.sqlite_default(str(data_dir)), tenant_metadata=DemoBase.metadata
    ) as tenantry:
        rows = run_demo(tenantry, Console(file=out, width=200))
    assert [(r["tenant"], r["isolation"], r["rows_visible"], r["only_own_rows"]) for r in rows] == [
        ("acme", "shared", 3, True),
        ("globex", "shared", 3, True),
        ("initech", "database", 3, True),
    ]
    assert rows[0]["names_visible"] == ["acme: anvil", "acme: magnet", "acme: rocket skates"]
    assert "provisioned demo tenants" in out.getvalue()
    # The two shared tenants really are in one table: the filter is doing the work.
    with sqlite3.connect(data_dir / "default.db") as conn:
        counts = dict(
            conn.execute("SELECT tenant_id, count(*) FROM demo_products GROUP BY tenant_id")
        )
    assert counts == {"acme": 3, "globex": 3}


# -- the installed console script ---------------------------------------------------------
def _script_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _ENV_TO_CLEAR}


def _console_script() -> Path:
    script = Path(sys.executable).with_name("tenantry")
    assert script.exists(), f"{script} missing: install the package (pip install -e .)"
    return script


def test_console_script_runs_the_demo(workdir: Path) -> None:
    data_dir = workdir / "script-demo"
    proc = subprocess.run(
        [str(_console_script()), "demo", "--data-dir", str(data_dir), *DEMO_ONCE],
        cwd=workdir,
        env=_script_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "only own rows?" in proc.stdout
    rows = _demo_rows(proc.stdout)
    assert set(rows) == {"acme", "globex", "initech"}
    assert all("yes" in line for line in rows.values())
    assert f"demo data is in {data_dir}" in proc.stdout
    assert (data_dir / "default_tenants" / "initech.db").exists()
    _check_summary(proc.stdout, {"acme", "globex", "initech"})


def test_console_script_error_is_one_line(workdir: Path) -> None:
    proc = subprocess.run(
        [str(_console_script()), "tenants", "create", "Robert'); --"],
        cwd=workdir,
        env=_script_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: invalid tenant id")
    assert len(proc.stderr.strip().splitlines()) == 1


# -- worker and serve: their shared set-up ---------------------------------------------------
def test_worker_flags_become_worker_options() -> None:
    assert worker_options(concurrency=3, grace=2.0, poll=0.5) == WorkerOptions(
        concurrency=3, shutdown_grace=2.0, poll_interval=0.5, freeze_gc=True
    )
    narrowed = worker_options(
        concurrency=1,
        grace=0.0,
        poll=0.01,
        prefetch=0,
        max_prefetch=7,
        queues=("mail",),
        stores=(),
        tenant_ids=("acme", "globex"),
        lease=5.0,
        fair=False,
    )
    assert (narrowed.prefetch, narrowed.max_prefetch, narrowed.lease_seconds) == (0, 7, 5.0)
    assert (narrowed.queues, narrowed.stores, narrowed.tenants) == (
        ("mail",),
        None,  # no --store: every store
        ("acme", "globex"),
    )
    assert narrowed.fair is False


@pytest.mark.parametrize("command", [["worker"], ["serve", "--admin-token", "t" * 32]])
def test_an_app_that_is_not_a_registry_is_a_one_line_error(
    invoke: Invoke, command: list[str]
) -> None:
    result = invoke(*command, "--app", "os:sep")
    assert_one_line_error(result, "os:sep is not a tenantry JobRegistry")


# -- PostgreSQL -------------------------------------------------------------------------
def _url_with_secret(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test database's URL with its password as ``${SOME_SECRET}`` (trust auth ignores it)."""
    url = make_url(pg_database)
    monkeypatch.setenv("SOME_SECRET", str(url.password) if url.password else SECRET)
    port = f":{url.port}" if url.port else ""
    return f"{url.drivername}://{url.username}:${{SOME_SECRET}}@{url.host}{port}/{url.database}"


def test_cli_tenants_on_postgresql(
    invoke: Invoke, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"TENANTRY_DATABASE_URL": _url_with_secret(pg_database, monkeypatch)}
    secret = os.environ["SOME_SECRET"]
    outputs = [ok(invoke("tenants", "create", "shr", env=env))]
    outputs.append(ok(invoke("tenants", "create", "sch", "--isolation", "schema", env=env)))
    outputs.append(ok(invoke("tenants", "create", "dbt", "--isolation", "database", env=env)))

    listed = tenants_json(invoke, env=env)
    assert [(t["id"], t["isolation"], t["status"]) for t in listed] == [
        ("dbt", "database", "active"),
        ("sch", "schema", "active"),
        ("shr", "shared", "active"),
    ]
    table = ok(invoke("tenants", "list", env=env))
    outputs.append(table)
    for text in ("shr", "sch", "dbt", "schema", "database"):
        assert text in table.stdout

    url = make_url(pg_database)
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database
    ) as conn:
        schemas = {
            r[0] for r in conn.execute("SELECT schema_name FROM information_schema.schemata")
        }
        databases = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert "t_sch" in schemas
    assert any(name.endswith("dbt") and name.startswith(str(url.database)) for name in databases)

    outputs.append(ok(invoke("tenants", "suspend", "sch", env=env)))
    outputs.append(ok(invoke("tenants", "resume", "sch", env=env)))
    outputs.append(ok(invoke("tenants", "delete", "sch", "--yes", env=env)))
    outputs.append(ok(invoke("tenants", "delete", "dbt", "--yes", env=env)))
    assert [t["id"] for t in tenants_json(invoke, env=env)] == ["shr"]
    assert all(secret not in result.output for result in outputs)


def test_cli_init_and_demo_on_postgresql(
    invoke: Invoke, workdir: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _url_with_secret(pg_database, monkeypatch)
    secret = os.environ["SOME_SECRET"]
    init = ok(invoke("init", "--database-url", url))
    assert "catalog ready" in init.stdout
    assert "postgres:***@" in init.stdout
    assert "${SOME_SECRET}" in (workdir / "tenantry.toml").read_text()

    demo = ok(invoke("demo", *DEMO_ONCE))
    rows = _demo_rows(demo.stdout)
    assert set(rows) == {"acme", "globex", "initech", "umbrella"}
    assert all("yes" in line for line in rows.values())
    assert "schema" in rows["umbrella"]
    _check_summary(demo.stdout, {"acme", "globex", "initech", "umbrella"})
    listed = ok(invoke("tenants", "list"))
    assert "umbrella" in listed.stdout
    assert all(secret not in r.output for r in (init, demo, listed))
