"""The install story: ranges in pyproject.toml, the lock, the lowest pins, the core install.

pyproject.toml states ranges, requirements/constraints.txt the tested lock and
requirements/lowest.txt the lower bounds as pins (``make test-lowest``). These
files are edited by hand or regenerated apart from each other, so the checks
below keep them telling the same story. The last test runs the core install's
SQLite round trip (.ci/core_smoke.py) in this environment and checks that the
SQLite path imports none of the extras' packages (psycopg above all).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNTIME_EXTRAS = ("postgres", "web", "serve", "demo")
TOOL_EXTRAS = ("test", "dev")


def _requirements(extras: tuple[str, ...], *, core: bool) -> list[Requirement]:
    lines = list(PROJECT["dependencies"]) if core else []
    for extra in extras:
        lines += PROJECT["optional-dependencies"][extra]
    found = [Requirement(line) for line in lines]
    return [r for r in found if canonicalize_name(r.name) != "tenantry"]


def _pins(path: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {raw!r} is not an exact pin"
        key = canonicalize_name(name.split("[", 1)[0])
        assert key not in pins, f"{path.name} pins {name} twice"
        pins[key] = Version(version)
    return pins


def _lower_bound(requirement: Requirement) -> Version:
    lows = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert len(lows) == 1, f"{requirement} needs exactly one '>=' lower bound"
    return lows[0]


RUNTIME = _requirements(RUNTIME_EXTRAS, core=True)
LOCK = _pins(ROOT / "requirements" / "constraints.txt")
LOWEST = _pins(ROOT / "requirements" / "lowest.txt")


def test_runtime_dependencies_are_ranges_with_a_lower_bound() -> None:
    for requirement in RUNTIME:
        assert not any(s.operator == "==" for s in requirement.specifier), requirement
        _lower_bound(requirement)


def test_every_extra_is_in_all() -> None:
    declared = set(PROJECT["optional-dependencies"]) - {"all", *TOOL_EXTRAS}
    (everything,) = PROJECT["optional-dependencies"]["all"]
    assert set(Requirement(everything).extras) == declared


@pytest.mark.parametrize("requirement", RUNTIME, ids=str)
def test_lowest_pins_each_lower_bound(requirement: Requirement) -> None:
    """requirements/lowest.txt is what `make test-lowest` proves: pyproject's lower bounds."""
    assert LOWEST.get(canonicalize_name(requirement.name)) == _lower_bound(requirement)


@pytest.mark.parametrize("requirement", RUNTIME + _requirements(TOOL_EXTRAS, core=False), ids=str)
def test_lock_pins_every_dependency_within_its_range(requirement: Requirement) -> None:
    locked = LOCK.get(canonicalize_name(requirement.name))
    assert locked is not None, f"requirements/constraints.txt does not pin {requirement.name}"
    assert requirement.specifier.contains(locked, prereleases=True), (requirement, locked)


def test_lowest_keeps_the_lock_for_everything_else() -> None:
    """Only the runtime lower bounds (and what they pin exactly) differ from the lock.

    pydantic pins its core exactly, and ``psycopg[binary]`` its binary package.
    """
    bounds = {canonicalize_name(r.name) for r in RUNTIME}
    differing = {
        name for name, version in LOWEST.items() if name not in bounds and LOCK.get(name) != version
    }
    assert differing <= {"pydantic-core", "psycopg-binary"}, differing


def test_sqlite_path_imports_no_extra() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "core_smoke.py"), "--extras-installed"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SQLite round trip ok" in result.stdout
