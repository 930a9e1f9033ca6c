"""The :class:`Tenantry` object: the one composition root of a tenantry application.

It is tenancy (:class:`~tenantry.tenancy.facade.Tenancy`: stores, catalog,
tenant lifecycle and sessions) with the job queue wired in through its hooks,
and the tenant and global migration histories of the configuration. It is
the only module that sees both tenancy and the queue; one per application
process, built from a :class:`~tenantry.tenancy.config.TenantryConfig` and
the application's table metadata.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from sqlalchemy import MetaData

from tenantry.lifecycle.migrations.history import (
    GLOBAL_VERSION_TABLE,
    TENANT_VERSION_TABLE,
    History,
)
from tenantry.queue.hooks import QueueHooks
from tenantry.tenancy.config import TenantryConfig
from tenantry.tenancy.facade import Placement, Tenancy, import_object


class Tenantry(Tenancy):
    """Stores, catalog, tenant-bound sessions and the job queue beside them."""

    def __init__(
        self,
        config: TenantryConfig | None = None,
        *,
        tenant_metadata: MetaData | Any | None = None,
        global_metadata: MetaData | Any | None = None,
    ) -> None:
        super().__init__(
            config,
            tenant_metadata=tenant_metadata,
            global_metadata=global_metadata,
            hooks=QueueHooks(),
        )

    @cached_property
    def tenant_history(self) -> History | None:
        """The Alembic history of tenant tables (``[tenantry] tenant_migrations``), if any."""
        path = self.config.tenant_migrations
        return None if path is None else History("tenant", path, TENANT_VERSION_TABLE)

    @cached_property
    def global_history(self) -> History | None:
        """The Alembic history of global tables (``[tenantry] global_migrations``), if any."""
        path = self.config.global_migrations
        return None if path is None else History("global", path, GLOBAL_VERSION_TABLE)


__all__ = ["Placement", "Tenantry", "import_object"]
