"""``tenantry demo``'s second half: the catalogue app and the service, with traffic.

Two uvicorn servers run in one event loop: the tenantry service (dashboard,
admin API, metrics, embedded worker) and the catalogue app. Traffic goes
through real HTTP to the app, naming each tenant a different way (header,
``<tenant>.localhost`` host, API key), so what the dashboard shows is what an
application would cause. One rename is refused by the simulated search index
and ends in the dead-letter list.

``once=True`` waits until every job has finished, prints jobs per tenant and
stops; otherwise a trickle of updates keeps the chart moving until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select

from tenantry.demo.app import create_catalogue_app
from tenantry.demo.jobs import registry
from tenantry.demo.models import ProductAudit
from tenantry.errors import ConfigError, TenantryError
from tenantry.queue import Queue, WorkerOptions
from tenantry.queue.job import PENDING_STATES
from tenantry.service import ServiceSettings, create_app
from tenantry.service.serving import EmbeddedServer, bind, config, url_of
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.context import tenant_context
from tenantry.tenantry import Tenantry

ROUNDS = 3
CURSED = "cursed"
#: Seconds the embedded worker gives running jobs when the demo stops.
_SHUTDOWN_GRACE = 5.0


@dataclass
class TenantTraffic:
    """How the traffic generator reaches one tenant, and what it did."""

    tenant: Tenant
    how: str  # "header", "host" or "api key"
    headers: dict[str, str]
    updates: int = 0
    product_ids: list[int] = field(default_factory=list)


@dataclass
class DemoResult:
    service_url: str
    app_url: str
    admin_token: str
    rows: list[dict[str, Any]]
    problems: list[str]


def _ways(tenants: Sequence[Tenant], app_port: int, key: str | None) -> list[TenantTraffic]:
    """Reach the tenants by header, by host and by API key, in turn."""
    out = []
    for i, tenant in enumerate(tenants):
        way = ("header", "host", "api key")[i % 3]
        if way == "host":
            headers = {"Host": f"{tenant.id}.localhost:{app_port}"}
        elif way == "api key" and key is not None:
            headers = {"Authorization": f"Bearer {key}"}
        else:
            way, headers = "header", {"X-Tenant-ID": tenant.id}
        out.append(TenantTraffic(tenant, way, headers))
    return out


async def _start(server: EmbeddedServer, sock: Any) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise TenantryError("a demo server stopped while starting")
        if time.monotonic() > deadline:
            raise TenantryError("a demo server did not start within 30 s")
        await asyncio.sleep(0.05)
    return task


async def _put(
    client: httpx.AsyncClient, who: TenantTraffic, pid: int, body: dict[str, Any]
) -> None:
    response = await client.put(f"/products/{pid}", json=body, headers=who.headers)
    if response.status_code != 200:
        raise TenantryError(
            f"PUT /products/{pid} for {who.tenant.id} answered {response.status_code}: "
            f"{response.text[:300]}"
        )
    who.updates += 1


async def _initial_traffic(client: httpx.AsyncClient, plan: list[TenantTraffic]) -> list[str]:
    """Each tenant updates its products a few times; returns problems found on the way."""
    problems = []
    for who in plan:
        listed = await client.get("/products", headers=who.headers)
        listed.raise_for_status()
        products = listed.json()
        who.product_ids = [p["id"] for p in products]
        foreign = [p["name"] for p in products if not p["name"].startswith(f"{who.tenant.id}: ")]
        if foreign:
            problems.append(f"{who.tenant.id} saw other tenants' products: {foreign}")
    for round_no in range(1, ROUNDS + 1):
        for who in plan:
            for pid in who.product_ids:
                await _put(client, who, pid, {"price_cents": 1000 * round_no + pid})
    # Another tenant's product id is simply not found: the app never sees its row.
    if len(plan) >= 2 and plan[0].product_ids:
        other = plan[1]
        theirs = plan[0].product_ids[0]
        if theirs not in other.product_ids:
            probe = await client.put(
                f"/products/{theirs}", json={"price_cents": 1}, headers=other.headers
            )
            if probe.status_code != 404:
                problems.append(f"{other.tenant.id} could update {plan[0].tenant.id}'s product")
    # One rename the search index refuses: retried, then dead. Then the name is restored.
    first = plan[0]
    if first.product_ids:
        pid = first.product_ids[0]
        original = (await client.get(f"/products/{pid}", headers=first.headers)).json()["name"]
        await _put(client, first, pid, {"name": f"{CURSED} {original}"})
        await _put(client, first, pid, {"name": original})
    return problems


async def _trickle(
    client: httpx.AsyncClient, plan: list[TenantTraffic], stop: asyncio.Event
) -> None:
    """Keep some jobs flowing while the demo serves (a price change every ~0.7 s)."""
    rng = random.Random()  # noqa: S311 - which product to touch, not a secret
    while not stop.is_set():
        who = rng.choice(plan)
        if who.product_ids:
            with contextlib.suppress(httpx.HTTPError, TenantryError):
                await _put(
                    client,
                    who,
                    rng.choice(who.product_ids),
                    {"price_cents": rng.randint(100, 99999)},
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.3, 1.1))


def _summary(tenantry: Tenantry, queue: Queue, plan: list[TenantTraffic]) -> list[dict[str, Any]]:
    rows = []
    for who in plan:
        counts = queue.admin.count_jobs(tenant_id=who.tenant.id)
        with tenant_context(who.tenant.id), tenantry.session() as session:
            audited = int(session.scalar(select(func.count()).select_from(ProductAudit)) or 0)
        rows.append(
            {
                "tenant": who.tenant.id,
                "isolation": who.tenant.isolation.value,
                "reached_by": who.how,
                "updates": who.updates,
                "completed": counts["completed"],
                "dead": counts["dead"],
                "unfinished": sum(counts[s.value] for s in PENDING_STATES),
                "audit_rows": audited,
            }
        )
    return rows


def _summary_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Jobs processed per tenant", title_justify="left")
    for header in ("tenant", "isolation", "reached by"):
        table.add_column(header, no_wrap=True)
    for header in ("updates", "jobs completed", "jobs dead", "audit rows"):
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(
            Text(row["tenant"], style="bold"),
            row["isolation"],
            row["reached_by"],
            str(row["updates"]),
            str(row["completed"]),
            Text(str(row["dead"]), style="red" if row["dead"] else ""),
            str(row["audit_rows"]),
        )
    return table


async def run_catalogue_demo(
    tenantry: Tenantry,
    tenants: Sequence[Tenant],
    console: Console,
    *,
    once: bool,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_port: int = 8001,
    timeout: float = 90.0,
) -> DemoResult:
    """Serve the service and the catalogue app for *tenants*, drive traffic, report.

    Meant to run as its own ``asyncio.run``: at the end it disposes *tenantry*'s
    async engines, whose connections are bound to this event loop.
    """
    queue = Queue(tenantry, registry)
    await asyncio.to_thread(queue.setup)
    token = os.environ.get("TENANTRY_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    settings = ServiceSettings(admin_token=token, sample_interval=1.0)
    service = create_app(
        tenantry,
        registry,
        settings=settings,
        worker_options=WorkerOptions(
            concurrency=4, poll_interval=0.2, shutdown_grace=_SHUTDOWN_GRACE
        ),
    )
    catalogue = create_catalogue_app(tenantry, queue)
    try:
        service_sock, app_sock = bind(host, port), bind(host, app_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}/{app_port} ({exc.strerror or exc}); "
            "pick other ports with --port and --app-port (0: any free port)"
        ) from exc
    service_url, app_url = url_of(service_sock), url_of(app_sock)
    servers = [
        EmbeddedServer(config(service, log_level="warning", access_log=False, own_logging=False)),
        EmbeddedServer(config(catalogue, log_level="warning", access_log=False, own_logging=False)),
    ]
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # From here on Ctrl-C (or SIGTERM) stops the demo cleanly, with or without --once.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            tasks.append(await _start(servers[0], service_sock))
            tasks.append(await _start(servers[1], app_sock))
            key_tenant = tenants[2] if len(tenants) > 2 else None
            key = None
            if key_tenant is not None:
                issued = await asyncio.to_thread(
                    tenantry.api_keys.issue, key_tenant.id, name="demo"
                )
                key = issued.key
            app_port_real = app_sock.getsockname()[1]
            plan = _ways(tenants, app_port_real, key)
            _print_urls(console, service_url, app_url, token, plan, once=once)
            async with httpx.AsyncClient(base_url=app_url, timeout=30) as client:
                problems = await _initial_traffic(client, plan)
                if once:
                    await _wait_finished(queue, plan, timeout, stop)
                elif not stop.is_set():
                    console.print("serving; press Ctrl-C to stop", style="bold")
                    await _trickle(client, plan, stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if stop.is_set():
                console.print(
                    "interrupted: stopping the worker (running jobs get "
                    f"{_SHUTDOWN_GRACE:g} s to finish)",
                    style="bold",
                )
            # The service's shutdown stops its embedded worker gracefully: running
            # jobs finish (within the grace) and their completions are written.
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
            service_sock.close()
            app_sock.close()
        # Counted only now that no worker runs: jobs and audit rows are read by two
        # queries, and a job completing between them would make the two disagree.
        rows = await asyncio.to_thread(_summary, tenantry, queue, plan)
    finally:
        # The async engines' connections belong to this loop, which ends with the
        # demo: close them now (the engines are rebuilt if tenantry is used again).
        await tenantry.aclose()
    for row in rows:
        if once and row["unfinished"] and not stop.is_set():  # after Ctrl-C, they may not
            problems.append(f"{row['tenant']}: {row['unfinished']} job(s) did not finish")
        if row["audit_rows"] != row["completed"]:
            problems.append(
                f"{row['tenant']}: {row['completed']} completed jobs but "
                f"{row['audit_rows']} audit rows"
            )
    console.print(_summary_table(rows))
    dead = sum(r["dead"] for r in rows)
    if dead:
        console.print(
            f"{dead} job(s) dead: the '{CURSED}' rename the search index refused "
            "(see the dashboard's dead-letter list)"
        )
    return DemoResult(service_url, app_url, token, rows, problems)


async def _wait_finished(
    queue: Queue, plan: list[TenantTraffic], timeout: float, stop: asyncio.Event
) -> None:
    def unfinished() -> int:
        total = 0
        for who in plan:
            counts = queue.admin.count_jobs(tenant_id=who.tenant.id)
            total += sum(counts[s.value] for s in PENDING_STATES)
        return total

    deadline = time.monotonic() + timeout
    while not stop.is_set() and await asyncio.to_thread(unfinished) > 0:
        if time.monotonic() > deadline:
            raise TenantryError(f"demo jobs did not finish within {timeout:g}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


def _print_urls(
    console: Console,
    service_url: str,
    app_url: str,
    token: str,
    plan: list[TenantTraffic],
    *,
    once: bool,
) -> None:
    console.print(Text("tenantry demo is serving", style="bold green"))
    console.print(f"  dashboard     {service_url}/dashboard/   (admin token: {token})")
    console.print(f"  service API   {service_url}/docs")
    console.print(f"  metrics       {service_url}/metrics")
    console.print(f"  catalogue app {app_url}/docs")
    port = app_url.rsplit(":", 1)[1]
    for who in plan:
        if who.how == "host":
            console.print(f"    {who.tenant.id}: http://{who.tenant.id}.localhost:{port}/products")
        elif who.how == "header":
            console.print(
                f"    {who.tenant.id}: curl -H 'X-Tenant-ID: {who.tenant.id}' {app_url}/products"
            )
        else:
            console.print(f"    {who.tenant.id}: by its API key (issue one from the admin API)")
    if once:
        console.print("(--once: stops when the demo's jobs have finished)")
