"""Structural rules the import contracts (``.importlinter``) cannot express.

* Only the isolation strategies ask "which mode is this?": everything else
  asks the strategy object, so a new mode is one new class, not a hunt for
  ``if mode ==`` across the code base.
* No module grows past a size a reader can hold in mind.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tenantry

PACKAGE = Path(tenantry.__file__).parent
ISOLATION = PACKAGE / "tenancy" / "isolation"
MODES = {"SHARED", "SCHEMA", "DATABASE"}
MAX_LINES = 550


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _mode_branches(path: Path, root: Path = PACKAGE) -> list[str]:
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            elements = (
                operand.elts if isinstance(operand, ast.Tuple | ast.List | ast.Set) else [operand]
            )
            for element in elements:
                if (
                    isinstance(element, ast.Attribute)
                    and element.attr in MODES
                    and isinstance(element.value, ast.Name)
                    and element.value.id == "IsolationMode"
                ):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_only_the_isolation_strategies_branch_on_the_mode() -> None:
    branches = [
        where
        for path in _modules()
        if ISOLATION not in path.parents
        for where in _mode_branches(path)
    ]
    assert branches == [], "ask the strategy (strategy_for(mode)) instead of comparing modes"


def test_the_check_sees_a_mode_comparison(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(t):\n"
        "    if t.isolation is IsolationMode.DATABASE:\n"
        "        return 1\n"
        "    return IsolationMode.SHARED in (t.isolation,)\n"
    )
    assert len(_mode_branches(sample, tmp_path)) == 2


def test_no_module_is_too_long_to_read() -> None:
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in _modules()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
