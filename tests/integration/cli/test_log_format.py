"""``--log-format``: the command's log lines as text or as one JSON object each, on stderr."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tenantry.cli.main import cli
from tests.integration.cli.conftest import ok, one_line_error


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_json_lines_on_stderr(workdir: Path, how: str) -> None:
    if how == "option":
        result = _run("-v", "--log-format", "json", "tenants", "create", "acme")
    else:
        env = {"TENANTRY_LOG_FORMAT": "json"}
        result = _run("-v", "tenants", "create", "acme", env=env)
    ok(result)
    lines = result.stderr.strip().splitlines()
    assert lines, "expected INFO lines with -v"
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = [e["message"] for e in entries]
    assert any(m.startswith("provisioning tenant acme") for m in messages), messages
    assert "tenant acme is active" in messages
    for entry in entries:
        assert entry["level"] == "INFO"
        assert entry["logger"].startswith("tenantry.")
        assert {"time", "tenant_id", "job_id", "kind"} <= set(entry)
    assert "acme" in result.stdout  # the command's own output is unchanged


def test_text_is_the_default(workdir: Path) -> None:
    result = ok(_run("-v", "tenants", "create", "acme"))
    lines = result.stderr.strip().splitlines()
    assert any("INFO tenantry." in line and "tenant acme is active" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)


def test_the_option_beats_the_environment(workdir: Path) -> None:
    result = ok(
        _run(
            "-v",
            "--log-format",
            "text",
            "tenants",
            "create",
            "acme",
            env={"TENANTRY_LOG_FORMAT": "json"},
        )
    )
    lines = result.stderr.splitlines()
    assert any("INFO tenantry." in line for line in lines), lines
    assert not any(line.startswith("{") for line in lines)


def test_an_unknown_format_is_a_usage_error(workdir: Path) -> None:
    one_line_error(_run("--log-format", "xml", "tenants", "list"), "xml", exit_code=2)
    one_line_error(_run("tenants", "list", env={"TENANTRY_LOG_FORMAT": "xml"}), "xml", exit_code=2)


def test_the_logging_set_up_ends_with_the_command(workdir: Path) -> None:
    logger = logging.getLogger("tenantry")
    before = (list(logger.handlers), logger.level, logger.propagate)
    ok(_run("-v", "--log-format", "json", "tenants", "list"))
    assert (list(logger.handlers), logger.level, logger.propagate) == before
