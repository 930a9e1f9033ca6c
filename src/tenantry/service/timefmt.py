"""Timestamps and durations as the dashboard shows them.

Every timestamp on every page has one form, UTC with a ``Z``
(``2026-12-07 15:04:05Z``), so an operator comparing a job's times with a log
line never has to guess the zone. The exact value is what the page prints; how
long ago it was goes in a hover title of a ``<time>`` element, whose
``datetime`` attribute carries the ISO form for tools and screen readers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from markupsafe import Markup, escape

FORMAT = "%Y-%m-%d %H:%M:%SZ"


def as_utc(value: datetime) -> datetime:
    """*value* in UTC; a naive value is taken to be UTC already (as SQLite returns it)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def age(seconds: float | None) -> str:
    """A short duration (``4.2s``, ``3m``, ``1.5h``, ``2.0d``), ``-`` for none."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def relative(value: datetime, now: datetime) -> str:
    """How far *value* is from *now* in words: ``3 min ago``, ``in 2 h``, ``just now``."""
    seconds = (as_utc(now) - as_utc(value)).total_seconds()
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    if seconds < 60:
        amount = f"{seconds:.0f} s"
    elif seconds < 3600:
        amount = f"{seconds // 60:.0f} min"
    elif seconds < 86400:
        amount = f"{seconds // 3600:.0f} h"
    else:
        amount = f"{seconds // 86400:.0f} d"
    return f"in {amount}" if ahead else f"{amount} ago"


def parse(value: object) -> datetime | None:
    """A datetime from a datetime or an ISO string (as job errors store it), else ``None``."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def when(value: object, now: datetime | None = None) -> Markup | str:
    """``<time>`` markup for a timestamp: the UTC value, and how long ago on hover.

    A string that is not a timestamp is shown as it is (escaped); nothing
    becomes ``-``.
    """
    found = parse(value)
    if found is None:
        return "-" if value is None or value == "" else escape(str(value))
    utc = as_utc(found)
    hover = relative(utc, now if now is not None else datetime.now(UTC))
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        utc.isoformat().replace("+00:00", "Z"), hover, utc.strftime(FORMAT)
    )
