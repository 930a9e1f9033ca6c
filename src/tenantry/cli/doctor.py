"""``tenantry doctor``: check that the deployment keeps tenants apart, and say how to fix it.

The checks are :func:`tenantry.tenancy.doctor.diagnose`; this module prints
them. One finding per line on stdout (``<object>: <problem> — fix: <SQL or
setting>``), so the output can be grepped, diffed between runs, or pasted into
a ticket; ``--json`` for scripts. The exit status is what a deployment
pipeline gates on: 1 when an error was found (or a warning, with ``--strict``),
0 otherwise.
"""

from __future__ import annotations

import click

from tenantry.cli.output import echo_json, progress_bars, progress_option
from tenantry.cli.state import CliState
from tenantry.tenancy.doctor import checkable, diagnose, failed

#: Below this many tenants the check is quick and a progress bar only flickers.
PROGRESS_FROM = 21


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option(
    "--strict", is_flag=True, help="Fail on warnings too (slow indexes, literal passwords)."
)
@progress_option
@click.pass_obj
def doctor(state: CliState, as_json: bool, strict: bool, show_progress: bool | None) -> None:
    """Check every store and tenant for holes in the isolation wall; exit 1 if any.

    On PostgreSQL: row-level security and the wall policy on every tenant table,
    the tenant binding functions and key, the session login's rights, unique and
    foreign keys on shared tables, grants on tenantry's tables, and a connection
    pooler without pooler = "transaction". On SQLite: whether shared-mode tenants
    have a wall below the ORM. Also literal passwords in tenantry.toml. Each
    finding names the SQL or setting that fixes it.
    """
    tenancy = state.tenantry()
    tenants = checkable(tenancy.list_tenants())
    with progress_bars(show_progress if len(tenants) >= PROGRESS_FROM else False) as bars:

        def report(done: int, total: int) -> None:
            if bars is not None:
                bars("check tenants", done, total)

        findings = diagnose(tenancy, tenants=tenants, progress=report)
    stores = len(tenancy.stores)
    is_failure = failed(findings, strict=strict)
    if as_json:
        echo_json(
            {
                "ok": not is_failure,
                "stores": stores,
                "tenants": len(tenants),
                "findings": [f.to_dict() for f in findings],
            }
        )
    else:
        for finding in findings:
            click.echo(finding.line())
        checked = f"{stores} stores, {len(tenants)} tenants checked"
        if not findings:
            click.echo(f"no findings: {checked}")
        else:
            errors = sum(f.severity == "error" for f in findings)
            click.echo(
                f"{len(findings)} findings ({errors} errors, {len(findings) - errors} warnings): "
                f"{checked}",
                err=True,
            )
    if is_failure:
        raise SystemExit(1)
