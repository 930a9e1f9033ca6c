"""Configuration: named stores from ``tenantry.toml`` and the environment.

Precedence (highest first): explicit arguments, ``TENANTRY_DATABASE_URL`` (the
one-store case), the TOML file (``TENANTRY_CONFIG`` or ``./tenantry.toml``), and
finally the embedded default, a SQLite file under ``./tenantry-data``.

Store URLs may reference environment variables as ``${NAME}``. They are kept
unexpanded in this object and expanded only when an engine is built, so a
password never lands in the catalog, a log line or an error message.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from tenantry.errors import ConfigError, InvalidIdentifierError, StoreNotFoundError
from tenantry.tenancy.ids import validate_identifier

DEFAULT_STORE = "default"
DEFAULT_DATA_DIR = "./tenantry-data"
CONFIG_FILE_NAME = "tenantry.toml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_STORE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)([^@]*)(@)")


def expand_env(template: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${NAME}`` with the environment's value; a missing one is an error."""
    env = os.environ if environ is None else environ

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"environment variable {name} (used in a store URL) is not set")
        return env[name]

    return _ENV_REF.sub(sub, template)


def mask_url(url: str | URL) -> str:
    """A URL safe to show: the password (literal or ``${...}``) becomes ``***``."""
    text = url.render_as_string(hide_password=True) if isinstance(url, URL) else str(url)
    return _PASSWORD_IN_URL.sub(lambda m: m.group(1) + "***" + m.group(3), text)


@dataclass(frozen=True)
class StoreConfig:
    """A named place tenants are put on: one database server or SQLite location.

    ``url`` is what sessions connect with. ``admin_url`` (default: ``url``) is
    used for DDL and provisioning; on PostgreSQL give the application a role
    that does not own the tables. ``rls_role`` is the non-owner role tenantry
    switches to (``SET LOCAL ROLE``) in shared-mode transactions so row-level
    security applies even when ``url`` logs in as the owner; set it to ``""``
    when ``url`` already is such a role.
    """

    name: str
    url: str
    admin_url: str | None = None
    rls_role: str = "tenantry_rls"
    max_tenant_engines: int = 16
    pool_size: int = 5
    database_prefix: str | None = None

    def __post_init__(self) -> None:
        if not _STORE_NAME.fullmatch(self.name):
            raise ConfigError(f"invalid store name {self.name!r}: use a-z, 0-9 and _")
        try:
            if self.rls_role:
                validate_identifier(self.rls_role, "rls_role")
            if self.database_prefix is not None:
                validate_identifier(self.database_prefix, "database_prefix")
        except InvalidIdentifierError as exc:
            raise ConfigError(f"store {self.name!r}: {exc}") from exc
        if self.database_prefix is not None and len(self.database_prefix) > 23:
            raise ConfigError("database_prefix is at most 23 characters (63 - tenant id)")
        if self.max_tenant_engines < 1:
            raise ConfigError("max_tenant_engines must be at least 1")
        self.parsed_url(expand=False)  # fail early on malformed URLs, secrets unexpanded

    def parsed_url(self, *, admin: bool = False, expand: bool = True) -> URL:
        raw = (self.admin_url or self.url) if admin else self.url
        try:
            return make_url(expand_env(raw) if expand else _ENV_REF.sub("x", raw))
        except ArgumentError as exc:
            raise ConfigError(f"store {self.name!r}: malformed URL {mask_url(raw)}") from exc

    def __repr__(self) -> str:
        admin = f", admin_url={mask_url(self.admin_url)!r}" if self.admin_url else ""
        return f"StoreConfig(name={self.name!r}, url={self.masked_url!r}{admin})"

    @property
    def dialect(self) -> str:
        return self.parsed_url(expand=False).get_backend_name()

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)


@dataclass(frozen=True)
class TenantryConfig:
    stores: dict[str, StoreConfig]
    default_store: str = DEFAULT_STORE
    catalog_store: str | None = None
    data_dir: str = DEFAULT_DATA_DIR
    tenant_metadata: str | None = None
    global_metadata: str | None = None
    #: Alembic script directories of the two histories (tenant tables, global tables).
    tenant_migrations: str | None = None
    global_migrations: str | None = None
    catalog_cache_ttl: float = 5.0
    source: str = "default"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stores:
            raise ConfigError("at least one store must be configured")
        for name in (self.default_store, self.catalog_store_name):
            if name not in self.stores:
                raise StoreNotFoundError(f"store {name!r} is not configured")

    @property
    def catalog_store_name(self) -> str:
        return self.catalog_store or self.default_store

    def store(self, name: str) -> StoreConfig:
        try:
            return self.stores[name]
        except KeyError:
            known = ", ".join(sorted(self.stores))
            raise StoreNotFoundError(f"no store named {name!r} (configured: {known})") from None

    @classmethod
    def single(cls, url: str, **store_options: Any) -> TenantryConfig:
        """One store named ``default`` at *url*."""
        return cls(stores={DEFAULT_STORE: StoreConfig(DEFAULT_STORE, url, **store_options)})

    @classmethod
    def sqlite_default(cls, data_dir: str = DEFAULT_DATA_DIR) -> TenantryConfig:
        url = f"sqlite:///{Path(data_dir) / 'default.db'}"
        return cls(
            stores={DEFAULT_STORE: StoreConfig(DEFAULT_STORE, url)},
            data_dir=data_dir,
            source="embedded default",
        )


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> TenantryConfig:
    """Load the configuration following the documented precedence."""
    env = os.environ if environ is None else environ
    file = Path(path) if path is not None else Path(env.get("TENANTRY_CONFIG", CONFIG_FILE_NAME))
    if path is not None and not file.exists():
        raise ConfigError(f"config file {file} does not exist")
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
    env_url = env.get("TENANTRY_DATABASE_URL")
    if env_url:
        section = data.get("tenantry", {})
        stores_data = dict(data.get("stores", {}))
        name = section.get("default_store", DEFAULT_STORE)
        # Only the URL is overridden: admin_url, rls_role, pool sizes stay as configured.
        stores_data[name] = {**stores_data.get(name, {}), "url": env_url}
        data = {**data, "stores": stores_data}
    if not data:
        return TenantryConfig.sqlite_default(env.get("TENANTRY_DATA_DIR", DEFAULT_DATA_DIR))
    return config_from_dict(data, source=str(file) if file.exists() else "environment")


_STORE_KEYS = {"url", "admin_url", "rls_role", "max_tenant_engines", "pool_size", "database_prefix"}
_TOP_KEYS = {
    "default_store",
    "catalog_store",
    "data_dir",
    "tenant_metadata",
    "global_metadata",
    "tenant_migrations",
    "global_migrations",
    "catalog_cache_ttl",
}


def config_from_dict(data: Mapping[str, Any], source: str = "dict") -> TenantryConfig:
    section = dict(data.get("tenantry", {}))
    unknown = set(section) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown [tenantry] keys: {', '.join(sorted(unknown))}")
    raw_stores = data.get("stores", {})
    if not isinstance(raw_stores, Mapping):
        raise ConfigError(f"{source}: [stores] must be a table")
    stores: dict[str, StoreConfig] = {}
    for name, options in raw_stores.items():
        if not isinstance(options, Mapping) or "url" not in options:
            raise ConfigError(f"{source}: store {name!r} needs a url")
        bad = set(options) - _STORE_KEYS
        if bad:
            raise ConfigError(f"{source}: store {name!r}: unknown keys {', '.join(sorted(bad))}")
        stores[name] = StoreConfig(name=name, **options)
    if not stores:
        data_dir = section.get("data_dir", DEFAULT_DATA_DIR)
        stores[DEFAULT_STORE] = StoreConfig(
            DEFAULT_STORE, f"sqlite:///{Path(data_dir) / 'default.db'}"
        )
    default = section.pop("default_store", next(iter(stores)))
    return TenantryConfig(stores=stores, default_store=default, source=source, **section)
