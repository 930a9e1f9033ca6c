"""Start-up: ``import tenantry`` and ``tenantry --help``/``--version`` import nothing heavy.

Each check runs in a fresh interpreter, since this test process has imported
everything long ago, and looks at ``sys.modules`` rather than at a clock, so
the result does not depend on how busy the machine is.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import tenantry
from tenantry.cli.main import COMMANDS, cli

#: What only a command that works on data (or draws tables) should pull in.
HEAVY = ("sqlalchemy", "pydantic", "alembic", "psycopg", "rich")

#: Runs ``cli`` with the arguments given, then reports the loaded modules on stderr.
_RUN_CLI = """
import json, sys
from tenantry.cli.main import cli
try:
    cli.main(args=sys.argv[1:], prog_name="tenantry")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _loaded(modules: list[str], package: str) -> list[str]:
    return [m for m in modules if m == package or m.startswith(package + ".")]


#: Imports tenantry, then reports its version and the loaded modules on stderr.
_IMPORT = """
import json, sys, tenantry
report = {"version": tenantry.__version__, "modules": sorted(sys.modules)}
print(json.dumps(report), file=sys.stderr)
"""


def _report(code: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    # A fixed width, so the help is wrapped as below: click wraps at min(COLUMNS, 80) - 2.
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, env=env
    )
    report: dict[str, Any] = json.loads(done.stderr.strip().splitlines()[-1])
    return done, report


def _run_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    done, report = _report(_RUN_CLI, *args)
    assert report["code"] == 0, done.stderr
    return done, report["modules"]


def test_import_tenantry_imports_nothing_heavy() -> None:
    _, report = _report(_IMPORT)
    modules = report["modules"]
    for package in HEAVY:
        assert _loaded(modules, package) == [], f"import tenantry imported {package}"
    assert [m for m in modules if m.startswith("tenantry.")] == []


def test_version_needs_no_import_and_matches_the_installed_distribution() -> None:
    _, report = _report(_IMPORT)
    assert report["version"] == importlib.metadata.version("tenantry")
    assert [m for m in report["modules"] if m.startswith("tenantry.")] == []


@pytest.mark.parametrize("option", ["--version", "--help", "-h"])
def test_version_and_help_import_no_command_and_nothing_heavy(option: str) -> None:
    done, modules = _run_cli(option)
    for package in HEAVY:
        assert _loaded(modules, package) == [], f"tenantry {option} imported {package}"
    commands = {target.target.partition(":")[0] for target in COMMANDS.values()}
    assert commands.isdisjoint(modules), sorted(commands & set(modules))
    if option == "--version":
        assert done.stdout.strip() == f"tenantry, version {tenantry.__version__}"


def test_a_commands_help_imports_that_command_only() -> None:
    _, modules = _run_cli("init", "--help")
    assert "tenantry.cli.init" in modules
    others = {spec.target.partition(":")[0] for name, spec in COMMANDS.items() if name != "init"}
    assert others.isdisjoint(modules), sorted(others & set(modules))


def test_the_console_script_answers_version() -> None:
    script = Path(sys.executable).with_name("tenantry")
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"tenantry, version {tenantry.__version__}"


def test_help_lists_every_command_with_its_help_before_and_after_loading() -> None:
    # The lazy listing (nothing loaded, in a fresh interpreter) ...
    lazy, _ = _run_cli("--help")
    # ... is the listing the loaded commands give (this process loads them all).
    for name in COMMANDS:
        assert cli.get_command(click.Context(cli), name) is not None
    loaded = CliRunner().invoke(
        cli, ["--help"], prog_name="tenantry", catch_exceptions=False, terminal_width=78
    )
    assert loaded.exit_code == 0
    assert lazy.stdout == loaded.output
    listed = lazy.stdout.split("Commands:", 1)[1]
    for name in COMMANDS:
        assert f"\n  {name} " in listed, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_static_help_is_the_commands_own(name: str) -> None:
    spec = COMMANDS[name]
    command = spec.load()
    assert command.name == name
    for limit in (30, 45, 80, 10_000):
        assert spec.stand_in(name).get_short_help_str(limit) == command.get_short_help_str(limit)


def test_the_tenants_group_gets_its_lifecycle_commands() -> None:
    result = CliRunner().invoke(cli, ["tenants", "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    commands = result.output.split("Commands:", 1)[1]
    for name in ("export", "import", "backup", "move", "create", "list"):
        assert f"\n  {name} " in commands, name


def test_an_unknown_command_is_one_line_and_names_the_lazy_ones() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tenantry.cli.main", "tenant"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: No such command 'tenant'.")
    assert len(done.stderr.strip().splitlines()) == 1
    if hasattr(click.exceptions, "NoSuchCommand"):  # click 8.4+ suggests a name
        assert "Did you mean 'tenants'?" in done.stderr


def test_every_public_name_resolves_to_its_modules_object() -> None:
    lazy = tenantry._LAZY
    assert set(lazy) == set(tenantry.__all__) - {"__version__"}
    for name in tenantry.__all__:
        value = getattr(tenantry, name)
        if name in lazy:
            module, attribute = lazy[name]
            assert value is getattr(importlib.import_module(module), attribute), name
    assert set(tenantry.__all__) <= set(dir(tenantry))


def test_the_type_checking_imports_name_every_public_name() -> None:
    """IDEs and mypy see the names through these imports; they must not drift."""
    source = Path(tenantry.__file__).read_text()
    seen: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                seen |= {alias.asname or alias.name for alias in stmt.names}
    assert seen == set(tenantry.__all__) - {"__version__"}


def test_unknown_names_and_submodules() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = tenantry.nope
    from tenantry import queue  # a subpackage, not a lazy name

    assert queue.Queue is tenantry.Queue
