"""One mover per tenant, on every catalog and every OS, released when its holder dies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from tenantry.errors import MoveError
from tenantry.lifecycle.move.lock import exclusive


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    engine = create_engine(url)
    yield engine
    engine.dispose()


def _attempt(catalog: Engine, tenant_id: str) -> BaseException | None:
    """Try the lock from another thread (another connection, another file handle)."""
    found: list[BaseException | None] = [None]

    def run() -> None:
        try:
            with exclusive(catalog, tenant_id):
                pass
        except MoveError as exc:
            found[0] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    return found[0]


def test_a_second_mover_of_the_same_tenant_is_refused_until_the_first_is_done(
    catalog: Engine,
) -> None:
    with exclusive(catalog, "acme"):
        refused = _attempt(catalog, "acme")
        assert isinstance(refused, MoveError)
        assert "being moved by another process" in str(refused)
        assert _attempt(catalog, "globex") is None  # another tenant is not held up
    assert _attempt(catalog, "acme") is None


def test_the_lock_of_a_killed_mover_is_released(catalog: Engine) -> None:
    url = catalog.url.render_as_string(hide_password=False)
    holder = textwrap.dedent(
        f"""
        import sys, time
        from sqlalchemy import create_engine
        from tenantry.lifecycle.move.lock import exclusive
        with exclusive(create_engine({url!r}), "acme"):
            print("held", flush=True)
            time.sleep(120)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "held"
            assert isinstance(_attempt(catalog, "acme"), MoveError)
        finally:
            child.kill()
            child.wait(timeout=30)
    assert _attempt(catalog, "acme") is None


def test_the_move_modules_import_without_posix_fcntl() -> None:
    """As on Windows, where there is no ``fcntl``."""
    code = (
        "import sys, warnings\n"
        "sys.modules['fcntl'] = None\n"
        "warnings.simplefilter('ignore')\n"
        "import tenantry.lifecycle.move, tenantry.lifecycle.move.lock\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
