"""What a migration transaction does beside the scripts, on PostgreSQL.

Before the scripts: the transaction is pointed at the target's tables and, for
a tenant's schema or database, bound to that tenant, so that data migrations
see the tenant's rows through the forced row-level security.

After them: the tenant wall is put back over whatever the scripts created. New
tables get the grants and the tenant policy; a database or schema made by an
older tenantry gets the binding functions and the current policy.
"""

from __future__ import annotations

from sqlalchemy import Connection, MetaData, text

from tenantry.lifecycle.migrations.targets import Target, TargetKind
from tenantry.tenancy.binding import ENTER_SQL
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.isolation.wall import ensure_database_wall
from tenantry.tenancy.store import Store


def point_at_target(conn: Connection, store: Store, target: Target) -> None:
    """Unqualified names in migration scripts reach the target's tables, and only those.

    A schema tenant's path is its schema alone: with ``public`` on it, a
    table missing from the tenant schema would resolve to a shared table of
    the same name in ``public``, and the migration would alter that one.
    """
    if conn.dialect.name != "postgresql":
        return
    binder = store.prepare_wall()  # now, while this transaction holds no lock
    path = pg.quote(conn, target.schema) if target.schema else "public"
    if target.tenant_id is None:
        conn.execute(text("SELECT set_config('search_path', :p, true)"), {"p": path})
        return
    if target.kind is TargetKind.DATABASE:
        ensure_database_wall(conn, store)  # a database made before the binding existed
    binding = binder.binding(target.tenant_id, f"{path}, pg_temp")
    conn.execute(text(ENTER_SQL), binding.params)


def rebuild_wall(conn: Connection, store: Store, target: Target, metadata: MetaData) -> None:
    """Grants (and on tenant tables the tenant policy) on the target's tables, after its scripts."""
    if conn.dialect.name != "postgresql":
        return
    schema = target.schema or "public"
    pg.grant_access(conn, schema, store.session_grantee)
    if target.kind is not TargetKind.GLOBAL:
        pg.enable_rls(conn, metadata, schema, target.tenant_id)
