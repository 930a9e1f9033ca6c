"""The overview's throughput chart as inline SVG, drawn on the server.

No charting library and no front-end build: the dashboard polls an HTML
fragment that contains this SVG. Only numbers computed here go into the
markup, never text from the database, so it needs no escaping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup

from tenantry.service.monitor import Sample

WIDTH = 720
HEIGHT = 180
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 8, 12, 24


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


def throughput_svg(samples: Sequence[Sample], *, capacity: int) -> Markup:
    """Completed jobs per second (line and area) and dead jobs (red ticks) over time.

    *capacity* is how many samples the chart has room for, so the time axis
    keeps its scale while the series fills up after a start.
    """
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    rates = [s.throughput for s in samples]
    top = _nice_max(max(rates, default=0.0))
    slots = max(capacity - 1, 1)
    first_slot = capacity - len(samples)

    def x(i: int) -> float:
        return _LEFT + plot_w * (first_slot + i) / slots

    def y(rate: float) -> float:
        return _TOP + plot_h * (1 - rate / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-label="throughput chart" id="throughput-chart" '
        f'data-samples="{len(samples)}">',
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
    if samples:
        span = sum(s.seconds for s in samples)
        label = f"last {span / 60:.0f} min" if span >= 120 else f"last {span:.0f} s"
        parts.append(
            f'<text x="{_LEFT}" y="{HEIGHT - 6}" font-size="11" fill="#666">{label}</text>'
            f'<text x="{WIDTH - _RIGHT}" y="{HEIGHT - 6}" text-anchor="end" font-size="11" '
            'fill="#666">now</text>'
        )
    if len(samples) >= 2:
        points = " ".join(f"{x(i):.1f},{y(r):.1f}" for i, r in enumerate(rates))
        base = _TOP + plot_h
        parts.append(
            f'<polygon points="{x(0):.1f},{base} {points} {x(len(rates) - 1):.1f},{base}" '
            'fill="#2b7bb9" fill-opacity="0.15"/>'
            f'<polyline points="{points}" fill="none" stroke="#2b7bb9" stroke-width="2"/>'
        )
    for i, s in enumerate(samples):
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
