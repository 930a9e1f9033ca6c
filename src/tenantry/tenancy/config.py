"""Configuration: named stores from ``tenantry.toml`` and the environment.

Precedence (highest first): explicit arguments, ``TENANTRY_DATABASE_URL`` (the
one-store case), the TOML file (``TENANTRY_CONFIG`` or ``./tenantry.toml``), and
finally the embedded default, a SQLite file under ``./tenantry-data``
(``TENANTRY_DATA_DIR`` moves it).

``StoreConfig`` and ``TenantryConfig`` are frozen pydantic dataclasses: every
value is checked when the configuration is built, so a typo fails at start-up
with one line naming the file, the key, the value and what was expected
(``tenantry.toml: stores.main.pool_size = 'abc': expected an integer``), not
later with a traceback from deep inside an engine. The messages are built in
:mod:`tenantry.tenancy.config_errors`.

Store URLs may reference environment variables as ``${NAME}``. They are kept
unexpanded in this object and expanded only when an engine is built, so a
password never lands in the catalog, a log line or an error message.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from tenantry.errors import ConfigError, StoreNotFoundError
from tenantry.tenancy.config_errors import (
    FROZEN_FORBID,
    STORE_KEYS,
    TOP_KEYS,
    config_error,
    raising_config_error,
)
from tenantry.tenancy.ids import validate_identifier
from tenantry.tenancy.urls import check_dialect, expand_env, mask_url, parse_url

DEFAULT_STORE = "default"
DEFAULT_DATA_DIR = "./tenantry-data"
CONFIG_FILE_NAME = "tenantry.toml"
EMBEDDED_DEFAULT = "embedded default"
_STORE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: ``pooler``: nothing between tenantry and PostgreSQL, or a transaction-mode pooler.
POOLER_NONE = "none"
POOLER_TRANSACTION = "transaction"
POOLERS = frozenset({POOLER_NONE, POOLER_TRANSACTION})

#: A TOML string; pydantic's lax mode would take other things for one.
Text = Annotated[str, Strict()]
#: A count: "abc", 2.5 and true are not integers.
Count = Annotated[int, Strict(), Field(ge=1)]
#: Seconds: a TOML integer is fine, "soon" is not.
Seconds = Annotated[float, Strict(), Field(ge=0)]


@raising_config_error
@dataclass(frozen=True, config=FROZEN_FORBID)
class StoreConfig:
    """A named place tenants are put on: one database server or SQLite location.

    ``admin_url`` (default: ``url``) is used for DDL, provisioning, the catalog
    and the queue's workers. On PostgreSQL tenant sessions never run as that
    login: with ``admin_url`` set they use ``url``, which must own nothing and
    bypass nothing; with ``url`` alone tenantry creates a session login named
    ``<rls_role>_<database>`` and sessions use it. With ``admin_url``,
    ``rls_role`` names a role that holds the grants (``""``: grant ``url``'s
    login directly).

    ``pooler`` says what sits between tenantry and PostgreSQL: ``"none"`` (the
    default) or ``"transaction"``, a transaction-mode pooler such as PgBouncer.
    Such a pooler gives each transaction whichever server connection is free,
    so nothing may outlive a transaction on a connection: with
    ``"transaction"`` psycopg never prepares statements (their names would
    collide across server connections, and a prepared plan could run for
    another tenant), the queue's claim settings are set per transaction
    instead of as startup ``options`` (which PgBouncer refuses), and workers
    poll instead of LISTENing (notifications would reach a connection nobody
    listens on).
    """

    name: Text
    url: Text
    admin_url: Text | None = None
    rls_role: Text = "tenantry_rls"
    max_tenant_engines: Count = 16
    pool_size: Count = 5
    database_prefix: Text | None = None
    pooler: Text = POOLER_NONE

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _STORE_NAME.fullmatch(value):
            raise ValueError(
                f"invalid store name {value!r}: use a-z, 0-9 and _, "
                "starting with a letter, at most 40 characters"
            )
        return value

    @field_validator("url", "admin_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:  # secrets unexpanded: only the shape is checked here
            url = parse_url(value, expand=False)
        except (ArgumentError, ValueError):
            raise ValueError(
                "malformed URL: expected e.g. postgresql+psycopg://user@host:5432/db "
                "or sqlite:///path/to/file.db"
            ) from None
        check_dialect(url)
        if "prepare_threshold" in url.query:
            # SQLAlchemy hands URL query values to psycopg as text, which psycopg
            # compares with a count: the setting would break every statement.
            raise ValueError(
                "prepare_threshold in the URL reaches psycopg as text and breaks it: "
                'remove it (behind PgBouncer, set pooler = "transaction" to turn '
                "prepared statements off)"
            )
        return value

    @field_validator("pooler")
    @classmethod
    def _check_pooler(cls, value: str, info: ValidationInfo) -> str:
        if value not in POOLERS:
            raise ValueError('expected "none" or "transaction" (a transaction-mode PgBouncer)')
        url = info.data.get("url")
        if value != POOLER_NONE and isinstance(url, str):
            dialect = parse_url(url, expand=False).get_backend_name()
            if dialect != "postgresql":
                raise ValueError(
                    f"a pooler applies to PostgreSQL stores only (this one is {dialect})"
                )
        return value

    @field_validator("rls_role")
    @classmethod
    def _check_role(cls, value: str) -> str:
        return validate_identifier(value, "rls_role") if value else value

    @field_validator("database_prefix")
    @classmethod
    def _check_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        validate_identifier(value, "database_prefix")
        if len(value) > 23:
            raise ValueError(
                "expected at most 23 characters (a tenant id of up to 40 follows it, "
                "and PostgreSQL names stop at 63)"
            )
        return value

    def parsed_url(self, *, admin: bool = False, expand: bool = True) -> URL:
        """``url`` (or ``admin_url``) parsed; *expand*: with secrets, for an engine only."""
        raw = (self.admin_url or self.url) if admin else self.url
        try:
            return parse_url(raw, expand=expand)
        except (ArgumentError, ValueError):
            raise ConfigError(f"store {self.name!r}: malformed URL {mask_url(raw)}") from None

    def __repr__(self) -> str:
        admin = f", admin_url={mask_url(self.admin_url)!r}" if self.admin_url else ""
        return f"StoreConfig(name={self.name!r}, url={self.masked_url!r}{admin})"

    @property
    def dialect(self) -> str:
        return self.parsed_url(expand=False).get_backend_name()

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def transaction_pooled(self) -> bool:
        """Whether a transaction-mode pooler sits in front of the server (``pooler``)."""
        return self.pooler == POOLER_TRANSACTION


@raising_config_error
@dataclass(frozen=True, config=FROZEN_FORBID)
class TenantryConfig:
    """Every store, which one holds the catalog, and the application's metadata and histories."""

    stores: dict[str, StoreConfig]
    default_store: Text = DEFAULT_STORE
    catalog_store: Text | None = None
    data_dir: Text = DEFAULT_DATA_DIR
    tenant_metadata: Text | None = None
    global_metadata: Text | None = None
    #: Alembic script directories of the two histories (tenant tables, global tables).
    tenant_migrations: Text | None = None
    global_migrations: Text | None = None
    catalog_cache_ttl: Seconds = 5.0
    source: str = "default"
    extra: dict[str, Any] = field(default_factory=dict)

    @model_validator(mode="after")
    def _check_stores(self) -> TenantryConfig:
        if not self.stores:
            raise PydanticCustomError("no_store", "at least one store must be configured")
        for key, store in self.stores.items():
            if key != store.name:
                raise PydanticCustomError(
                    "store_key", f"stores.{key} holds the store named {store.name!r}"
                )
        named = (("default_store", self.default_store), ("catalog_store", self.catalog_store))
        for what, name in named:
            if name is not None and name not in self.stores:
                known = ", ".join(sorted(self.stores))
                raise PydanticCustomError(
                    "store_not_found",
                    "no such store (configured: {known})",
                    {"key": what, "value": name, "known": known},
                )
        return self

    @property
    def catalog_store_name(self) -> str:
        return self.catalog_store or self.default_store

    def store(self, name: str) -> StoreConfig:
        try:
            return self.stores[name]
        except KeyError:
            known = ", ".join(sorted(self.stores))
            raise StoreNotFoundError(f"no store named {name!r} (configured: {known})") from None

    def data_location_notice(self) -> str | None:
        """One line saying where the embedded default keeps data, or None for a configured store."""
        if self.source != EMBEDDED_DEFAULT:
            return None
        where = Path(self.data_dir).resolve()
        return (
            f"no tenantry.toml or TENANTRY_DATABASE_URL: using the embedded default, SQLite "
            f"under {where} (write a tenantry.toml, e.g. with `tenantry init`, set "
            "TENANTRY_DATABASE_URL, or set TENANTRY_DATA_DIR to keep the data elsewhere)"
        )

    @classmethod
    def single(cls, url: str, **store_options: Any) -> TenantryConfig:
        """One store named ``default`` at *url*."""
        return cls(stores={DEFAULT_STORE: StoreConfig(DEFAULT_STORE, url, **store_options)})

    @classmethod
    def sqlite_default(cls, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR) -> TenantryConfig:
        """The embedded default: one SQLite store in *data_dir*."""
        url = f"sqlite:///{Path(data_dir) / 'default.db'}"
        return cls(
            stores={DEFAULT_STORE: StoreConfig(DEFAULT_STORE, url)},
            data_dir=os.fspath(data_dir),
            source=EMBEDDED_DEFAULT,
        )


class TenantryEnvironment(BaseSettings):
    """The ``TENANTRY_*`` environment variables the configuration reads."""

    model_config = SettingsConfigDict(
        case_sensitive=True, env_ignore_empty=True, extra="ignore", frozen=True
    )

    #: The TOML file (default ``./tenantry.toml``).
    config: str | None = Field(default=None, validation_alias=AliasChoices("TENANTRY_CONFIG"))
    #: The default store's URL; beats the file's.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("TENANTRY_DATABASE_URL")
    )
    #: Where the embedded default keeps its SQLite files.
    data_dir: str = Field(
        default=DEFAULT_DATA_DIR, validation_alias=AliasChoices("TENANTRY_DATA_DIR")
    )

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> TenantryEnvironment:
        """From the process environment (pydantic-settings), or from *environ* alone."""
        if environ is None:
            return cls()
        names = {"TENANTRY_CONFIG", "TENANTRY_DATABASE_URL", "TENANTRY_DATA_DIR"}
        return cls.model_validate({k: v for k, v in environ.items() if k in names and v})


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> TenantryConfig:
    """Load the configuration following the documented precedence."""
    env = TenantryEnvironment.read(environ)
    file = Path(path) if path is not None else Path(env.config or CONFIG_FILE_NAME)
    if path is not None and not file.exists():
        raise ConfigError(f"config file {file} does not exist")
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from exc
    if env.database_url:
        section = data.get("tenantry", {})
        stores_data = data.get("stores", {})
        if isinstance(section, Mapping) and isinstance(stores_data, Mapping):
            name = section.get("default_store", DEFAULT_STORE)
            current = stores_data.get(name, {})
            current = current if isinstance(current, Mapping) else {}
            # Only the URL is overridden: admin_url, rls_role, pool sizes stay as configured.
            stores_data = {**stores_data, name: {**current, "url": env.database_url}}
            data = {**data, "stores": stores_data}
    if not data:
        return TenantryConfig.sqlite_default(env.data_dir)
    return config_from_dict(
        data,
        source=str(file) if file.exists() else "environment",
        url_from_env=env.database_url is not None,
    )


_ADAPTER: TypeAdapter[TenantryConfig] = TypeAdapter(TenantryConfig)


def _table(value: object, where: str, prefix: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{prefix}{where} = {value!r}: expected a table")
    return value


def config_from_dict(
    data: Mapping[str, Any], source: str | None = None, *, url_from_env: bool = False
) -> TenantryConfig:
    """A configuration from the TOML layout: ``[tenantry]`` keys and ``[stores.NAME]`` tables.

    *source* (the file) starts every error message and is kept as ``.source``.

    *url_from_env*: the default store's URL came from ``TENANTRY_DATABASE_URL``
    (an error in it names the variable, not the file).
    """
    prefix = f"{source}: " if source else ""
    unknown_tables = sorted(set(data) - {"tenantry", "stores"})
    if unknown_tables:
        raise ConfigError(
            f"{prefix}{unknown_tables[0]}: unknown table (expected [tenantry] and [stores.NAME])"
        )
    section = dict(_table(data.get("tenantry", {}), "tenantry", prefix))
    for key in section:
        if key not in TOP_KEYS:
            known = ", ".join(sorted(TOP_KEYS))
            raise ConfigError(f"{prefix}tenantry.{key}: unknown key (expected one of: {known})")
    stores: dict[str, Any] = {}
    for name, options in _table(data.get("stores", {}), "stores", prefix).items():
        if isinstance(options, Mapping):
            if "name" in options:
                known = ", ".join(sorted(STORE_KEYS))
                raise ConfigError(
                    f"{prefix}stores.{name}.name: unknown key (the table's name is the "
                    f"store's name; expected one of: {known})"
                )
            options = {**options, "name": name}
        stores[name] = options
    if not stores:
        data_dir = section.get("data_dir", DEFAULT_DATA_DIR)
        sqlite = f"sqlite:///{Path(str(data_dir)) / 'default.db'}"
        stores[DEFAULT_STORE] = {"name": DEFAULT_STORE, "url": sqlite}
    section.setdefault("default_store", next(iter(stores)))
    env_label: dict[tuple[str, ...], str] = {}
    if url_from_env:
        env_label[("stores", str(section["default_store"]), "url")] = "TENANTRY_DATABASE_URL"
    try:
        return _ADAPTER.validate_python({**section, "stores": stores, "source": source or "dict"})
    except ValidationError as exc:
        raise config_error(exc, source=source, in_file=True, labels=env_label) from None


__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_DATA_DIR",
    "DEFAULT_STORE",
    "POOLER_NONE",
    "POOLER_TRANSACTION",
    "StoreConfig",
    "TenantryConfig",
    "TenantryEnvironment",
    "config_from_dict",
    "expand_env",
    "load_config",
    "mask_url",
]
