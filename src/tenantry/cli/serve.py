"""``tenantry serve``: the admin API, dashboard, metrics and an embedded worker.

The service's modules need the ``serve`` extra, so they are imported only
when the command runs: every other command works without it.
"""

from __future__ import annotations

from types import ModuleType

import click

from tenantry.cli.output import CliError
from tenantry.cli.running import (
    concurrency_option,
    grace_option,
    leave_busy_threads_behind,
    load_registry,
    log_activity,
    poll_option,
    worker_options,
)
from tenantry.cli.state import CliState


def _service_modules() -> ModuleType:
    """The service package, or a clear error when the 'serve' extra is not installed."""
    try:
        import tenantry.service.serving as serving
    except ImportError as exc:
        raise CliError(
            f"tenantry serve needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'tenantry[serve]'"
        ) from exc
    return serving


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free."
)
@click.option(
    "--app",
    "app_ref",
    default=None,
    metavar="MODULE:REGISTRY",
    help="The application's JobRegistry: enables enqueueing and the embedded worker.",
)
@click.option("--no-worker", is_flag=True, help="Serve the API and dashboard only, run no worker.")
@click.option(
    "--admin-token",
    envvar="TENANTRY_ADMIN_TOKEN",
    show_envvar=True,
    default=None,
    metavar="TOKEN",
    help="Bearer token for the admin API and the dashboard login (prefer the variable).",
)
@click.option(
    "--insecure-dev",
    is_flag=True,
    help="Run WITHOUT an admin token (loopback addresses only; loudly logged).",
)
@click.option(
    "--metrics-token",
    envvar="TENANTRY_METRICS_TOKEN",
    show_envvar=True,
    default=None,
    metavar="TOKEN",
    help="A token that opens /metrics only (the admin token always works).",
)
@click.option("--public-metrics", is_flag=True, help="Serve /metrics without any token.")
@click.option(
    "--session-secret",
    envvar="TENANTRY_SESSION_SECRET",
    show_envvar=True,
    default=None,
    metavar="SECRET",
    help="Key for dashboard session cookies (default: random; sessions end on restart).",
)
@concurrency_option("Jobs the embedded worker runs at once.")
@grace_option("Seconds running jobs get to finish at shutdown.")
@poll_option("Worker polling interval when no wake-up arrives.")
@click.option(
    "--top-tenants",
    default=50,
    show_default=True,
    type=click.IntRange(1),
    help="Tenants with their own /metrics labels; the rest are summed as '_other'.",
)
@click.pass_obj
def serve(
    state: CliState,
    host: str,
    port: int,
    app_ref: str | None,
    no_worker: bool,
    admin_token: str | None,
    insecure_dev: bool,
    metrics_token: str | None,
    public_metrics: bool,
    session_secret: str | None,
    concurrency: int,
    grace: float,
    poll: float,
    top_tenants: int,
) -> None:
    """Run the admin API, dashboard, /metrics and an embedded worker in one process.

    Needs an admin token (TENANTRY_ADMIN_TOKEN); without --app no worker runs
    and nothing can be enqueued through the API. Stops on SIGTERM/SIGINT,
    giving running jobs --grace seconds.
    """
    serving = _service_modules()
    from tenantry.service import ServiceSettings, create_app
    from tenantry.service.app import INSECURE_BANNER

    if insecure_dev and admin_token is None and not serving.is_loopback(host):
        raise CliError(
            f"--insecure-dev serves only on a loopback address (127.0.0.1, ::1, localhost), "
            f"not {host!r}: set an admin token to listen there"
        )
    settings = ServiceSettings(
        admin_token=admin_token,
        insecure_dev=insecure_dev,
        metrics_token=metrics_token,
        metrics_public=public_metrics,
        session_secret=session_secret.encode() if session_secret else None,
        top_tenants=top_tenants,
    )
    registry = load_registry(app_ref) if app_ref is not None else None
    log_activity()
    tenantry = state.tenantry()
    state.target_store = tenantry.default_store.name
    if settings.open_admin:
        click.secho(f"WARNING: {INSECURE_BANNER}", fg="red", bold=True, err=True)
    app = create_app(
        tenantry,
        registry,
        settings=settings,
        run_worker=not no_worker,
        worker_options=worker_options(concurrency=concurrency, grace=grace, poll=poll),
    )
    try:
        sock = serving.bind(host, port)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    url = serving.url_of(sock)
    worker_note = (
        "no worker (--no-worker)"
        if no_worker
        else f"embedded worker for {app_ref}"
        if registry is not None
        else "no worker (no --app)"
    )
    click.echo(
        f"tenantry service on {url} ({worker_note})\n"
        f"  dashboard  {url}/dashboard/\n"
        f"  API docs   {url}/docs\n"
        f"  metrics    {url}/metrics"
    )
    server = serving.ServiceServer(serving.config(app))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise CliError("the service did not start (see the log above)")
    leave_busy_threads_behind(app.state.service.worker)
