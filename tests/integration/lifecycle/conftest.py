"""Fixtures for the tenant lifecycle tests: a Tenantry whose config names migration histories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tenantry import Tenantry, TenantryConfig
from tests.conftest import TenantryFactory, make_config
from tests.integration.lifecycle.support import make_histories, with_migrations

LifecycleFactory = Callable[..., Tenantry]


@pytest.fixture
def histories(tmp_path: Path) -> tuple[Path, Path]:
    return make_histories(tmp_path / "migrations")


@pytest.fixture
def lifecycle_tenantry(
    make_tenantry: TenantryFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    histories: tuple[Path, Path],
) -> LifecycleFactory:
    """``factory(backend)`` builds a Tenantry on a fresh database with both histories.

    Each call re-reads the histories, as a new deploy would; calls for one
    backend share the database.
    """
    configs: dict[str, TenantryConfig] = {}

    def factory(backend: str) -> Tenantry:
        if backend not in configs:
            configs[backend] = make_config(backend, request, tmp_path)
        return make_tenantry(backend, with_migrations(configs[backend], *histories))

    return factory
