"""Logging with the tenant id attached to every record."""

from __future__ import annotations

import logging

from tenantry.tenancy.context import current_tenant_or_none


class TenantContextFilter(logging.Filter):
    """Add ``record.tenant_id`` (the current tenant, or ``-``) to each record.

    Install it on a handler so that records from any logger, including the
    application's, carry the tenant: ``handler.addFilter(TenantContextFilter())``
    and use ``%(tenant_id)s`` in the format.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "tenant_id"):
            record.tenant_id = current_tenant_or_none() or "-"
        return True


def get_logger(name: str) -> logging.Logger:
    """A tenantry logger whose records carry ``tenant_id``."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, TenantContextFilter) for f in logger.filters):
        logger.addFilter(TenantContextFilter())
    return logger


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [tenant=%(tenant_id)s] %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Send tenantry's logs to stderr with the tenant in each line (for the CLI)."""
    handler = logging.StreamHandler()
    handler.addFilter(TenantContextFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("tenantry")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
