"""The dashboard's query parameters, parsed strictly, and the overview's tenant listing.

Query strings come from links the dashboard made, but also from bookmarks,
hand-edited URLs and scanners. ``str.isdigit()`` accepts ``²`` and other
Unicode digits that ``int()`` refuses, and ``int()`` refuses strings of more
than 4300 digits, so a check with the one followed by the other turned odd
input into a 500. Here a parameter is either absent (the default), well formed
and in range, or the request is answered with a 400 page that says which
parameter is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tenantry.errors import TenantryError
from tenantry.queue import JobState, TenantQueueStats
from tenantry.tenancy.catalog import Tenant

#: The longest search text and job kind accepted (a job kind is at most 200 characters).
MAX_TEXT = 200

#: The throughput chart's ranges: query value -> (seconds, label). ``recent`` is
#: the sampler's own series (``samples_kept`` x ``sample_interval``).
RANGES: dict[str, tuple[float | None, str]] = {
    "recent": (None, "recent"),
    "15m": (900.0, "15 min"),
    "1h": (3600.0, "1 h"),
    "6h": (21600.0, "6 h"),
    "24h": (86400.0, "24 h"),
}


class BadQuery(TenantryError):
    """A query parameter of a dashboard page is malformed or out of range (a 400 page)."""


def int_param(params: Mapping[str, str], name: str, *, default: int, high: int) -> int:
    """A whole number from 1 to *high*; absent or empty gives *default*, anything else a 400."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(high)):
        value = int(raw)
        if 1 <= value <= high:
            return value
    raise BadQuery(f"{name} must be a whole number from 1 to {high}")


def notice_count(params: Mapping[str, str]) -> int | None:
    """The ``n`` of a notice (a job id or a count), or ``None`` when it is not a plain number.

    It only fills in a message after a redirect, so a bad value drops the
    number rather than the page.
    """
    raw = params.get("n", "")
    if raw.isascii() and raw.isdigit() and len(raw) <= 19:
        return int(raw)
    return None


def text_param(params: Mapping[str, str], name: str) -> str | None:
    """Free text (search, job kind), stripped; ``None`` when absent or blank."""
    raw = params.get(name)
    if raw is None or not raw.strip():
        return None
    if len(raw) > MAX_TEXT or any(ord(c) < 0x20 for c in raw):
        raise BadQuery(f"{name} must be at most {MAX_TEXT} printable characters")
    return raw.strip()


def choice_param(params: Mapping[str, str], name: str, choices: Sequence[str]) -> str | None:
    """One of *choices*, or ``None`` when absent or empty."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise BadQuery(f"{name} must be one of: {', '.join(choices)}")
    return raw


def state_param(params: Mapping[str, str]) -> str | None:
    """A job state filter (``state=dead``)."""
    return choice_param(params, "state", [s.value for s in JobState])


def range_param(params: Mapping[str, str]) -> str:
    """The throughput chart's range; ``recent`` by default."""
    return choice_param(params, "range", list(RANGES)) or "recent"


@dataclass(frozen=True)
class TenantListing:
    """One page of the overview's tenants: deepest queues first, then by id."""

    rows: list[tuple[Tenant, TenantQueueStats]]
    page: int
    pages: int
    matched: int
    total: int


def list_tenants(
    tenants: Sequence[Tenant],
    stats: Mapping[str, TenantQueueStats],
    *,
    search: str | None,
    page: int,
    per_page: int,
    window_seconds: float,
) -> TenantListing:
    """The tenants whose id or name contains *search* (any case), page *page* of them.

    Sorting needs every tenant's depth, which the sampler has already read for
    all of them, so the whole catalog is filtered and sorted in memory; a page
    past the last one shows the last page.
    """
    needle = search.casefold() if search else ""
    empty = TenantQueueStats("", window_seconds=window_seconds)
    rows = [
        (t, stats.get(t.id, empty))
        for t in tenants
        if not needle or needle in t.id.casefold() or needle in t.name.casefold()
    ]
    rows.sort(key=lambda r: (-sum(r[1].depth.values()), r[0].id))
    pages = max(1, math.ceil(len(rows) / per_page))
    page = min(page, pages)
    start = (page - 1) * per_page
    return TenantListing(
        rows=rows[start : start + per_page],
        page=page,
        pages=pages,
        matched=len(rows),
        total=len(tenants),
    )
