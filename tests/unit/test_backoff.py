"""The one back-off schedule of the worker's retry loops."""

from __future__ import annotations

import pytest

from tenantry.backoff import ExponentialBackoff


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_from_the_base_up_to_the_cap() -> None:
    backoff = ExponentialBackoff(0.2, 30.0)
    assert [backoff.delay(n) for n in range(4)] == pytest.approx([0.2, 0.4, 0.8, 1.6])
    assert backoff.delay(8) == 30.0
    assert backoff.delay(10_000) == 30.0  # no overflow however long it failed


def test_each_key_keeps_its_own_count_and_deadline() -> None:
    clock = _Clock()
    backoff = ExponentialBackoff(0.2, 30.0, clock=clock)
    assert backoff.ready("a")
    assert backoff.failed("a") == pytest.approx(0.2)
    assert backoff.failed("a") == pytest.approx(0.4)
    assert not backoff.ready("a")
    assert backoff.ready("b")  # one store that is away does not hold back another
    assert backoff.failures("a") == 2
    clock.now += 0.4
    assert backoff.ready("a")


def test_success_starts_the_schedule_over_and_says_whether_it_had_failed() -> None:
    backoff = ExponentialBackoff(0.5, 30.0)
    assert backoff.ok("a") is False
    backoff.failed("a")
    backoff.failed("a")
    assert backoff.ok("a") is True
    assert backoff.failures("a") == 0
    assert backoff.failed("a") == pytest.approx(0.5)


def test_jitter_spreads_delays_within_its_fraction() -> None:
    backoff = ExponentialBackoff(1.0, 8.0, jitter=0.25)
    delays = [backoff.delay(2) for _ in range(200)]
    assert all(3.0 <= d <= 5.0 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("base", "cap", "jitter"), [(0.0, 1.0, 0.0), (2.0, 1.0, 0.0), (1.0, 2.0, 1.0)]
)
def test_nonsense_settings_are_refused(base: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match=r"base|jitter"):
        ExponentialBackoff(base, cap, jitter=jitter)
