"""A bad ``tenantry.toml`` stops the installed ``tenantry`` command with one ``error:`` line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_ENV = ("TENANTRY_CONFIG", "TENANTRY_DATABASE_URL", "TENANTRY_DATA_DIR")


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("tenantry")
    assert script.exists(), f"{script} missing: install the package (pip install -e .)"
    return subprocess.run(
        [str(script), *args],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k not in _ENV},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("toml", "command", "message"),
    [
        (
            '[stores.main]\nurl = "sqlite:///x.db"\npool_size = "abc"\n',
            ["tenants", "list"],
            "stores.main.pool_size = 'abc': expected an integer",
        ),
        (
            '[stores.main]\nurl = "sqlite:///x.db"\nmax_tenant_engines = "abc"\n',
            ["tenants", "list"],
            "stores.main.max_tenant_engines = 'abc': expected an integer",
        ),
        (
            '[tenantry]\ncatalog_cache_ttl = "soon"\n[stores.main]\nurl = "sqlite:///x.db"\n',
            ["tenants", "show", "acme"],
            "tenantry.catalog_cache_ttl = 'soon': expected a number",
        ),
        (
            '[stores.main]\nurl = "postgresql://app:hunter2@db/app"\npasword = "hunter2"\n',
            ["tenants", "list"],
            "stores.main.pasword: unknown key (expected one of: admin_url, database_prefix, "
            "max_tenant_engines, pool_size, pooler, rls_role, url)",
        ),
    ],
)
def test_a_bad_config_file_is_one_error_line(
    tmp_path: Path, toml: str, command: list[str], message: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(toml)
    proc = _run(tmp_path, "--config", str(bad), *command)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {bad}: {message}"]
