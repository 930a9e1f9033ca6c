"""``tenantry demo``: the isolation self-check, then the catalogue app and the service.

The only module outside :mod:`tenantry.demo` that imports it, so the library,
the queue and the service never depend on the demo.
"""

from __future__ import annotations

import asyncio
import logging

import click

from tenantry.cli.output import CliError, make_console
from tenantry.cli.state import CliState
from tenantry.demo.tour import DemoBase, run_demo
from tenantry.tenancy.config import TenantryConfig


@click.command()
@click.option(
    "--data-dir",
    metavar="DIR",
    default=None,
    help="Run on SQLite under DIR instead of the configured store.",
)
@click.option(
    "--reset/--no-reset",
    default=True,
    show_default=True,
    help="Delete the demo tenants of an earlier run first.",
)
@click.option(
    "--once", is_flag=True, help="Stop when the demo's jobs are done and print a summary."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the service (dashboard, admin API); 0: any free port.",
)
@click.option(
    "--app-port",
    default=8001,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the demo's product-catalogue app; 0: any free port.",
)
@click.pass_obj
def demo(
    state: CliState,
    data_dir: str | None,
    reset: bool,
    once: bool,
    host: str,
    port: int,
    app_port: int,
) -> None:
    """Run the demo: tenants in each isolation mode, the catalogue app and the service.

    First a self-check: each tenant writes rows and reads back only its own
    (exits 1 if any tenant sees another's). Then the product-catalogue app and
    the tenantry service (dashboard, admin API, embedded worker) start, some
    traffic flows through the app, and their URLs are printed. Serves until
    Ctrl-C, or with --once until the demo's jobs are done. Ctrl-C stops the
    worker first (running jobs get a few seconds to finish), then prints the
    jobs per tenant and exits 0.
    """
    if data_dir is not None:
        state.use_config(TenantryConfig.sqlite_default(data_dir))
    tenantry = state.tenantry(tenant_metadata=DemoBase.metadata)
    state.target_store = tenantry.default_store.name
    console = make_console()
    try:
        rows = run_demo(tenantry, console, reset=reset)
    except KeyboardInterrupt:
        raise click.Abort() from None
    leaked = [row["tenant"] for row in rows if not row["only_own_rows"]]
    if leaked:
        raise CliError(f"isolation check failed: {', '.join(leaked)} saw foreign rows")
    try:
        from tenantry.demo.runner import run_catalogue_demo
    except ImportError as exc:
        raise CliError(
            f"the demo's app and service need the 'demo' extra ({exc.name} is missing): "
            "pip install 'tenantry[demo]'"
        ) from exc
    demo_tenants = [tenantry.get_tenant(row["tenant"]) for row in rows]
    logger = logging.getLogger("tenantry")
    if logger.level >= logging.WARNING:  # without -v: the doomed job's retries are expected
        logger.setLevel(logging.ERROR)
    result = asyncio.run(
        run_catalogue_demo(
            tenantry, demo_tenants, console, once=once, host=host, port=port, app_port=app_port
        )
    )
    if result.problems:
        raise CliError("demo check failed: " + "; ".join(result.problems))
