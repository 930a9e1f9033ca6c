from __future__ import annotations

import logging
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from tenantry import StoreConfig, Tenantry, TenantryConfig, load_config
from tenantry.errors import ConfigError, StoreNotFoundError
from tenantry.tenancy.config import (
    DEFAULT_DATA_DIR,
    TenantryEnvironment,
    expand_env,
    mask_url,
)


def test_embedded_default_is_sqlite_under_data_dir(tmp_path: Path) -> None:
    cfg = load_config(environ={"TENANTRY_CONFIG": str(tmp_path / "none.toml")})
    store = cfg.store("default")
    assert store.dialect == "sqlite"
    assert "tenantry-data" in store.url


def test_env_url_is_the_one_store_case(tmp_path: Path) -> None:
    cfg = load_config(
        environ={
            "TENANTRY_CONFIG": str(tmp_path / "none.toml"),
            "TENANTRY_DATABASE_URL": "postgresql://app:pw@db/x",
        }
    )
    assert cfg.default_store == "default"
    assert cfg.store("default").dialect == "postgresql"


def test_toml_with_several_stores(tmp_path: Path) -> None:
    path = tmp_path / "tenantry.toml"
    path.write_text(
        """
[tenantry]
default_store = "eu"
catalog_cache_ttl = 1.5

[stores.eu]
url = "postgresql://app:${EU_PW}@eu-db/app"
admin_url = "postgresql://owner:${EU_PW}@eu-db/app"
max_tenant_engines = 8

[stores.us]
url = "sqlite:///us.db"
"""
    )
    cfg = load_config(path, environ={})
    assert set(cfg.stores) == {"eu", "us"}
    assert cfg.default_store == "eu"
    assert cfg.catalog_store_name == "eu"
    assert cfg.catalog_cache_ttl == 1.5
    eu = cfg.store("eu")
    assert eu.max_tenant_engines == 8
    # Kept unexpanded until an engine is built.
    assert "${EU_PW}" in eu.url
    with pytest.raises(StoreNotFoundError, match="configured: eu, us"):
        cfg.store("apac")


def test_secrets_are_expanded_only_on_demand_and_masked() -> None:
    store = StoreConfig("main", "postgresql://app:${PGPASSWORD}@db:5432/app")
    assert store.parsed_url(expand=False).password == "x"
    with pytest.raises(ConfigError, match="PGPASSWORD"):
        expand_env(store.url, {})
    assert expand_env(store.url, {"PGPASSWORD": "s3cr3t"}).count("s3cr3t") == 1
    assert "PGPASSWORD" not in store.masked_url
    assert mask_url("postgresql://app:s3cr3t@db/app") == "postgresql://app:***@db/app"
    assert "s3cr3t" not in repr(StoreConfig("m", "postgresql://app:s3cr3t@db/app").masked_url)


def test_env_override_replaces_the_default_store_url(tmp_path: Path) -> None:
    path = tmp_path / "tenantry.toml"
    path.write_text('[stores.default]\nurl = "sqlite:///a.db"\n')
    cfg = load_config(path, environ={"TENANTRY_DATABASE_URL": "sqlite:///b.db"})
    assert cfg.store("default").url == "sqlite:///b.db"


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "tenantry.toml"
    path.write_text("[stores\n")
    with pytest.raises(ConfigError):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_single_helper() -> None:
    cfg = TenantryConfig.single("sqlite:///x.db", max_tenant_engines=2)
    assert cfg.store("default").max_tenant_engines == 2


def test_passwords_never_reach_errors_or_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that cannot be reached: the error and the log name it without its secret."""
    cfg = TenantryConfig.single("postgresql://app:${TT_SECRET}@127.0.0.1:1/app")
    monkeypatch.setenv("TT_SECRET", "s3cr3t-value")
    with caplog.at_level(logging.DEBUG):
        t = Tenantry(cfg)
        with pytest.raises(OperationalError) as info:
            t.setup()
    assert t.default_store.admin_engine().url.password == "s3cr3t-value"  # it was really used
    assert "s3cr3t-value" not in str(info.value)
    assert "s3cr3t-value" not in caplog.text
    assert "s3cr3t-value" not in repr(t.default_store)
    assert "s3cr3t-value" not in repr(t.default_store.admin_engine().url)
    assert "s3cr3t-value" not in str(t.default_store.admin_engine().url)
    t.close()


# -- every bad value is one line: file, key path, value, what was expected ---------------------

BAD_TOML = [
    (
        '[stores.main]\nurl = "sqlite://"\npool_size = "abc"\n',
        "stores.main.pool_size = 'abc': expected an integer",
    ),
    (
        '[stores.main]\nurl = "sqlite://"\nmax_tenant_engines = "abc"\n',
        "stores.main.max_tenant_engines = 'abc': expected an integer",
    ),
    (
        '[tenantry]\ncatalog_cache_ttl = "soon"\n[stores.main]\nurl = "sqlite://"\n',
        "tenantry.catalog_cache_ttl = 'soon': expected a number",
    ),
    (
        '[stores.main]\nurl = "sqlite://"\npool_size = 0\n',
        "stores.main.pool_size = 0: expected at least 1",
    ),
    (
        '[stores.main]\nurl = "sqlite://"\nmax_tenant_engines = -3\n',
        "stores.main.max_tenant_engines = -3: expected at least 1",
    ),
    (
        '[tenantry]\ncatalog_cache_ttl = -1\n[stores.main]\nurl = "sqlite://"\n',
        "tenantry.catalog_cache_ttl = -1: expected at least 0",
    ),
    (
        '[stores.main]\nurl = "sqlite://"\npool_size = 2.5\n',
        "stores.main.pool_size = 2.5: expected an integer",
    ),
    (
        '[stores.main]\nurl = "sqlite://"\npool_size = true\n',
        "stores.main.pool_size = True: expected an integer",
    ),
    ('[stores]\nmain = "sqlite://"\n', "stores.main = 'sqlite://': expected a table"),
    ("stores = 3\n", "stores = 3: expected a table"),
    ('tenantry = "x"\n', "tenantry = 'x': expected a table"),
    (
        '[tenantry.data_dir]\nx = 1\n[stores.main]\nurl = "sqlite://"\n',
        "tenantry.data_dir is a table: expected a string",
    ),
    (
        '[stores.main]\nurl = "sqlite://"\npasword = "hunter2"\n',
        "stores.main.pasword: unknown key (expected one of: admin_url, database_prefix, "
        "max_tenant_engines, pool_size, pooler, rls_role, url)",
    ),
    (
        '[tenantry]\ncolour = "red"\n',
        "tenantry.colour: unknown key (expected one of: catalog_cache_ttl, catalog_store, "
        "data_dir, default_store, global_metadata, global_migrations, tenant_metadata, "
        "tenant_migrations)",
    ),
    (
        '[store.main]\nurl = "sqlite://"\n',
        "store: unknown table (expected [tenantry] and [stores.NAME])",
    ),
    (
        "[stores.main]\npool_size = 3\n",
        "stores.main.url: required but not set (every store needs a url)",
    ),
    (
        '[stores.main]\nurl = "not a url"\n',
        "stores.main.url = 'not a url': malformed URL: expected e.g. "
        "postgresql+psycopg://user@host:5432/db or sqlite:///path/to/file.db",
    ),
    (
        '[stores.main]\nurl = "mysql://app:pw@db/app"\n',
        "stores.main.url = 'mysql://app:***@db/app': unsupported database 'mysql': "
        "expected one of postgresql, sqlite",
    ),
    (
        '[stores.main]\nurl = "postgres://app@db/app"\n',
        "stores.main.url = 'postgres://app@db/app': unsupported database 'postgres' "
        "(write postgresql://): expected one of postgresql, sqlite",
    ),
    (
        '[stores.Main-EU]\nurl = "sqlite://"\n',
        "stores.Main-EU: invalid store name 'Main-EU': use a-z, 0-9 and _, "
        "starting with a letter, at most 40 characters",
    ),
    (
        '[stores.main]\nurl = "sqlite://"\nrls_role = "x; drop"\n',
        "stores.main.rls_role = 'x; drop': invalid rls_role 'x; drop': use at most 63 "
        "characters a-z, 0-9 and _, starting with a letter or _ (and not with 'pg_')",
    ),
    (
        '[stores.main]\nurl = "sqlite://"\ndatabase_prefix = "a_very_long_prefix_for_dbs_"\n',
        "stores.main.database_prefix = 'a_very_long_prefix_for_dbs_': expected at most 23 "
        "characters (a tenant id of up to 40 follows it, and PostgreSQL names stop at 63)",
    ),
    (
        '[stores.main]\nurl = "sqlite://"\nname = "other"\n',
        "stores.main.name: unknown key (the table's name is the store's name; expected one of: "
        "admin_url, database_prefix, max_tenant_engines, pool_size, pooler, rls_role, url)",
    ),
]


@pytest.mark.parametrize(("toml", "message"), BAD_TOML)
def test_a_bad_value_is_one_line_naming_file_key_value_and_expectation(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = tmp_path / "tenantry.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == f"{path}: {message}"


def test_a_missing_default_store_is_a_store_not_found_error(tmp_path: Path) -> None:
    path = tmp_path / "tenantry.toml"
    path.write_text('[tenantry]\ndefault_store = "zz"\n[stores.main]\nurl = "sqlite://"\n')
    with pytest.raises(StoreNotFoundError) as info:
        load_config(path, environ={})
    assert str(info.value) == (
        f"{path}: tenantry.default_store = 'zz': no such store (configured: main)"
    )


def test_several_problems_are_counted_on_the_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tenantry.toml"
    path.write_text('[stores.main]\nurl = "sqlite://"\npool_size = "abc"\nmax_tenant_engines = 0\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == (
        f"{path}: stores.main.max_tenant_engines = 0: expected at least 1 (and 1 more problem)"
    )


def test_a_bad_url_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    environ = {
        "TENANTRY_CONFIG": str(tmp_path / "none.toml"),
        "TENANTRY_DATABASE_URL": "mysql://app:hunter2@db/app",
    }
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ)
    assert str(info.value) == (
        "environment: TENANTRY_DATABASE_URL = 'mysql://app:***@db/app': "
        "unsupported database 'mysql': expected one of postgresql, sqlite"
    )


def test_toml_integers_are_fine_for_seconds(tmp_path: Path) -> None:
    path = tmp_path / "tenantry.toml"
    path.write_text('[tenantry]\ncatalog_cache_ttl = 3\n[stores.main]\nurl = "sqlite://"\n')
    cfg = load_config(path, environ={})
    assert cfg.catalog_cache_ttl == 3.0
    assert isinstance(cfg.catalog_cache_ttl, float)


def test_building_in_python_checks_the_same_way() -> None:
    with pytest.raises(ConfigError) as info:
        StoreConfig("main", "sqlite://", pool_size="abc")  # type: ignore[arg-type]
    assert str(info.value) == "stores.main.pool_size = 'abc': expected an integer"
    with pytest.raises(ConfigError) as info:
        StoreConfig("Main", "sqlite://")
    assert str(info.value).startswith("stores.Main: invalid store name 'Main'")
    with pytest.raises(ConfigError) as info:
        StoreConfig("main", "mysql://db/app")
    assert str(info.value) == (
        "stores.main.url = 'mysql://db/app': unsupported database 'mysql': "
        "expected one of postgresql, sqlite"
    )
    with pytest.raises(ConfigError) as info:
        TenantryConfig.single("sqlite://", max_tenant_engines=0)
    assert str(info.value) == "stores.default.max_tenant_engines = 0: expected at least 1"
    with pytest.raises(ConfigError, match="unknown key"):
        StoreConfig("main", "sqlite://", pasword="x")  # type: ignore[call-arg]
    with pytest.raises(ConfigError) as info:
        TenantryConfig(stores={"a": StoreConfig("b", "sqlite://")})
    assert str(info.value) == "stores.a holds the store named 'b'"


def test_configs_stay_frozen_dataclasses_that_replace_revalidates() -> None:
    cfg = TenantryConfig.single("sqlite:///x.db")
    assert replace(cfg, catalog_cache_ttl=1).catalog_cache_ttl == 1.0
    with pytest.raises(ConfigError) as info:
        replace(cfg, catalog_cache_ttl="soon")  # type: ignore[arg-type]
    assert str(info.value) == "catalog_cache_ttl = 'soon': expected a number"
    with pytest.raises(FrozenInstanceError):
        cfg.store("default").pool_size = 9  # type: ignore[misc]
    assert cfg.store("default") == StoreConfig("default", "sqlite:///x.db")
    assert len({cfg.store("default"), StoreConfig("default", "sqlite:///x.db")}) == 1


def test_environment_variables_are_read_by_pydantic_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text('[stores.default]\nurl = "sqlite:///a.db"\npool_size = 7\n')
    monkeypatch.setenv("TENANTRY_CONFIG", str(path))
    monkeypatch.setenv("TENANTRY_DATABASE_URL", "sqlite:///b.db")
    monkeypatch.setenv("TENANTRY_DATA_DIR", "")  # empty is unset
    env = TenantryEnvironment.read()
    assert (env.config, env.database_url, env.data_dir) == (
        str(path),
        "sqlite:///b.db",
        DEFAULT_DATA_DIR,
    )
    cfg = load_config()
    assert cfg.store("default").url == "sqlite:///b.db"  # the variable beats the file
    assert cfg.store("default").pool_size == 7  # the file's other keys stay
    assert cfg.source == str(path)
    # An explicit path beats TENANTRY_CONFIG.
    other = tmp_path / "other.toml"
    other.write_text('[stores.default]\nurl = "sqlite:///c.db"\npool_size = 2\n')
    assert load_config(other).store("default").pool_size == 2


def test_data_dir_of_the_embedded_default_comes_from_the_environment(tmp_path: Path) -> None:
    cfg = load_config(
        environ={"TENANTRY_CONFIG": str(tmp_path / "none.toml"), "TENANTRY_DATA_DIR": "/srv/t"}
    )
    assert cfg.store("default").url == "sqlite:////srv/t/default.db"
    assert cfg.source == "embedded default"


def test_the_embedded_default_says_where_the_data_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("TENANTRY_CONFIG", "TENANTRY_DATABASE_URL", "TENANTRY_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.INFO, logger="tenantry"):
        t = Tenantry()
    t.close()
    notices = [r for r in caplog.records if "embedded default" in r.getMessage()]
    assert len(notices) == 1
    assert notices[0].levelno == logging.INFO
    assert notices[0].name.startswith("tenantry.")
    assert f"SQLite under {tmp_path / 'tenantry-data'} " in notices[0].getMessage()
    assert "TENANTRY_DATABASE_URL" in notices[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tenantry"):
        Tenantry(TenantryConfig.single(f"sqlite:///{tmp_path / 'x.db'}")).close()
    assert not [r for r in caplog.records if "embedded default" in r.getMessage()]
