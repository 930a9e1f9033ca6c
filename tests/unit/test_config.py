from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from tenantry import StoreConfig, Tenantry, TenantryConfig, load_config
from tenantry.errors import ConfigError, StoreNotFoundError
from tenantry.tenancy.config import config_from_dict, expand_env, mask_url


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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tenantry": {"colour": "red"}}, "unknown \\[tenantry\\] keys"),
        ({"stores": {"a": {}}}, "needs a url"),
        ({"stores": {"a": {"url": "sqlite://", "pasword": "x"}}}, "unknown keys"),
        ({"stores": {"Bad-Name": {"url": "sqlite://"}}}, "invalid store name"),
        ({"stores": {"a": {"url": "sqlite://", "rls_role": "x; drop"}}}, "rls_role"),
        ({"stores": {"a": {"url": "not a url"}}}, "malformed URL"),
        ({"tenantry": {"default_store": "zz"}, "stores": {"a": {"url": "sqlite://"}}}, "zz"),
    ],
)
def test_bad_config_is_a_clear_error(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


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
    assert t.default_store.engine().url.password == "s3cr3t-value"  # it was really used
    assert "s3cr3t-value" not in str(info.value)
    assert "s3cr3t-value" not in caplog.text
    assert "s3cr3t-value" not in repr(t.default_store)
    assert "s3cr3t-value" not in repr(t.default_store.engine().url)
    assert "s3cr3t-value" not in str(t.default_store.engine().url)
    t.close()
