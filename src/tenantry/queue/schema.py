"""The ``jobs`` table, created in every database that holds tenant data.

Claiming reads only runnable rows, through partial indexes whose predicate
is the state: finished jobs (however many) are not in those indexes, so the
cost of a claim does not grow with history. Future work (``scheduled`` and
``retryable``) has its own partial index on ``scheduled_at`` for staging.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    false,
    text,
)
from sqlalchemy.dialects import postgresql

from tenantry.tenancy.models import TENANTRY_SCHEMA

queue_metadata = MetaData(schema=TENANTRY_SCHEMA)

_JSON = JSON().with_variant(postgresql.JSONB(), "postgresql")
_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite rowid aliasing needs INTEGER

# Prefixed: on SQLite tenantry's tables share the application's namespace.
jobs_table = Table(
    "tenantry_jobs",
    queue_metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("tenant_id", String(40), nullable=False),
    Column("queue", String(100), nullable=False, server_default="default"),
    Column("kind", String(200), nullable=False),
    Column("payload", _JSON, nullable=False),
    Column("priority", SmallInteger, nullable=False, server_default="0"),
    Column("state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("scheduled_at", DateTime(timezone=True), nullable=False),
    Column("attempted_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("lease_token", String(36)),
    Column("worker_id", String(100)),
    Column("errors", _JSON, nullable=False),
    Column("idempotency_key", String(200)),
    Column("correlation_id", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # SQLite: ids are never given again, even after the highest is pruned, and a
    # move can set the counter past the ids the tenant had elsewhere.
    sqlite_autoincrement=True,
)

_RUNNABLE = "state = 'available'"
_WAITING = "state IN ('scheduled', 'retryable')"
_PENDING = "state IN ('scheduled', 'available', 'running', 'retryable')"
#: The predicate of the idempotency index, as literals: an ON CONFLICT naming it
#: with bound parameters cannot be matched to the index under a generic plan
#: (psycopg prepares a statement after five runs on one connection).
IDEMPOTENCY_PREDICATE = f"idempotency_key IS NOT NULL AND {_PENDING}"

Index(
    "ix_tenantry_jobs_claim",
    jobs_table.c.queue,
    jobs_table.c.priority.desc(),
    jobs_table.c.scheduled_at,
    jobs_table.c.id,
    postgresql_where=text(_RUNNABLE),
    sqlite_where=text(_RUNNABLE),
)
# Fair claiming walks the tenants that have runnable jobs (a loose index scan
# over tenant_id) and takes each one's next jobs in priority order; ``queue``
# rides along (INCLUDE) so the queue filter needs no heap visit.
Index(
    "ix_tenantry_jobs_fair",
    jobs_table.c.tenant_id,
    jobs_table.c.priority.desc(),
    jobs_table.c.scheduled_at,
    jobs_table.c.id,
    postgresql_where=text(_RUNNABLE),
    postgresql_include=["queue"],
    sqlite_where=text(_RUNNABLE),
)
Index(
    "ix_tenantry_jobs_waiting",
    jobs_table.c.scheduled_at,
    postgresql_where=text(_WAITING),
    sqlite_where=text(_WAITING),
)
Index(
    "ix_tenantry_jobs_lease",
    jobs_table.c.lease_expires_at,
    postgresql_where=text("state = 'running'"),
    sqlite_where=text("state = 'running'"),
)
Index(
    "uq_tenantry_jobs_idempotency",
    jobs_table.c.tenant_id,
    jobs_table.c.idempotency_key,
    unique=True,
    postgresql_where=text(IDEMPOTENCY_PREDICATE),
    sqlite_where=text(IDEMPOTENCY_PREDICATE),
)
Index(
    "ix_tenantry_jobs_tenant_state", jobs_table.c.tenant_id, jobs_table.c.state, jobs_table.c.kind
)
Index(
    "ix_tenantry_jobs_finished",
    jobs_table.c.finished_at,
    postgresql_where=text("finished_at IS NOT NULL"),
    sqlite_where=text("finished_at IS NOT NULL"),
)

# One row per tenant with jobs in this database: its status, weight, limits and
# rate-limit bucket, readable by the claim SQL (see ``queue/control.py``).
control_table = Table(
    "tenantry_queue_tenants",
    queue_metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("weight", Integer, nullable=False, server_default="1"),
    Column("max_running", Integer),
    Column("rate", Float),  # job starts per second
    Column("burst", Float),
    # false(): 0 on SQLite, false on PostgreSQL (the string 'false' would be
    # stored as TEXT by SQLite and read back as True).
    Column("paused", Boolean, nullable=False, server_default=false()),
    Column("tokens", Float),
    Column("refilled_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
_LIMITED = "max_running IS NOT NULL OR rate IS NOT NULL"
Index(
    "ix_tenantry_queue_tenants_limited",
    control_table.c.tenant_id,
    postgresql_where=text(_LIMITED),
    sqlite_where=text(_LIMITED),
)


def create_queue_tables(conn: Connection) -> None:
    """Create missing tables and indexes (an index added in a later release too)."""
    queue_metadata.create_all(conn, checkfirst=True)
    for table in queue_metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)
