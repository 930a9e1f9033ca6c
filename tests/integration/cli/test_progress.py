"""Progress of export, import, backup and move: the library's callback and the CLI's bars.

The bars go to stderr, only when asked (``--progress``) or when stderr is a
terminal (never under CliRunner), so stdout keeps just the result.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from tenantry import Tenantry, tenant_context
from tenantry.errors import BackupError
from tenantry.lifecycle.backup import backup_tenant
from tenantry.lifecycle.export import export_tenant
from tenantry.lifecycle.import_ import import_tenant
from tenantry.lifecycle.move import STEPS, move_tenant
from tenantry.lifecycle.rowcopy import BATCH
from tests.integration.cli.conftest import Project, ok, one_line_error
from tests.models import Note

Reports = dict[str, list[tuple[int, int | None]]]


class Recorder:
    """A progress callback that keeps every report, per phase, in order."""

    def __init__(self) -> None:
        self.reports: Reports = defaultdict(list)
        self.phases: list[str] = []

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if phase not in self.reports:
            self.phases.append(phase)
        self.reports[phase].append((done, total))


def _notes(t: Tenantry, tenant_id: str, count: int) -> None:
    with tenant_context(tenant_id), t.session() as session:
        session.add_all([Note(body=f"note {i}") for i in range(count)])
        session.commit()


def _check_rows(reports: list[tuple[int, int | None]], total: int) -> None:
    """From 0 to *total* in steps of one batch, every report knowing the total."""
    assert reports == [(n, total) for n in [*range(0, total, BATCH), total]]


def test_export_and_import_report_each_table_by_batch(project: Project) -> None:
    p = project
    p.create("acme")
    _notes(p.t, "acme", 2500)
    p.enqueue("acme", "record", 3)

    exported = Recorder()
    export_tenant(p.t, "acme", p.path / "acme.tenant", progress=exported)
    assert exported.phases == [
        "export notes",
        "export products",
        "export reviews",
        "export jobs",
    ]
    _check_rows(exported.reports["export notes"], 2500)
    _check_rows(exported.reports["export products"], 0)
    _check_rows(exported.reports["export jobs"], 3)

    imported = Recorder()
    result = import_tenant(p.t, p.path / "acme.tenant", as_id="copy", progress=imported)
    assert result.rows["notes"] == 2500
    assert imported.phases == [
        "verify file",
        "load notes",
        "load products",
        "load reviews",
        "load jobs",
    ]
    assert imported.reports["verify file"] == [(0, None), (1, 1)]
    _check_rows(imported.reports["load notes"], 2500)
    _check_rows(imported.reports["load jobs"], 3)


def test_move_reports_its_steps_and_its_bulk_copy(project: Project) -> None:
    p = project
    p.create("acme")
    _notes(p.t, "acme", 1500)
    moved = Recorder()
    result = move_tenant(p.t, "acme", isolation="database", progress=moved)
    assert result.rows["notes"] == 1500
    assert moved.phases[0] == "move"
    assert moved.reports["move"] == [(n, len(STEPS)) for n in range(len(STEPS) + 1)]
    _check_rows(moved.reports["export notes"], 1500)
    _check_rows(moved.reports["load notes"], 1500)
    # Bulk copy first (export, then load), then the steps after it.
    assert moved.phases.index("export notes") < moved.phases.index("load notes")


def test_cli_move_of_5000_rows_shows_progress_on_stderr(sqlite_project: Project) -> None:
    p = sqlite_project
    p.create("acme", "globex")
    _notes(p.t, "acme", 5000)
    _notes(p.t, "globex", 10)

    shown = ok(p.run("tenants", "move", "acme", "--isolation", "database", "--progress"))
    assert shown.stdout.startswith("moved tenant 'acme' to database")
    assert len(shown.stdout.strip().splitlines()) == 1  # stdout: the result only
    bars = shown.stderr
    for line in ("move", "export notes", "load notes"):
        assert line in bars
    assert "5000/5000" in bars
    assert f"{len(STEPS)}/{len(STEPS)}" in bars

    # Not a terminal and not asked: no bars at all.
    quiet = ok(p.run("tenants", "move", "globex", "--isolation", "database"))
    assert quiet.stderr == ""
    assert ok(p.run("tenants", "export", "acme", "a.tenant", "--no-progress")).stderr == ""
    exported = ok(p.run("tenants", "export", "acme", "b.tenant", "--progress"))
    assert "export notes" in exported.stderr
    imported = ok(p.run("tenants", "import", "b.tenant", "--as", "acme2", "--progress"))
    assert "load notes" in imported.stderr
    assert "5000/5000" in imported.stderr
    assert "imported tenant 'acme2'" in imported.stdout


def test_backup_directory_must_have_an_existing_parent(sqlite_project: Project) -> None:
    p = sqlite_project
    p.create("acme", isolation="database")
    p.create("shr")
    _notes(p.t, "acme", 5)

    missing = p.path / "nowhere" / "backups"
    one_line_error(
        p.run("tenants", "backup", "acme", str(missing)),
        f"{p.path / 'nowhere'} does not exist",
        "create it first",
    )
    assert not (p.path / "nowhere").exists()
    (p.path / "a-file").write_text("")
    one_line_error(p.run("tenants", "backup", "acme", "a-file"), "is a file", exit_code=2)
    with pytest.raises(BackupError, match="is not a directory"):
        backup_tenant(p.t, "acme", p.path / "a-file")
    with pytest.raises(BackupError, match="does not exist"):
        backup_tenant(p.t, "acme", missing)
    assert not (p.path / "nowhere").exists()

    # Only the last part is created.
    made = ok(p.run("tenants", "backup", "acme", "backups", "--progress"))
    assert "sqlite backup" in made.stdout
    assert "backup" in made.stderr
    assert "1/1" in made.stderr
    assert len(list((p.path / "backups").glob("acme-*.db"))) == 1
    shared = ok(p.run("tenants", "backup", "shr", "backups", "--progress"))
    assert "export notes" in shared.stderr
    assert len(list((p.path / "backups").glob("shr-*.tenant"))) == 1


def test_backup_of_a_missing_path_is_refused_before_connecting(
    sqlite_project: Project, tmp_path: Path
) -> None:
    """No store is touched for a bad path: the error is the path's even for an unknown tenant."""
    p = sqlite_project
    one_line_error(
        p.run("tenants", "backup", "nobody", str(tmp_path / "x" / "y")), "does not exist"
    )
