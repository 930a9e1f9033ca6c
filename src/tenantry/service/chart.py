"""The overview's throughput chart as inline SVG, drawn on the server.

No charting library and no front-end build: the dashboard polls an HTML
fragment that contains this SVG. Only numbers computed here go into the
markup, never text from the database, so it needs no escaping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from markupsafe import Markup

from tenantry.service.monitor import Sample

WIDTH = 720
HEIGHT = 180
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 8, 12, 24
#: At most this many points on the line: the 24 h range merges 10 s buckets.
MAX_POINTS = 240


def _nice_max(value: float) -> float:
    """A round axis maximum at or above *value* (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        candidate = step * 10.0**exponent
        if candidate >= value:
            return candidate
    return 10.0 ** (exponent + 1)  # pragma: no cover - the loop always returns


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def downsample(
    samples: Sequence[Sample], *, span: float, now: datetime, points: int = MAX_POINTS
) -> list[Sample]:
    """The samples of the last *span* seconds, merged into at most *points* even slots.

    A merged sample's rate is its completions over its whole interval, so the
    line's level stays right however many samples a slot merges.
    """
    start = now - timedelta(seconds=span)
    slot = span / points
    merged: list[Sample] = []
    last_key: int | None = None
    for sample in samples:
        if sample.at <= start:
            continue
        key = min(int((sample.at - start).total_seconds() // slot), points - 1)
        if merged and key == last_key:
            merged[-1] = merged[-1].then(sample)
        else:
            merged.append(sample)
        last_key = key
    return merged


def span_label(seconds: float) -> str:
    """``last 15 min``, ``last 6 h``, ``last 40 s``: the chart's time axis."""
    if seconds >= 3600:
        return f"last {seconds / 3600:.0f} h"
    if seconds >= 120:
        return f"last {seconds / 60:.0f} min"
    return f"last {seconds:.0f} s"


def throughput_svg(samples: Sequence[Sample], *, span: float, now: datetime) -> Markup:
    """Completed jobs per second (line and area) and dead jobs (red ticks) over time.

    The time axis covers the *span* seconds up to *now*, so its scale is the
    same while the series fills up after a start, and a chart of the last day
    shows the hours the service has run where they were.
    """
    shown = downsample(samples, span=span, now=now)
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    rates = [s.throughput for s in shown]
    top = _nice_max(max(rates, default=0.0))
    start = now - timedelta(seconds=span)

    def x(i: int) -> float:
        offset = (shown[i].at - start).total_seconds() / span
        return _LEFT + plot_w * min(max(offset, 0.0), 1.0)

    def y(rate: float) -> float:
        return _TOP + plot_h * (1 - rate / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-label="throughput chart" id="throughput-chart" '
        f'data-samples="{len(shown)}" data-span="{span:.0f}">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ddd"/>',
    ]
    for frac in (0.5, 1.0):
        gy = _TOP + plot_h * (1 - frac)
        parts.append(
            f'<line x1="{_LEFT}" y1="{gy:.1f}" x2="{WIDTH - _RIGHT}" y2="{gy:.1f}" '
            'stroke="#e3e3e3"/>'
            f'<text x="{_LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#666">{_fmt(top * frac)}</text>'
        )
    parts.append(
        f'<text x="{_LEFT - 6}" y="{HEIGHT - _BOTTOM + 4}" text-anchor="end" font-size="11" '
        'fill="#666">0</text>'
    )
    parts.append(
        f'<text x="{_LEFT}" y="{HEIGHT - 6}" font-size="11" fill="#666">{span_label(span)}</text>'
        f'<text x="{WIDTH - _RIGHT}" y="{HEIGHT - 6}" text-anchor="end" font-size="11" '
        'fill="#666">now</text>'
    )
    if len(shown) >= 2:
        points = " ".join(f"{x(i):.1f},{y(r):.1f}" for i, r in enumerate(rates))
        base = _TOP + plot_h
        parts.append(
            f'<polygon points="{x(0):.1f},{base} {points} {x(len(rates) - 1):.1f},{base}" '
            'fill="#2b7bb9" fill-opacity="0.15"/>'
            f'<polyline points="{points}" fill="none" stroke="#2b7bb9" stroke-width="2"/>'
        )
    for i, s in enumerate(shown):
        if s.dead:
            parts.append(
                f'<line x1="{x(i):.1f}" y1="{_TOP + plot_h}" x2="{x(i):.1f}" '
                f'y2="{_TOP + plot_h - 10}" stroke="#c0392b" stroke-width="3"/>'
            )
    parts.append(
        f'<text x="{WIDTH - _RIGHT - 4}" y="{_TOP + 14}" text-anchor="end" font-size="12" '
        'fill="#2b7bb9">completed jobs/s</text></svg>'
    )
    return Markup("".join(parts))  # noqa: S704 - built from numbers only
