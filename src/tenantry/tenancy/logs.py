"""Logging with the tenant (and, inside a job, the job) attached to every record.

tenantry logs through the standard :mod:`logging` module under the ``tenantry``
logger and never configures logging itself: it adds no handler and leaves
``propagate`` alone, so its records reach whatever the application set up.
Only the ``tenantry`` command calls :func:`configure_logging`.

Two things make the records useful in a multi-tenant process:

- :class:`TenantContextFilter` puts the current tenant on each record as
  ``tenant_id``, and with it the fields of any enclosing :func:`log_fields`
  block (the worker binds ``job_id`` and ``kind`` around each job).
- :class:`JsonFormatter` writes one JSON object per line, for log pipelines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from tenantry.tenancy.context import current_tenant_or_none

_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})

_fields: ContextVar[Mapping[str, Any]] = ContextVar("tenantry_log_fields", default=_NO_FIELDS)


class log_fields:  # lower case: used like a function, ``with log_fields(job_id=1):``
    """Add *fields* to every record logged inside the block (sync or async).

    The fields live in a ContextVar, so they follow the logical flow of work
    like the tenant does: asyncio tasks started inside the block and threads
    started with :func:`~tenantry.tenancy.context.bind_context` carry them.
    Blocks nest; an inner field of the same name wins until the inner block
    ends. :class:`TenantContextFilter` copies them onto records, and a field
    passed with ``extra=`` on one call wins over the block's.

    It costs one ContextVar set and reset per block and nothing per record
    that is not emitted, which is why the worker can wrap every job in one.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: Any) -> None:
        self._fields = fields
        self._token: Token[Mapping[str, Any]] | None = None

    def __enter__(self) -> None:
        outer = _fields.get()
        # kwargs is already a fresh dict: merged only when an outer block exists.
        self._token = _fields.set({**outer, **self._fields} if outer else self._fields)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _fields.reset(self._token)
            self._token = None

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def current_log_fields() -> Mapping[str, Any]:
    """The fields of the enclosing :func:`log_fields` blocks (read-only; empty outside)."""
    return MappingProxyType(dict(_fields.get()))


class TenantContextFilter(logging.Filter):
    """Add ``record.tenant_id`` (the current tenant, or ``-``) and the log fields to each record.

    Install it on a handler so that records from any logger, including the
    application's, carry the tenant: ``handler.addFilter(TenantContextFilter())``
    and use ``%(tenant_id)s`` in the format. The fields of an enclosing
    :func:`log_fields` block (inside a job: ``job_id`` and ``kind``) become
    record attributes too, unless the call passed its own with ``extra=``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        attrs = record.__dict__
        if "tenant_id" not in attrs:
            record.tenant_id = current_tenant_or_none() or "-"
        fields = _fields.get()
        if fields:
            for name, value in fields.items():
                attrs.setdefault(name, value)
        return True


def get_logger(name: str) -> logging.Logger:
    """A tenantry logger whose records carry ``tenant_id`` and the log fields."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, TenantContextFilter) for f in logger.filters):
        logger.addFilter(TenantContextFilter())
    return logger


#: What a record holds before anything is added: everything else is an extra field.
_RECORD_ATTRS = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines (standard library only).

    Keys, always present: ``time`` (UTC, ISO-8601 with milliseconds),
    ``level``, ``logger``, ``message``, ``tenant_id``, ``job_id`` and ``kind``
    (``null`` outside a tenant or a job); ``exc`` (the formatted traceback) and
    ``stack`` when the record has them; then every extra field, from
    ``extra=`` or an enclosing :func:`log_fields` block. Values JSON cannot
    hold are written with ``str()``.

    It reads the tenant and the log fields from the record when
    :class:`TenantContextFilter` put them there, else from the current context,
    so it works on a handler of its own::

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.getLogger().addHandler(handler)

    When records are handed to another thread first (``QueueHandler``), put
    :class:`TenantContextFilter` on the handler that receives them, where the
    context is still the caller's.
    """

    def format(self, record: logging.LogRecord) -> str:
        attrs = record.__dict__
        tenant = attrs.get("tenant_id")
        if tenant is None:
            tenant = current_tenant_or_none()
        fields = _fields.get()
        entry: dict[str, Any] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "tenant_id": None if tenant == "-" else tenant,
            "job_id": attrs.get("job_id", fields.get("job_id")),
            "kind": attrs.get("kind", fields.get("kind")),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for name, value in attrs.items():
            if name not in _RECORD_ATTRS:
                entry.setdefault(name, value)
        for name, value in fields.items():
            entry.setdefault(name, value)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _utc_iso(created: float) -> str:
    stamp = datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [tenant=%(tenant_id)s] %(message)s"

#: The ``--log-format`` choices of the ``tenantry`` command.
LogFormat = Literal["text", "json"]


def configure_logging(level: int = logging.INFO, log_format: LogFormat = "text") -> None:
    """Send tenantry's logs to stderr, one line each with the tenant (for the CLI).

    This is for the ``tenantry`` command only, which owns its process: it
    replaces the ``tenantry`` logger's handlers and stops propagation so no
    line is printed twice. An application configures logging itself and puts
    :class:`TenantContextFilter` or :class:`JsonFormatter` on its own handlers.
    """
    handler = logging.StreamHandler()
    handler.addFilter(TenantContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("tenantry")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
