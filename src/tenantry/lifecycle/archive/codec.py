"""Values written by type, not by the database's text form.

So that they come back the same on another database: datetimes, dates,
times and intervals as ISO strings, decimals as strings, bytes as base64,
JSON column values and non-finite floats tagged (``{"$dt": "..."}``,
``{"$dec": "..."}``, ...).
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from tenantry.errors import ExportCorruptError, ExportError


def encode(value: Any) -> Any:
    """A JSON-safe form of *value* that :func:`decode` turns back into the same value."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, time):
        return {"$time": value.isoformat()}
    if isinstance(value, timedelta):
        return {"$td": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, Enum):
        return {"$enum": value.name}
    if isinstance(value, dict | list):
        return {"$json": value}
    raise ExportError(f"cannot export a value of type {type(value).__name__}")


_DECODERS: dict[str, Any] = {
    "$float": float,
    "$dt": datetime.fromisoformat,
    "$date": date.fromisoformat,
    "$time": time.fromisoformat,
    "$td": lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "$dec": Decimal,
    "$b64": base64.b64decode,
    "$uuid": uuid.UUID,
    "$enum": str,  # SQLAlchemy's Enum type accepts the member's name
    "$json": lambda v: v,
}


def decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ExportCorruptError(f"unexpected value in export: {str(value)[:80]}")
    ((tag, raw),) = value.items()
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise ExportCorruptError(f"unknown value tag {tag!r} in export")
    try:
        return decoder(raw)
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ExportCorruptError(f"bad {tag} value in export: {str(raw)[:80]}") from exc


#: One encoder for every line: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_line(row: Sequence[Any]) -> bytes:
    return (_ENCODER.encode([encode(v) for v in row]) + "\n").encode()
