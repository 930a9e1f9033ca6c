"""``tenantry migrate`` as an operator runs it: scaffold, write a revision with Alembic, apply."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tenantry.cli.main import cli
from tests.integration.lifecycle.support import ADD_COLOR, UNIQUE_BODY


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("TENANTRY_CONFIG", "TENANTRY_DATABASE_URL", "TENANTRY_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def _alembic(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args], cwd=cwd, capture_output=True, text=True
    )


def _revision(project: Path, rev_id: str, body: str) -> Path:
    """``alembic revision`` in the scaffolded directory, then fill in upgrade()."""
    made = _alembic(
        "-c",
        "migrations/tenant/alembic.ini",
        "revision",
        "-m",
        rev_id,
        "--rev-id",
        rev_id,
        cwd=project,
    )
    assert made.returncode == 0, made.stderr
    (path,) = (project / "migrations" / "tenant" / "versions").glob(f"*{rev_id}*.py")
    text = path.read_text()
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    path.write_text(
        text.replace("def upgrade() -> None:\n    pass", f"def upgrade() -> None:\n{indented}", 1)
    )
    return path


def _setup(project: Path) -> None:
    ok(run("migrate", "init", "migrations"))
    (project / "tenantry.toml").write_text(
        "[tenantry]\n"
        'tenant_metadata = "tests.models:TenantBase"\n'
        'tenant_migrations = "migrations/tenant"\n'
        'global_migrations = "migrations/global"\n\n'
        "[stores.default]\n"
        f'url = "sqlite:///{project / "data" / "main.db"}"\n'
    )


def test_scaffold_revision_status_and_migrate(project: Path) -> None:
    _setup(project)
    assert (project / "migrations" / "tenant" / "env.py").exists()
    assert (project / "migrations" / "global" / "script.py.mako").exists()
    for tid, mode in (("acme", "shared"), ("globex", "database"), ("initech", "database")):
        ok(run("tenants", "create", tid, "--isolation", mode))
    _revision(project, "c1", ADD_COLOR)

    status = json.loads(ok(run("migrate", "--status", "--json")).stdout)
    tenant_rows = [r for r in status if r["kind"] != "global"]
    assert {(r["target"], r["revision"], r["head"], r["behind"]) for r in tenant_rows} == {
        ("(shared tables on default)", None, "c1", True),
        ("globex", None, "c1", True),
        ("initech", None, "c1", True),
    }
    table = ok(run("migrate", "--status")).stdout
    assert "(none)" in table
    assert "c1" in table

    out = ok(run("migrate", "--parallel", "2")).stdout
    assert "globex" in out
    assert "upgraded" in out
    assert "3 upgraded" in out

    status = json.loads(ok(run("migrate", "--status", "--json")).stdout)
    assert {r["revision"] for r in status if r["kind"] != "global"} == {"c1"}
    assert "0 upgraded" not in ok(run("migrate")).stdout  # nothing to do
    assert "4 already at head" in ok(run("migrate")).stdout  # and the global tables

    # The scaffolded env.py refuses an online `alembic upgrade` and renders --sql.
    refused = _alembic("-c", "migrations/tenant/alembic.ini", "upgrade", "head", cwd=project)
    assert refused.returncode != 0
    assert "tenantry migrate" in refused.stderr
    sql = _alembic("-c", "migrations/tenant/alembic.ini", "upgrade", "head", "--sql", cwd=project)
    assert sql.returncode == 0, sql.stderr
    assert "ALTER TABLE notes ADD COLUMN color VARCHAR(20)" in sql.stdout
    assert "tenantry_tenant_version" in sql.stdout


def test_skip_failing_exits_non_zero_naming_the_tenant(project: Path) -> None:
    _setup(project)
    for tid in ("bad", "good"):
        ok(run("tenants", "create", tid, "--isolation", "database"))
    from tenantry import Tenantry, load_config, tenant_context
    from tests.models import Note

    with Tenantry(load_config()) as t, tenant_context("bad"), t.session() as s:
        s.add_all([Note(body="x"), Note(body="x")])
        s.commit()
    _revision(project, "u1", UNIQUE_BODY)

    result = run("migrate", "--skip-failing")
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]  # after the log line and the progress bar
    assert last.startswith("error: 1 target(s) failed to migrate: bad: IntegrityError")
    assert "good" in result.stdout
    assert "upgraded" in result.stdout

    stopped = run("migrate")  # without --skip-failing: bad fails again, nothing else is left
    assert stopped.exit_code == 1
    assert "bad" in stopped.stderr


def test_init_refuses_to_overwrite(project: Path) -> None:
    ok(run("migrate", "init", "migrations"))
    again = run("migrate", "init", "migrations")
    assert again.exit_code == 1
    assert "exists and is not empty" in again.stderr


def test_export_and_import_from_the_command_line(project: Path) -> None:
    (project / "tenantry.toml").write_text(
        "[tenantry]\n"
        'tenant_metadata = "tests.models:TenantBase"\n\n'
        "[stores.default]\n"
        f'url = "sqlite:///{project / "data" / "main.db"}"\n'
    )
    ok(run("tenants", "create", "acme", "--isolation", "shared"))
    from tenantry import Tenantry, load_config, tenant_context
    from tests.models import Note

    with Tenantry(load_config()) as t, tenant_context("acme"), t.session() as s:
        s.add_all([Note(body="one"), Note(body="two")])
        s.commit()
    out = ok(run("tenants", "export", "acme", "acme.tenant")).stdout
    assert "2 row(s)" in out
    imported = ok(
        run("tenants", "import", "acme.tenant", "--as", "acme2", "--isolation", "database")
    )
    assert "imported tenant 'acme2' (database on store 'default'): 2 row(s)" in imported.stdout
    with Tenantry(load_config()) as t, tenant_context("acme2"), t.session() as s:
        assert sorted(n.body for n in s.query(Note)) == ["one", "two"]

    again = run("tenants", "import", "acme.tenant", "--as", "acme2")
    assert again.exit_code == 1
    assert again.stderr.strip() == (
        "error: tenant 'acme2' already exists; nothing was imported (choose another id with --as)"
    )
    (project / "cut.tenant").write_bytes((project / "acme.tenant").read_bytes()[:100])
    cut = run("tenants", "import", "cut.tenant", "--as", "acme3")
    assert cut.exit_code == 1
    assert cut.stderr.startswith("error: cut.tenant is not a readable tenantry export")
    bad_id = run("tenants", "import", "acme.tenant", "--as", "Bad-Id")
    assert bad_id.exit_code == 1
    assert "invalid tenant id 'Bad-Id'" in bad_id.stderr
    listed = json.loads(ok(run("tenants", "list", "--json")).stdout)
    assert [t["id"] for t in listed] == ["acme", "acme2"]


def test_move_from_the_command_line(project: Path) -> None:
    (project / "tenantry.toml").write_text(
        "[tenantry]\n"
        'tenant_metadata = "tests.models:TenantBase"\n'
        "catalog_cache_ttl = 0.05\n\n"
        "[stores.default]\n"
        f'url = "sqlite:///{project / "data" / "main.db"}"\n'
    )
    ok(run("tenants", "create", "acme", "--isolation", "shared"))
    from tenantry import Tenantry, load_config, tenant_context
    from tests.models import Note

    with Tenantry(load_config()) as t, tenant_context("acme"), t.session() as s:
        s.add_all([Note(body="one"), Note(body="two")])
        s.commit()
    out = ok(run("tenants", "move", "acme", "--isolation", "database")).stdout
    assert "moved tenant 'acme' to database on store 'default': 2 row(s)" in out
    said = " ".join(out.split())  # however the console wrapped it
    assert "2 row(s) copied while served, then paused" in said
    assert "for 0 changed row(s) and 0 job(s)" in said
    shown = json.loads(ok(run("tenants", "show", "acme", "--json")).stdout)
    assert (shown["isolation"], shown["status"]) == ("database", "active")
    same = run("tenants", "move", "acme", "--isolation", "database")
    assert same.exit_code == 1
    assert same.stderr.strip() == "error: tenant 'acme' is already database on store 'default'"
