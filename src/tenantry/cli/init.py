"""``tenantry init``: write a ``tenantry.toml`` and create the tenant catalog."""

from __future__ import annotations

import os
from pathlib import Path

import click

from tenantry.cli.output import CliError, make_console
from tenantry.cli.state import CliState
from tenantry.tenancy.config import (
    CONFIG_FILE_NAME,
    DEFAULT_DATA_DIR,
    DEFAULT_STORE,
    config_from_dict,
)


def _toml_string(value: str) -> str:
    """A TOML basic string; escapes what TOML forbids raw (quotes, controls, DEL)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    out = []
    for char in value:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render_config(url: str, data_dir: str) -> str:
    """The ``tenantry.toml`` that ``init`` writes, with the other keys documented."""
    return f"""\
# tenantry configuration (written by `tenantry init`).
#
# Store URLs may reference environment variables as ${{NAME}}, for example
#   url = "postgresql://app:${{DB_PASSWORD}}@db.internal/app"
# They are expanded only when connecting, so secrets stay out of this file.
# TENANTRY_DATABASE_URL, when set, replaces the default store's URL.

[tenantry]
default_store = "{DEFAULT_STORE}"
data_dir = {_toml_string(data_dir)}
# Tables provisioned for every tenant, and global tables ("module:attribute"):
# tenant_metadata = "myapp.models:TenantBase"
# global_metadata = "myapp.models:GlobalBase"

[stores.{DEFAULT_STORE}]
url = {_toml_string(url)}
# admin_url = "..."        # DDL and provisioning; defaults to url
# rls_role = "tenantry_rls" # with url alone: sessions log in as rls_role + "_" + database
# pooler = "transaction"   # behind PgBouncer in transaction mode
"""


@click.command()
@click.option("--database-url", metavar="URL", help="Default store URL (default: SQLite).")
@click.option(
    "--data-dir",
    metavar="DIR",
    default=None,
    help=f"Directory for SQLite data (default: {DEFAULT_DATA_DIR}).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.pass_obj
def init(state: CliState, database_url: str | None, data_dir: str | None, force: bool) -> None:
    """Write a tenantry.toml and create the tenant catalog."""
    path = state.config_path or Path(os.environ.get("TENANTRY_CONFIG", CONFIG_FILE_NAME))
    if path.exists() and not force:
        raise CliError(f"{path} already exists; pass --force to overwrite it")
    data_dir = data_dir or DEFAULT_DATA_DIR
    url = database_url or f"sqlite:///{Path(data_dir) / 'default.db'}"
    text = render_config(url, data_dir)
    # Validate before writing, so a typo in the URL leaves no half-made file behind.
    written = config_from_dict(
        {"tenantry": {"data_dir": data_dir}, "stores": {"default": {"url": url}}}
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc
    console = make_console()
    store = written.store(DEFAULT_STORE)
    console.print(f"wrote {path} (store {DEFAULT_STORE!r}: {store.masked_url})")
    if "${" not in url and store.parsed_url(expand=False).password:
        console.print(
            "note: the password is stored in the file; consider ${ENV_VAR} in the URL instead",
            style="yellow",
        )
    state.config_path = path
    effective = state.config().store(DEFAULT_STORE)
    state.target_store = effective.name
    state.tenantry().setup()
    overridden = " (from TENANTRY_DATABASE_URL)" if effective.url != url else ""
    console.print(f"catalog ready on {effective.masked_url}{overridden}", style="green")
