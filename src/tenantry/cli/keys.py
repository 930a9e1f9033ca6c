"""``tenantry api-keys``: issue, list and revoke the API keys tenants authenticate with.

The same operations as the admin API's ``/tenants/{id}/api-keys``, through the
same library calls (:class:`tenantry.tenancy.apikeys.ApiKeys`). A key's secret
exists in plaintext only in the output of ``issue``: the catalog keeps a hash,
so no command can show it again, and ``list`` never shows more than the id.
"""

from __future__ import annotations

import click
from rich.table import Table
from rich.text import Text

from tenantry.cli.output import CliError, echo_json, make_console
from tenantry.cli.state import CliState
from tenantry.tenancy.apikeys import ApiKey, parse_key_id
from tenantry.tenancy.ids import validate_tenant_id

_KEY_ID_DIGITS = 12


def _when(value: object) -> str:
    return "-" if value is None else str(value)[:19].replace("T", " ")


def _key_id(value: str) -> str:
    """The public id of *value*: an id as ``list`` shows it, or a whole key (its id part)."""
    text = value.strip()
    from_key = parse_key_id(text)
    if from_key is not None:
        return from_key
    if len(text) != _KEY_ID_DIGITS or any(c not in "0123456789abcdef" for c in text):
        raise CliError(
            f"{value!r} is not an API key id (12 hex digits, as 'tenantry api-keys list' shows)"
        )
    return text


@click.group("api-keys")
def api_keys() -> None:
    """Issue, list and revoke tenants' API keys."""


@api_keys.command("issue")
@click.argument("tenant_id", metavar="TENANT")
@click.option("--name", default="", help="What the key is for (shown in lists; max 200 chars).")
@click.option("--json", "as_json", is_flag=True, help="Print the key and its record as JSON.")
@click.pass_obj
def issue_key(state: CliState, tenant_id: str, name: str, as_json: bool) -> None:
    """Issue a key for TENANT and print it, the only time it is ever shown.

    The key goes to stdout alone on its line (so KEY=$(tenantry api-keys issue
    acme) captures it) and the notice to stderr; with --json both go to
    stdout as one object.
    """
    validate_tenant_id(tenant_id)
    if "\x00" in name:
        raise CliError("an API key's name must not contain NUL characters")
    issued = state.tenantry().api_keys.issue(tenant_id, name=name)
    if as_json:
        echo_json({"key": issued.key, "api_key": issued.info.to_dict()})
        return
    click.echo(issued.key)
    click.echo(
        f"issued API key {issued.info.id} for tenant {tenant_id!r}. The key above is shown "
        "only now and cannot be shown again: store it safely.",
        err=True,
    )


@api_keys.command("list")
@click.option("--tenant", "tenant_id", metavar="ID", help="Only this tenant's keys.")
@click.option("--exclude-revoked", is_flag=True, help="Leave revoked keys out.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def list_keys(state: CliState, tenant_id: str | None, exclude_revoked: bool, as_json: bool) -> None:
    """List API keys (ids, names and dates; never secrets), oldest first."""
    tenantry = state.tenantry()
    if tenant_id is not None:
        tenantry.get_tenant(validate_tenant_id(tenant_id))  # unknown tenant: an error
    keys = tenantry.api_keys.list(tenant_id, include_revoked=not exclude_revoked)
    if as_json:
        echo_json([key.to_dict() for key in keys])
        return
    console = make_console()
    if not keys:
        console.print("no API keys")
        return
    table = Table("id", "tenant", "name", "created (UTC)", "last used", "revoked")
    for key in keys:
        table.add_row(
            Text(key.id, style="bold"),
            Text(key.tenant_id),
            Text(key.name),
            Text(_when(key.created_at)),
            Text(_when(key.last_used_at)),
            Text(_when(key.revoked_at), style="red" if key.is_revoked else ""),
        )
    console.print(table)


@api_keys.command("revoke")
@click.argument("key_id", metavar="KEY_ID")
@click.option(
    "--tenant", "tenant_id", metavar="ID", help="Refuse unless the key belongs to this tenant."
)
@click.option("--json", "as_json", is_flag=True, help="Print the key's record as JSON.")
@click.pass_obj
def revoke_key(state: CliState, key_id: str, tenant_id: str | None, as_json: bool) -> None:
    """Revoke a key for good: requests with it are refused (revoking twice is fine).

    This process refuses it at once; a running service stops accepting it
    within its catalog cache TTL.
    """
    wanted = _key_id(key_id)
    if tenant_id is not None:
        validate_tenant_id(tenant_id)
    keys = state.tenantry().api_keys
    before: ApiKey = keys.get(wanted, tenant_id=tenant_id)
    after = keys.revoke(wanted, tenant_id=tenant_id)
    if as_json:
        echo_json(after.to_dict())
        return
    if before.is_revoked:
        make_console().print(
            f"API key {after.id} of tenant {after.tenant_id!r} was already revoked "
            f"({_when(after.revoked_at)} UTC)",
            style="yellow",
        )
        return
    make_console().print(f"revoked API key {after.id} of tenant {after.tenant_id!r}", style="green")
