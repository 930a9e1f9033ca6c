from __future__ import annotations

import asyncio
import contextvars
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tenantry import (
    TenantThreadPoolExecutor,
    bind_context,
    current_tenant,
    current_tenant_or_none,
    no_tenant,
    tenant_context,
)
from tenantry.errors import InvalidTenantId, TenantNotSetError
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus


def test_no_tenant_raises_never_defaults() -> None:
    assert current_tenant_or_none() is None
    with pytest.raises(TenantNotSetError, match="No tenant is set"):
        current_tenant()


def test_sets_and_resets() -> None:
    with tenant_context("acme") as tid:
        assert tid == "acme"
        assert current_tenant() == "acme"
    assert current_tenant_or_none() is None


def test_nesting_restores_outer() -> None:
    with tenant_context("a"):
        with tenant_context("b"):
            assert current_tenant() == "b"
            with no_tenant():
                assert current_tenant_or_none() is None
            assert current_tenant() == "b"
        assert current_tenant() == "a"
    assert current_tenant_or_none() is None


def test_reset_on_exception() -> None:
    with pytest.raises(RuntimeError), tenant_context("a"), tenant_context("b"):
        raise RuntimeError("boom")
    assert current_tenant_or_none() is None


def test_same_object_reentered() -> None:
    ctx = tenant_context("a")
    with ctx, tenant_context("b"), ctx:
        assert current_tenant() == "a"
    assert current_tenant_or_none() is None


def test_accepts_tenant_objects_and_validates() -> None:
    tenant = Tenant("acme", "Acme", TenantStatus.ACTIVE, IsolationMode.SHARED, "default")
    with tenant_context(tenant):
        assert current_tenant() == "acme"
    with pytest.raises(InvalidTenantId):
        tenant_context("DROP TABLE x")


async def test_async_context_manager() -> None:
    async with tenant_context("a"):
        assert current_tenant() == "a"
    assert current_tenant_or_none() is None


async def test_tasks_inherit_but_never_leak() -> None:
    """200 concurrent tasks, each in its own tenant, interleaved at random awaits."""
    seen: dict[int, list[str]] = {}

    async def work(i: int) -> None:
        tid = f"t{i % 7}"
        async with tenant_context(tid):
            observed = []
            for _ in range(5):
                await asyncio.sleep(random.random() / 1000)
                observed.append(current_tenant())
            # A child task created here inherits this tenant.
            observed.append(await asyncio.create_task(asyncio.to_thread(current_tenant)))
            seen[i] = observed
        assert current_tenant_or_none() is None

    await asyncio.gather(*(work(i) for i in range(200)))
    for i, observed in seen.items():
        assert set(observed) == {f"t{i % 7}"}
    assert current_tenant_or_none() is None


async def test_task_keeps_tenant_after_parent_moves_on() -> None:
    gate = asyncio.Event()

    async def child() -> str:
        await gate.wait()
        return current_tenant()

    with tenant_context("a"):
        task = asyncio.create_task(child())
    with tenant_context("b"):
        gate.set()
        assert await task == "a"


def test_threads_do_not_inherit_or_leak() -> None:
    barrier = threading.Barrier(8)
    results: dict[int, tuple[str | None, str]] = {}

    def work(i: int) -> None:
        before = current_tenant_or_none()  # plain threads start with an empty context
        with tenant_context(f"t{i}"):
            barrier.wait()
            results[i] = (before, current_tenant())

    with tenant_context("main"):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert current_tenant() == "main"
    assert results == {i: (None, f"t{i}") for i in range(8)}


def test_thread_pool_helpers_carry_the_submitters_tenant() -> None:
    with TenantThreadPoolExecutor(max_workers=2) as pool:
        futures = []
        for i in range(50):
            with tenant_context(f"t{i % 5}"):
                futures.append((f"t{i % 5}", pool.submit(current_tenant)))
        assert all(f.result() == expected for expected, f in futures)
        # A pool thread keeps nothing from an earlier task.
        assert pool.submit(current_tenant_or_none).result() is None

    with ThreadPoolExecutor(max_workers=1) as plain:
        with tenant_context("x"):
            assert plain.submit(current_tenant_or_none).result() is None
            bound = bind_context(current_tenant)
        assert plain.submit(bound).result() == "x"


def test_context_var_is_isolated_per_copied_context() -> None:
    ctx = contextvars.copy_context()

    def inside() -> str:
        with tenant_context("inner"):
            return current_tenant()

    assert ctx.run(inside) == "inner"
    assert current_tenant_or_none() is None
