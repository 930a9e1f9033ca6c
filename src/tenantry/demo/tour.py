"""A self-checking tour of tenantry, behind ``tenantry demo``.

The demo is meant to convince, not just to run: it puts tenants in every
isolation mode the store supports, writes rows as each of them, and then reads
back through the very same ``tenantry.session()`` an application would use. If
any tenant can see a row that is not its own, the demo says so and the command
fails, so it doubles as a smoke test of a fresh installation or a new store.

After this check, ``tenantry demo`` runs the product-catalogue app and the
service against the same tenants (:mod:`tenantry.demo.runner`).

The demo tables live on their own metadata (not :class:`tenantry.TenantBase`),
so running the demo never provisions the application's tables, and the
application's (or the test suite's) tables never end up in the demo tenants.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy import select

from tenantry.demo.models import DemoBase, DemoProduct
from tenantry.errors import TenantExistsError, TenantNotFoundError
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus
from tenantry.tenancy.context import tenant_context
from tenantry.tenancy.store import Store
from tenantry.tenantry import Tenantry

#: Tenant setting that marks a tenant as the demo's own. The demo deletes and
#: rewrites only tenants carrying it, so pointing it at a real catalog can never
#: destroy a real tenant that happens to be called ``acme``.
DEMO_SETTING = "tenantry_demo"
PRODUCTS_PER_TENANT = 3

__all__ = ["DEMO_SETTING", "DEMO_TENANTS", "DemoBase", "DemoProduct", "DemoTenant", "run_demo"]


@dataclass(frozen=True)
class DemoTenant:
    id: str
    name: str
    isolation: IsolationMode
    items: tuple[str, ...]

    @property
    def prefix(self) -> str:
        # The separator matters: with a bare id, "acme" would also claim "acme2"'s rows.
        return f"{self.id}: "

    @property
    def product_names(self) -> list[str]:
        return [self.prefix + item for item in self.items]


#: Two tenants share tables (the case row filtering must get right), one has its
#: own database; ``umbrella`` only runs where schemas exist (PostgreSQL).
DEMO_TENANTS: tuple[DemoTenant, ...] = (
    DemoTenant(
        "acme", "Acme Corporation", IsolationMode.SHARED, ("anvil", "rocket skates", "magnet")
    ),
    DemoTenant(
        "globex", "Globex Corporation", IsolationMode.SHARED, ("hammock", "monorail", "laser")
    ),
    DemoTenant("initech", "Initech", IsolationMode.DATABASE, ("red stapler", "tps cover", "fax")),
    DemoTenant(
        "umbrella", "Umbrella Corporation", IsolationMode.SCHEMA, ("umbrella", "raincoat", "boots")
    ),
)


def is_demo_tenant(tenant: Tenant) -> bool:
    return tenant.settings.get(DEMO_SETTING) is True


def data_location(store: Store) -> str:
    """Where the demo's data ended up, in a form the user can go and look at."""
    url = store.config.parsed_url(expand=False)
    if store.dialect == "sqlite" and url.database not in (None, "", ":memory:"):
        return str(Path(url.database or "").resolve().parent)
    return f"store {store.name!r} ({store.config.masked_url})"


def _existing_demo_tenants(tenantry: Tenantry) -> list[Tenant]:
    """The demo's tenants already in the catalog; refuses if an id is taken by a real one."""
    found = []
    for spec in DEMO_TENANTS:
        try:
            tenant = tenantry.get_tenant(spec.id)
        except TenantNotFoundError:
            continue
        if not is_demo_tenant(tenant):
            raise TenantExistsError(
                f"tenant {spec.id!r} already exists and was not created by the demo; "
                "the demo will not touch it (run it on another store, e.g. with --data-dir)"
            )
        found.append(tenant)
    return found


def _ensure_tenant(tenantry: Tenantry, spec: DemoTenant) -> Tenant:
    """An active demo tenant, reusing one left by an earlier run when it is usable."""
    try:
        tenant: Tenant | None = tenantry.get_tenant(spec.id)
    except TenantNotFoundError:
        tenant = None
    if tenant is not None:
        if tenant.status is TenantStatus.ACTIVE:
            return tenant
        if tenant.status is TenantStatus.SUSPENDED:
            return tenantry.resume_tenant(spec.id)
        resumable = (
            tenant.status is TenantStatus.PROVISIONING
            and tenant.isolation is spec.isolation
            and tenant.store == tenantry.default_store.name
        )
        if not resumable:  # a crashed delete, or provisioning elsewhere: start over
            tenantry.delete_tenant(spec.id)
    return tenantry.create_tenant(
        spec.id, name=spec.name, isolation=spec.isolation, settings={DEMO_SETTING: True}
    )


def _write_products(tenantry: Tenantry, spec: DemoTenant) -> None:
    """Insert the tenant's products that are missing, so re-runs keep exactly three."""
    with tenant_context(spec.id), tenantry.session() as session, session.begin():
        have = {product.name for product in session.scalars(select(DemoProduct))}
        for index, name in enumerate(spec.product_names):
            if name not in have:
                session.add(DemoProduct(name=name, price_cents=(index + 1) * 995))


def _what_tenant_sees(tenantry: Tenantry, spec: DemoTenant) -> dict[str, Any]:
    with tenant_context(spec.id), tenantry.session() as session:
        names = sorted(product.name for product in session.scalars(select(DemoProduct)))
    tenant = tenantry.get_tenant(spec.id)
    own = len(names) == PRODUCTS_PER_TENANT and all(n.startswith(spec.prefix) for n in names)
    return {
        "tenant": spec.id,
        "isolation": tenant.isolation.value,
        "store": tenant.store,
        "rows_visible": len(names),
        "names_visible": names,
        "only_own_rows": own,
    }


def _results_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="What each tenant sees through tenantry.session()", title_justify="left")
    for header in ("tenant", "isolation", "store"):
        table.add_column(header, no_wrap=True)
    table.add_column("rows visible", justify="right", no_wrap=True)
    table.add_column("names visible")
    table.add_column("only own rows?", justify="center", no_wrap=True)
    for row in rows:
        verdict = (
            Text("yes", style="bold green") if row["only_own_rows"] else Text("NO", "bold red")
        )
        table.add_row(
            Text(row["tenant"], style="bold"),
            Text(row["isolation"]),
            Text(row["store"]),
            Text(str(row["rows_visible"])),
            Text(", ".join(row["names_visible"])),
            verdict,
        )
    return table


def run_demo(tenantry: Tenantry, console: Console, *, reset: bool = True) -> list[dict[str, Any]]:
    """Provision the demo tenants, write as each, and report what each one can see.

    Returns one dict per tenant (``tenant``, ``isolation``, ``store``,
    ``rows_visible``, ``names_visible``, ``only_own_rows``); the caller decides
    what a failed check means (the CLI exits non-zero).
    """
    store = tenantry.default_store
    supported = tenantry.supported_modes()
    plan = [spec for spec in DEMO_TENANTS if spec.isolation in supported]
    console.print(
        Text.assemble(
            ("tenantry demo", "bold"),
            f" on store {store.name!r} ({store.config.masked_url}); isolation modes: ",
            ", ".join(mode.value for mode in supported),
        )
    )
    for spec in DEMO_TENANTS:
        if spec.isolation not in supported:
            console.print(
                f"skipping {spec.id!r}: {spec.isolation.value} isolation is not available "
                f"on {store.dialect}",
                style="yellow",
            )

    existing = _existing_demo_tenants(tenantry)
    if reset and existing:
        console.print(f"resetting {len(existing)} demo tenant(s) from an earlier run")
        for tenant in existing:
            # Gone meanwhile (a concurrent demo run) is already the state we want.
            with suppress(TenantNotFoundError):
                tenantry.delete_tenant(tenant.id)

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("provisioning demo tenants", total=len(plan))
        for spec in plan:
            progress.update(task, description=f"provisioning {spec.id} ({spec.isolation.value})")
            _ensure_tenant(tenantry, spec)
            progress.advance(task)
        progress.update(task, description="provisioned demo tenants")

    for spec in plan:
        _write_products(tenantry, spec)
    rows = [_what_tenant_sees(tenantry, spec) for spec in plan]

    console.print(_results_table(rows))
    leaked = [row["tenant"] for row in rows if not row["only_own_rows"]]
    if leaked:
        console.print(
            f"ISOLATION FAILURE: {', '.join(leaked)} saw rows that are not their own",
            style="bold red",
        )
    else:
        console.print(f"all {len(rows)} tenants saw exactly their own rows", style="green")
    console.print(f"demo data is in {data_location(store)}")
    return rows
