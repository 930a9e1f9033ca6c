"""The worker's buffer of claimed jobs and its adaptive prefetch."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantry.queue.worker.buffer import AdaptivePrefetch, FixedPrefetch, JobBuffer


@dataclass(frozen=True)
class _Job:
    id: int
    tenant_id: str


@dataclass(eq=False)
class _Held:
    job: _Job


def _held(n: int, tenant: str) -> _Held:
    return _Held(_Job(n, tenant))


def test_fifo_buffer_starts_in_claim_order() -> None:
    buffer: JobBuffer[_Held] = JobBuffer(fair=False)
    items = [_held(i, t) for i, t in enumerate("abacb")]
    for item in items:
        buffer.append(item)
    busy = {"a": 5}
    assert [buffer.pop_next(busy) for _ in items] == items
    assert not buffer


def test_fair_buffer_starts_the_least_active_tenant_first() -> None:
    buffer: JobBuffer[_Held] = JobBuffer(fair=True)
    a1, a2, b1, c1 = _held(1, "a"), _held(2, "a"), _held(3, "b"), _held(4, "c")
    for item in (a1, a2, b1, c1):
        buffer.append(item)
    active = {"a": 3, "b": 1}
    assert buffer.pop_next(active) is c1  # c runs nothing here
    active["c"] = 1
    assert buffer.pop_next(active) is b1  # b and c tie at 1: b's job was claimed first
    assert buffer.pop_next(active) is a1
    assert buffer.pop_next(active) is a2
    with pytest.raises(IndexError):
        buffer.pop_next(active)


def test_remove_iter_and_clear_keep_claim_order() -> None:
    buffer: JobBuffer[_Held] = JobBuffer(fair=True)
    items = [_held(i, t) for i, t in enumerate("abcab")]
    for item in items:
        buffer.append(item)
    assert items[1] in buffer
    assert buffer.remove(items[1])
    assert items[1] not in buffer
    assert not buffer.remove(items[1])
    assert not buffer.remove(_held(99, "zzz"))
    assert len(buffer) == 4
    assert list(buffer) == [items[0], items[2], items[3], items[4]]
    assert buffer.clear() == [items[0], items[2], items[3], items[4]]
    assert len(buffer) == 0


@given(st.lists(st.sampled_from("abcd"), max_size=40), st.data())
def test_fair_buffer_matches_a_scan_of_the_whole_buffer(
    tenants: list[str], data: st.DataObject
) -> None:
    """Per-tenant queues pick what a scan over every buffered job would pick."""
    buffer: JobBuffer[_Held] = JobBuffer(fair=True)
    reference: list[_Held] = []
    for i, tenant in enumerate(tenants):
        item = _held(i, tenant)
        buffer.append(item)
        reference.append(item)
    active: dict[str, int] = {}
    while reference:
        for tenant in "abcd":
            active[tenant] = data.draw(st.integers(0, 3))
        expected = min(reference, key=lambda h: active.get(h.job.tenant_id, 0))
        reference.remove(expected)
        assert buffer.pop_next(active) is expected


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["append", "append", "pop", "remove"]), st.sampled_from("abc")),
        max_size=60,
    ),
    st.booleans(),
    st.data(),
)
def test_buffer_matches_a_scan_through_appends_pops_and_removes(
    steps: list[tuple[str, str]], fair: bool, data: st.DataObject
) -> None:
    """The heap of tenants' first jobs never picks other than a scan in claim order."""
    buffer: JobBuffer[_Held] = JobBuffer(fair=fair)
    reference: list[_Held] = []  # claim order
    for n, (step, tenant) in enumerate(steps):
        if step == "append":
            item = _held(n, tenant)
            buffer.append(item)
            reference.append(item)
        elif step == "remove" and reference:
            victim = data.draw(st.sampled_from(reference))
            assert buffer.remove(victim)
            reference.remove(victim)
        elif step == "pop" and reference:
            active = {t: data.draw(st.integers(0, 2)) for t in "abc"}
            runs = active if fair else {}
            expected = min(reference, key=lambda h: runs.get(h.job.tenant_id, 0))  # first of equals
            reference.remove(expected)
            assert buffer.pop_next(active) is expected
        assert len(buffer) == len(reference)
    assert list(buffer) == reference
    assert buffer.clear() == reference


def test_adaptive_prefetch_grows_for_fast_jobs_and_stays_low_for_slow_ones() -> None:
    fast = AdaptivePrefetch(10, 200)
    slow = AdaptivePrefetch(10, 200)
    now = 0.0
    for _ in range(100):  # one second: fast jobs start 10,000/s, slow ones 10/s
        now += 0.01
        fast.started(100)
        fast.claimed(0.005)
        fast.value(now)
        slow.started(1 if int(now * 100) % 10 == 0 else 0)
        slow.claimed(0.005)
        slow.value(now)
    assert fast.value(now) == 200  # 10,000/s x 5 ms x 4 is above the maximum
    assert slow.value(now) == 10
    assert FixedPrefetch(7).value(now) == 7


def test_adaptive_prefetch_follows_the_rate_down() -> None:
    prefetch = AdaptivePrefetch(10, 1000)
    now = 0.0
    for _ in range(50):
        now += 0.05
        prefetch.started(100)  # 2,000 starts/s
        prefetch.claimed(0.01)
        prefetch.value(now)
    high = prefetch.value(now)
    assert 60 <= high <= 90  # about 2,000/s x 10 ms x 4 = 80
    for _ in range(50):
        now += 0.05
        prefetch.value(now)  # nothing starts any more
    assert prefetch.value(now) == 10
