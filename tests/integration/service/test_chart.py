"""The throughput chart's ranges: the day of rolled-up history and how it is drawn."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from tenantry.queue import JobRegistry, Queue
from tenantry.service.chart import HEIGHT, MAX_POINTS, WIDTH, downsample, throughput_svg
from tenantry.service.monitor import HISTORY_BUCKET, Monitor, Sample
from tests.conftest import TenantryFactory

NOW = datetime(2026, 12, 7, 15, 0, 0, tzinfo=UTC)


def series(count: int, *, every: float, completed: int, dead: int = 0) -> list[Sample]:
    """*count* samples *every* seconds apart, the last one at ``NOW``."""
    return [
        Sample(
            at=NOW - timedelta(seconds=every * (count - 1 - i)),
            seconds=every,
            completed=completed,
            dead=dead,
            failed=0,
            depth=i,
            running=0,
        )
        for i in range(count)
    ]


def xs(svg: str) -> list[float]:
    found = re.search(r'<polyline points="([^"]+)"', svg)
    assert found is not None
    return [float(point.split(",")[0]) for point in found.group(1).split()]


def test_a_day_of_samples_is_merged_into_a_few_hundred_points_at_the_same_rate() -> None:
    day = series(8640, every=10.0, completed=20)  # 2 jobs/s all day
    merged = downsample(day, span=86400.0, now=NOW)
    assert 100 < len(merged) <= MAX_POINTS
    assert {s.throughput for s in merged} == {2.0}
    assert sum(s.completed for s in merged) == sum(s.completed for s in day)
    assert merged[-1].depth == day[-1].depth  # the depth at the end of each slot


def test_points_sit_where_their_time_is_on_the_axis() -> None:
    ten_minutes = series(60, every=10.0, completed=5, dead=1)
    svg = str(throughput_svg(ten_minutes, span=86400.0, now=NOW))
    assert 'data-span="86400"' in svg
    assert ">last 24 h<" in svg
    left, right = 48, WIDTH - 8
    positions = xs(svg)
    assert max(positions) == right
    assert min(positions) > right - (right - left) * 700 / 86400  # the last ten minutes only
    assert svg.count('stroke="#c0392b"') >= 1  # dead jobs are marked
    assert f'viewBox="0 0 {WIDTH} {HEIGHT}"' in svg

    recent = str(throughput_svg(ten_minutes, span=600.0, now=NOW))
    spread = xs(recent)
    assert min(spread) < left + 20  # the same samples fill a ten-minute chart
    assert ">last 10 min<" in recent


def test_older_samples_than_the_range_are_left_out() -> None:
    old = series(10, every=10.0, completed=3)
    svg = str(throughput_svg(old, span=900.0, now=NOW + timedelta(hours=1)))
    assert 'data-samples="0"' in svg
    assert "<polyline" not in svg


def test_the_monitor_rolls_samples_up_into_buckets(make_tenantry: TenantryFactory) -> None:
    queue = Queue(make_tenantry("sqlite"), JobRegistry())
    monitor = Monitor(queue.admin, interval=2.0, keep=5, window=60.0)
    start = datetime(2026, 12, 7, 15, 0, 0, tzinfo=UTC)  # a bucket boundary
    samples = [
        Sample(
            at=start + timedelta(seconds=2 * (i + 1)),
            seconds=2.0,
            completed=i,
            dead=0,
            failed=1,
            depth=i,
            running=0,
        )
        for i in range(12)  # 24 s: buckets [0, 10), [10, 20), [20, 30)
    ]
    for sample in samples:
        monitor._roll_up(sample)
    buckets = list(monitor.history)
    assert [b.completed for b in buckets] == [0 + 1 + 2 + 3, 4 + 5 + 6 + 7 + 8, 9 + 10 + 11]
    assert [b.seconds for b in buckets] == [8.0, 10.0, 6.0]
    assert [b.depth for b in buckets] == [3, 8, 11]
    assert monitor.history.maxlen is not None
    assert monitor.history.maxlen * HISTORY_BUCKET >= 86400  # a whole day fits
