"""Store URLs: secrets substituted intact, masked whatever they hold, drivers told apart."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest
from sqlalchemy.engine import make_url

from tenantry import StoreConfig
from tenantry.errors import ConfigError
from tenantry.tenancy.store import Store
from tenantry.tenancy.urls import driver_note, expand_env, mask_url, parse_url

#: Every character that means something in a URL, and a percent-escape to decode twice.
NASTY = "Hunter2@Prod#Secret:/?%41[ ]x"
SPECIALS = ["@", "#", ":", "/", "?", "%", "[", "]", " "]


def test_a_secret_lands_where_the_reference_stands() -> None:
    env = {"PW": NASTY, "USER": "app@corp", "DB": "orders", "PORT": "6432", "HOST": "db.internal"}
    url = parse_url(
        "postgresql+psycopg://${USER}:${PW}@${HOST}:${PORT}/${DB}?application_name=${PW}",
        env,
        expand=True,
    )
    assert url.username == "app@corp"
    assert url.password == NASTY
    assert url.host == "db.internal"
    assert url.port == 6432
    assert url.database == "orders"
    assert url.query == {"application_name": NASTY}


def test_a_secret_next_to_literal_text_in_the_password() -> None:
    url = parse_url("postgresql://app:pre${PW}post@db/app", {"PW": NASTY}, expand=True)
    assert url.password == f"pre{NASTY}post"
    assert url.host == "db"


def test_expand_env_gives_the_url_sqlalchemy_parses_back() -> None:
    text = expand_env("postgresql://app:${PW}@127.0.0.1:5432/app", {"PW": NASTY})
    assert text == f"postgresql://app:{quote(NASTY, safe='')}@127.0.0.1:5432/app"
    assert make_url(text).password == NASTY


def test_a_database_name_cannot_hold_a_question_mark() -> None:
    with pytest.raises(ConfigError, match=r"environment variable DB .* contains '\?'"):
        expand_env("postgresql://app@db/${DB}", {"DB": "a?b"})


def test_unexpanded_urls_parse_with_stand_ins() -> None:
    url = parse_url("postgresql://${U}:${PW}@${H}:${PORT}/app", expand=False)
    assert (url.username, url.password, url.host, url.port) == ("x", "x", "x", 1)


@pytest.mark.parametrize("char", SPECIALS)
def test_mask_url_hides_a_raw_password_with_any_special_character(char: str) -> None:
    password = f"ab{char}cd{char}"
    assert mask_url(f"postgresql://app:{password}@127.0.0.1:5432/db") == (
        "postgresql://app:***@127.0.0.1:5432/db"
    )
    encoded = quote(password, safe="")
    assert mask_url(f"postgresql://app:{encoded}@db/x") == "postgresql://app:***@db/x"


def test_mask_url_hides_every_form_of_password() -> None:
    assert mask_url(f"postgresql://app:{NASTY}@127.0.0.1/db") == "postgresql://app:***@127.0.0.1/db"
    assert mask_url("postgresql://app:${PGPASSWORD}@db/app") == "postgresql://app:***@db/app"
    url = parse_url("postgresql+psycopg://app:${PW}@db:5432/app", {"PW": NASTY}, expand=True)
    masked = mask_url(url)
    assert masked == "postgresql+psycopg://app:***@db:5432/app"
    assert NASTY not in masked
    # Unchanged when there is no password.
    assert mask_url("postgresql://app@db/app") == "postgresql://app@db/app"
    assert mask_url("postgresql://db:5432/app") == "postgresql://db:5432/app"
    assert mask_url("sqlite:///data/x.db") == "sqlite:///data/x.db"


def test_mask_url_in_a_message_quoting_urls() -> None:
    message = (
        "cannot copy from postgresql://a:p@ss@one/db to 'postgresql://b:s3/cr#t@two:5432/db' "
        "(user x@example.com)"
    )
    assert mask_url(message) == (
        "cannot copy from postgresql://a:***@one/db to 'postgresql://b:***@two:5432/db' "
        "(user x@example.com)"
    )


@pytest.mark.parametrize(
    "url", ["postgresql://h/d", "postgresql+psycopg://h/d", "postgresql+psycopg_async://h/d"]
)
def test_psycopg_urls_are_accepted_silently(url: str) -> None:
    assert driver_note(make_url(url)) is None


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg2", "pg8000"])
def test_other_postgresql_drivers_get_a_note(driver: str) -> None:
    note = driver_note(make_url(f"postgresql+{driver}://h/d"))
    assert note is not None
    assert f"names the {driver} driver" in note
    assert "psycopg 3 for both sync and async" in note


def test_a_store_warns_once_about_a_driver_it_does_not_use(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PW", "pw")
    config = StoreConfig(
        "eu",
        "postgresql+asyncpg://app:${PW}@db/app",
        admin_url="postgresql+asyncpg://owner:${PW}@db/app",
    )
    with caplog.at_level(logging.WARNING, logger="tenantry"):
        store = Store(config)  # builds no engine, connects to nothing
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("store 'eu': the URL names the asyncpg driver")
    assert store.url(admin=False, is_async=True).drivername == "postgresql+psycopg"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tenantry"):
        Store(StoreConfig("us", "postgresql+psycopg://app@db/app"))
        Store(StoreConfig("lite", "sqlite+aiosqlite:///x.db"))
    assert not caplog.records


def test_secrets_stay_out_of_reprs_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TT_NASTY", NASTY)
    config = StoreConfig("main", "postgresql://app:${TT_NASTY}@127.0.0.1:1/app")
    store = Store(config)
    url = store.url(admin=True, is_async=False)  # the configured login
    assert url.password == NASTY
    assert url.host == "127.0.0.1"
    for text in (repr(config), repr(store), repr(url), str(url), mask_url(url)):
        assert NASTY not in text
        assert "Secret" not in text
