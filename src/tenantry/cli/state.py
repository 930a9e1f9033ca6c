"""What the global options chose, shared by every command through ``click``'s context.

Apart from :mod:`tenantry.cli.main` so that the command modules can name it
without importing the root group that registers them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantry.errors import InvariantError, TenantryError
from tenantry.tenancy.config import TenantryConfig, load_config, mask_url
from tenantry.tenantry import Tenantry, import_object


@dataclass
class CliState:
    """What the global options chose; the Tenantry is built on first use, once.

    Building lazily keeps ``--help`` and ``init`` working without a readable
    configuration, and ``target_store`` lets a connection error name the store
    the command was actually talking to.
    """

    config_path: Path | None = None
    models: str | None = None
    target_store: str | None = None
    _config: TenantryConfig | None = field(default=None, repr=False)
    _tenantry: Tenantry | None = field(default=None, repr=False)

    def config(self) -> TenantryConfig:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def use_config(self, config: TenantryConfig) -> None:
        if self._tenantry is not None:
            raise InvariantError("the configuration cannot change after Tenantry was built")
        self._config = config

    def tenantry(self, *, tenant_metadata: Any = None) -> Tenantry:
        if self._tenantry is None:
            config = self.config()
            if self.models or config.tenant_metadata or config.global_metadata:
                import_from_cwd()
            if tenant_metadata is None and self.models:
                tenant_metadata = import_object(self.models)
            self._tenantry = Tenantry(config, tenant_metadata=tenant_metadata)
        return self._tenantry

    def close(self) -> None:
        if self._tenantry is not None:
            self._tenantry.close()
            self._tenantry = None

    # -- error reporting -------------------------------------------------------
    def describe_store(self) -> str:
        if self._config is None:
            return "(configuration not loaded)"
        name = self.target_store or self._config.catalog_store_name
        store = self._config.stores.get(name)
        return f"{name!r}" if store is None else f"{name!r} at {store.masked_url}"

    def scrub(self, text: str) -> str:
        """Remove the stores' real (expanded) passwords, then mask URL-shaped text."""
        if self._config is not None:
            for store in self._config.stores.values():
                for admin in (False, True):
                    try:
                        password = store.parsed_url(admin=admin).password
                    except TenantryError:
                        continue  # ${VAR} not set: there is no secret to leak
                    if password:
                        text = text.replace(str(password), "***")
        return mask_url(text)


def import_from_cwd() -> None:
    """Let ``module:attr`` references name modules of the project being run in.

    A console script's ``sys.path`` starts with its own bin directory, not the
    working directory, so ``myapp.models:Base`` would not import otherwise.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
