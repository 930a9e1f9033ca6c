"""An async environment fixture that disposes its async engines on the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from tenantry.queue import JobRegistry
from tests.conftest import TenantryFactory
from tests.integration.queue.support import TENANTS, Env, EnvFactory, build_env


@pytest.fixture
async def make_env(make_tenantry: TenantryFactory) -> AsyncIterator[EnvFactory]:
    built: list[Env] = []

    def factory(
        backend: str, mode: str, registry: JobRegistry, tenants: Sequence[str] = TENANTS
    ) -> Env:
        env = build_env(make_tenantry, backend, mode, registry, tenants)
        built.append(env)
        return env

    yield factory
    for env in built:
        await env.t.aclose()
