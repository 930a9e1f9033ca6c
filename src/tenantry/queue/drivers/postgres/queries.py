"""Every statement of the PostgreSQL driver, one named constant each, built at import.

The hot path is plain SQL: fixed statement texts skip SQLAlchemy's per-call
statement building and let psycopg prepare them server-side after a few
runs. A statement that depends on the claim's filters (one queue or several,
all tenants or some) is a tuple of its four texts, indexed by ``variant``;
each is rendered once, here, from the one template below it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tenantry.queue.drivers.postgres.rows import CLAIMED_SQL, WRITTEN

CHANNEL = "tenantry_jobs"

# Settings of the sessions that claim jobs. The claim statements are prepared
# once per connection and their plans must not depend on statistics: a plan
# made while the jobs table looked empty (never analysed, right after a bulk
# enqueue) is kept for the connection's life. Every scan in them has one right
# index, the one whose order the scan needs, so sorting is made the planner's
# last resort (``enable_sort = off``: the remaining sorts are the small ones no
# index can replace). That adds a large constant to such plans' cost estimate,
# which would cross ``jit_above_cost`` and JIT-compile each claim, so JIT is
# off: nothing in a claim runs long enough to pay it back. No parallel plans
# either: the fair claim relies on an Append returning its arms in order (a
# tenant's head priority first, then lower ones).
CLAIM_SESSION_SETTINGS: dict[str, str] = {
    "plan_cache_mode": "force_generic_plan",
    "enable_sort": "off",
    "jit": "off",
    "max_parallel_workers_per_gather": "0",
}
#: The settings as libpq connection options (the claim engine's sessions).
CLAIM_SESSION_OPTIONS = " ".join(f"-c {k}={v}" for k, v in CLAIM_SESSION_SETTINGS.items())
#: Execution option of engines whose sessions carry ``CLAIM_SESSION_SETTINGS``.
GENERIC_PLANS = "tenantry_generic_plans"
#: The settings for one transaction, on a connection that lacks them.
CLAIM_SET_LOCAL = "; ".join(f"SET LOCAL {k} = {v}" for k, v in CLAIM_SESSION_SETTINGS.items())
#: Execution option of engines behind a transaction-mode pooler: no startup
#: ``options`` (refused), no session settings (lost), so each claim
#: transaction opens with ``CLAIM_BEGIN``.
SETTINGS_PER_TRANSACTION = "tenantry_claim_settings_per_transaction"
#: ``BEGIN`` and the settings, transaction-local, in one simple-protocol round trip.
CLAIM_BEGIN = "BEGIN; SELECT " + ", ".join(
    f"pg_catalog.set_config('{k}', '{v}', true)" for k, v in CLAIM_SESSION_SETTINGS.items()
)

Variants = tuple[str, str, str, str]


def variant(queues: Sequence[str], tenants: Sequence[str] | None) -> int:
    """Which of a statement's ``Variants`` serves these claim filters."""
    return (2 if len(queues) == 1 else 0) + (0 if tenants is None else 1)


def _variants(template: str) -> Variants:
    """*template* rendered for each ``variant``, filters filled in.

    With one queue, a plain equality keeps the ordered partial-index scan.
    In the fair claim, ``IS TRUE`` keeps the queue filter from being an index
    condition: as one, it let a per-tenant scan (``tenant_id = x``, so ordered
    by priority, scheduled_at, id) run on the FIFO index (queue, priority,
    scheduled_at, id) without a sort, filtering tenant_id: reading every other
    tenant's runnable jobs on the way. A generic plan made before the table
    had statistics chose that (a regression test has it). Then only
    ix_tenantry_jobs_fair serves those scans without a sort.
    """
    rendered: list[str] = []
    for one_queue in (False, True):
        for by_tenant in (False, True):
            queue = "%(queue)s" if one_queue else "ANY(%(queues)s)"
            tenant = " AND {}tenant_id = ANY(%(tenants)s)" if by_tenant else ""
            rendered.append(
                template.format(
                    queue=f"queue = {queue}",
                    queue_j=f"(j.queue = {queue}) IS TRUE",
                    queue_j2=f"(j2.queue = {queue}) IS TRUE",
                    tenant=tenant.format(""),
                    tenant_j=tenant.format("j."),
                    tenant_c=tenant.format("c."),
                    claimed=CLAIMED_SQL,
                )
            )
    return (rendered[0], rendered[1], rendered[2], rendered[3])


# Strict priority-then-FIFO across tenants. ``id = ANY(ARRAY(subquery))`` runs
# the locking subquery once (an InitPlan) and reaches the chosen rows through
# the primary key. A join against a CTE would do too with a custom plan, but
# psycopg prepares the statement after a few runs, and PostgreSQL's generic
# plan, which cannot see the LIMIT's value, guesses it large and hash-joins
# the whole table: claim cost would grow with the table.
CLAIM_FIFO = _variants("""
UPDATE tenantry.tenantry_jobs AS j
SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
    lease_expires_at = now() + make_interval(secs => %(lease)s),
    lease_token = %(token)s, worker_id = %(worker)s
WHERE j.id = ANY(ARRAY(
    SELECT id FROM tenantry.tenantry_jobs
    WHERE state = 'available' AND {queue}{tenant}
    ORDER BY priority DESC, scheduled_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
RETURNING {claimed}
""")

# Claims for tenants with a concurrency or rate limit are serialised per
# tenant: this statement locks their control rows first (skipping rows another
# worker is claiming for right now), so the claim statement, whose snapshot is
# taken after, counts every job other workers started for them. Counting
# inside one statement alone could not see a concurrent claim's jobs.
LOCK_LIMITED = _variants("""
SELECT c.tenant_id FROM tenantry.tenantry_queue_tenants c
WHERE (c.max_running IS NOT NULL OR c.rate IS NOT NULL) AND NOT c.paused{tenant_c}
  AND EXISTS (
      SELECT 1 FROM tenantry.tenantry_jobs j
      WHERE j.tenant_id = c.tenant_id AND j.state = 'available' AND {queue_j}
  )
ORDER BY c.tenant_id
FOR UPDATE OF c SKIP LOCKED
""")

# Fair claim (see ``queue/fairness.py`` for the rule), one statement:
# ``ahead``,   a window of up to ``window`` tenants with runnable jobs, in
# ``behind``   tenant id order from ``after`` on, wrapping around to the
#              start, each with its next job (``head``, ``prio``, ``head_id``):
#              a loose index scan, one probe per tenant, however long any
#              tenant's backlog is. With more busy tenants than the window,
#              the worker moves ``after`` on from claim to claim, so the cost
#              of a claim stays bounded with many busy tenants and every
#              tenant's turn comes (FAIR_WINDOW);
# ``ctl``      per busy tenant: its control row (paused tenants drop out,
#              limited ones only if this transaction holds their row lock,
#              see LOCK_LIMITED), ``held`` (its jobs this worker holds), and
#              its ``allowance`` now (batch size, concurrency limit, whole
#              rate tokens). The control row is one primary-key probe per busy
#              tenant (LIMIT 1 keeps the subquery from being flattened into a
#              join): as a plain join, the planner, which cannot know how many
#              tenants the window holds, hashed the whole control table at
#              every claim;
# ``firsts``   the ``limit`` tenants whose first job comes first in virtual
#              time: no other tenant can get a place in this batch, so only
#              these are looked at further, however many tenants are busy;
# ``quota``    their runnable jobs counted up to the allowance, the batch in
#              virtual-time order, counted per tenant;
# ``claimed``  each tenant's next ``quota`` jobs by priority, ``SKIP LOCKED``,
#              moved to running (reached by primary key);
# ``spent``    takes the started jobs out of rate-limit buckets.
# Few CTE stages: each costs executor time, and this runs once per batch.
#
# Every per-tenant scan orders by the full key of ix_tenantry_jobs_fair, so
# that index is the one plan that needs no sort: with ``tenant_id = <outer
# row>`` the planner cannot tell how many rows a tenant has, and without the
# ORDER BY it may pick a scan that reads every runnable job (a generic plan
# did exactly that). The claim sessions make sorting the planner's last
# resort (CLAIM_SESSION_SETTINGS).
#
# A tenant's jobs are read from its head job on, in two arms: its head's
# priority from the head's position on (a row comparison the index can seek
# to), then every lower priority (a fresh descent). In index order the head is
# where the tenant's runnable entries start; before it lie the entries of jobs
# already claimed, dead until vacuum, which a scan from the tenant's first
# entry would walk at every claim: a long backlog would slow claims down.
# Exact within the statement: its snapshot has no runnable job of the tenant
# before the head. Each arm is a subquery of its own: a locking clause may not
# sit on a UNION's arm.
CLAIM_FAIR = _variants("""
WITH RECURSIVE ahead(tenant_id, head, prio, head_id, n) AS (
    (SELECT x.*, 1 FROM (
        SELECT j.tenant_id, j.scheduled_at, j.priority, j.id FROM tenantry.tenantry_jobs j
        WHERE j.state = 'available' AND {queue_j}{tenant_j} AND j.tenant_id > %(after)s
        ORDER BY j.tenant_id, j.priority DESC, j.scheduled_at, j.id LIMIT 1
    ) x)
    UNION ALL
    SELECT x.*, a.n + 1
    FROM ahead a CROSS JOIN LATERAL (
        SELECT j.tenant_id, j.scheduled_at, j.priority, j.id FROM tenantry.tenantry_jobs j
        WHERE j.state = 'available' AND {queue_j}{tenant_j} AND j.tenant_id > a.tenant_id
        ORDER BY j.tenant_id, j.priority DESC, j.scheduled_at, j.id LIMIT 1
    ) x
    WHERE a.n < %(window)s
), behind(tenant_id, head, prio, head_id, n) AS (
    (SELECT x.*, 1 FROM (
        SELECT j.tenant_id, j.scheduled_at, j.priority, j.id FROM tenantry.tenantry_jobs j
        WHERE j.state = 'available' AND {queue_j}{tenant_j}
          AND j.tenant_id > '' AND j.tenant_id <= %(after)s
        ORDER BY j.tenant_id, j.priority DESC, j.scheduled_at, j.id LIMIT 1
    ) x
     WHERE (SELECT count(*) FROM ahead) < %(window)s)
    UNION ALL
    SELECT x.*, b.n + 1
    FROM behind b CROSS JOIN LATERAL (
        SELECT j.tenant_id, j.scheduled_at, j.priority, j.id FROM tenantry.tenantry_jobs j
        WHERE j.state = 'available' AND {queue_j}{tenant_j}
          AND j.tenant_id > b.tenant_id AND j.tenant_id <= %(after)s
        ORDER BY j.tenant_id, j.priority DESC, j.scheduled_at, j.id LIMIT 1
    ) x
    WHERE b.n + (SELECT count(*) FROM ahead) < %(window)s
), busy AS (
    SELECT tenant_id, head, prio, head_id FROM ahead
    UNION ALL SELECT tenant_id, head, prio, head_id FROM behind
), ctl AS (
    SELECT b.tenant_id, b.head, b.prio, b.head_id,
           coalesce(c.weight, 1) AS weight, coalesce(h.n, 0) AS held,
           lvl.level,
           greatest(0, least(
               %(limit)s,
               CASE WHEN c.max_running IS NULL THEN %(limit)s
                    ELSE c.max_running - (
                        SELECT count(*)::int FROM tenantry.tenantry_jobs r
                        WHERE r.tenant_id = b.tenant_id AND r.state = 'running')
               END,
               coalesce(floor(lvl.level + 1e-9)::int, %(limit)s))) AS allowance
    FROM busy b
    LEFT JOIN LATERAL (
        SELECT * FROM tenantry.tenantry_queue_tenants c WHERE c.tenant_id = b.tenant_id LIMIT 1
    ) c ON true
    LEFT JOIN unnest(%(held_tenants)s::text[], %(held_counts)s::float8[]) AS h(tenant_id, n)
           ON h.tenant_id = b.tenant_id
    CROSS JOIN LATERAL (
        SELECT CASE WHEN c.rate IS NOT NULL THEN least(
            c.burst,
            coalesce(c.tokens, c.burst)
            + extract(epoch FROM now() - coalesce(c.refilled_at, now()))::float8 * c.rate
        ) END AS level
    ) lvl
    WHERE NOT coalesce(c.paused, false)
      AND ((c.max_running IS NULL AND c.rate IS NULL) OR b.tenant_id = ANY(%(locked)s::text[]))
), firsts AS (
    SELECT * FROM ctl WHERE allowance > 0
    ORDER BY (held + 1)::float8 / weight, head, tenant_id
    LIMIT %(limit)s
), quota AS (
    SELECT s.tenant_id, s.prio, s.head, s.head_id, count(*)::int AS q FROM (
        SELECT f.tenant_id, f.prio, f.head, f.head_id FROM firsts f
        CROSS JOIN LATERAL (
            SELECT count(*)::int AS n FROM (
                SELECT 1 FROM (
                    SELECT * FROM (
                        SELECT j.id FROM tenantry.tenantry_jobs j
                        WHERE j.state = 'available' AND {queue_j}
                          AND j.tenant_id = f.tenant_id AND j.priority = f.prio
                          AND (j.scheduled_at, j.id) >= (f.head, f.head_id)
                        ORDER BY j.tenant_id, j.priority DESC, j.scheduled_at, j.id
                        LIMIT f.allowance
                    ) a
                    UNION ALL
                    SELECT * FROM (
                        SELECT j.id FROM tenantry.tenantry_jobs j
                        WHERE j.state = 'available' AND {queue_j}
                          AND j.tenant_id = f.tenant_id AND j.priority < f.prio
                        ORDER BY j.tenant_id, j.priority DESC, j.scheduled_at, j.id
                        LIMIT f.allowance
                    ) b
                ) u
                LIMIT f.allowance
            ) s
        ) x
        CROSS JOIN LATERAL generate_series(1, x.n) AS k
        ORDER BY (f.held + k)::float8 / f.weight, f.head, f.tenant_id
        LIMIT %(limit)s
    ) s
    GROUP BY s.tenant_id, s.prio, s.head, s.head_id
), claimed AS (
    UPDATE tenantry.tenantry_jobs AS j
    SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
        lease_expires_at = now() + make_interval(secs => %(lease)s),
        lease_token = %(token)s, worker_id = %(worker)s
    WHERE j.id = ANY(ARRAY(
        SELECT p.id FROM quota CROSS JOIN LATERAL (
            SELECT u.id FROM (
                SELECT * FROM (
                    SELECT j2.id FROM tenantry.tenantry_jobs j2
                    WHERE j2.state = 'available' AND {queue_j2}
                      AND j2.tenant_id = quota.tenant_id AND j2.priority = quota.prio
                      AND (j2.scheduled_at, j2.id) >= (quota.head, quota.head_id)
                    ORDER BY j2.tenant_id, j2.priority DESC, j2.scheduled_at, j2.id
                    LIMIT quota.q FOR UPDATE SKIP LOCKED
                ) a
                UNION ALL
                SELECT * FROM (
                    SELECT j2.id FROM tenantry.tenantry_jobs j2
                    WHERE j2.state = 'available' AND {queue_j2}
                      AND j2.tenant_id = quota.tenant_id AND j2.priority < quota.prio
                    ORDER BY j2.tenant_id, j2.priority DESC, j2.scheduled_at, j2.id
                    LIMIT quota.q FOR UPDATE SKIP LOCKED
                ) b
            ) u
            LIMIT quota.q
        ) p
    ))
    RETURNING {claimed}
), spent AS (
    UPDATE tenantry.tenantry_queue_tenants AS c
    SET tokens = ctl.level - s.n, refilled_at = now()
    FROM (SELECT tenant_id, count(*)::int AS n FROM claimed GROUP BY tenant_id) s, ctl
    WHERE c.tenant_id = s.tenant_id AND ctl.tenant_id = s.tenant_id AND ctl.level IS NOT NULL
)
SELECT * FROM claimed
""")

# Lease statements fence on the token: one statement per token (a claimed
# batch shares one), reaching the rows by primary key (``id = ANY``). Joining
# against unnest(ids, tokens) instead left the plan to statistics: one scanned
# the whole partial lease index (an entry for every job ever claimed until
# vacuum), another rescanned the unnest per row (quadratic). ``IS TRUE`` keeps
# the state test from matching that partial index.
COMPLETE = """
UPDATE tenantry.tenantry_jobs AS j
SET state = 'completed', finished_at = now(), lease_expires_at = NULL, lease_token = NULL
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.lease_token = %(token)s
  AND (j.state = 'running') IS TRUE
RETURNING j.id
"""
# Renewal never waits for a row lock (SKIP LOCKED), so it can never be one side
# of a deadlock: completions, failures, releases and cancels lock the same rows,
# several per transaction and in no common order (one statement per token, in
# the order jobs finished). A row locked by one of them is being written right
# now and is not renewed this time; it is still returned (``held``: the
# statement's snapshot, taken before the lock) so that the worker does not take
# a job it is completing for lost. Whoever holds the lock settles the row: the
# completion's own fencing, or the next heartbeat.
EXTEND = """
WITH held AS MATERIALIZED (
    SELECT j.id FROM tenantry.tenantry_jobs AS j
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.lease_token = %(token)s
      AND (j.state = 'running') IS TRUE
), extended AS (
    UPDATE tenantry.tenantry_jobs AS j
    SET lease_expires_at = now() + make_interval(secs => %(lease)s)
    WHERE j.id IN (
        SELECT l.id FROM tenantry.tenantry_jobs AS l
        WHERE l.id = ANY(%(ids)s::bigint[]) AND l.lease_token = %(token)s
          AND (l.state = 'running') IS TRUE
        FOR UPDATE SKIP LOCKED
    ) AND j.lease_token = %(token)s AND (j.state = 'running') IS TRUE
    RETURNING j.id
)
SELECT id FROM held
"""
RELEASE = """
UPDATE tenantry.tenantry_jobs AS j
SET state = 'available', attempt = j.attempt - 1, lease_expires_at = NULL,
    lease_token = NULL, worker_id = NULL
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.lease_token = %(token)s
  AND (j.state = 'running') IS TRUE
RETURNING j.id
"""

_NAMES = ", ".join(c for c, _ in WRITTEN)

# Bulk enqueue: one INSERT over parallel arrays (one bound parameter per
# column, however many rows), like River's and pgqueuer's UNNEST inserts.
# Rows are inserted in array order, so identity values are assigned in that
# order too: the returned ids, sorted, pair with the rows.
BULK_INSERT = (
    f"INSERT INTO tenantry.tenantry_jobs ({_NAMES}) "
    f"SELECT {', '.join(f'{c}::{t}' for c, t in WRITTEN)} FROM unnest("
    + ", ".join(f"%({c})s::{'text' if t == 'jsonb' else t}[]" for c, t in WRITTEN)
    + f") WITH ORDINALITY AS r({_NAMES}, n) ORDER BY n RETURNING id"
)

# The same INSERT and the NOTIFY in one statement: an enqueue outside a
# transaction is then one round trip. The uncorrelated subquery is a one-time
# filter, run once per statement whatever the number of rows.
BULK_INSERT_NOTIFY = (
    f"WITH ins AS ({BULK_INSERT}), "
    "wake AS (SELECT pg_notify(%(channel)s, q) FROM unnest(%(wake)s::text[]) AS q) "
    "SELECT id FROM ins WHERE (SELECT count(*) FROM wake) >= 0"
)

# One job outside a transaction: one row, scalar parameters (far cheaper to
# dump than one-element arrays), and the NOTIFY in the same statement, so the
# autocommitted statement is the transaction. The casts fix the parameter
# types, so psycopg's prepared statement (after five runs on a connection) is
# one whatever the values. Parameters: ``WRITTEN`` in order, channel, queue.
INSERT_ONE_NOTIFY = (
    f"WITH ins AS (INSERT INTO tenantry.tenantry_jobs ({_NAMES}) "
    f"VALUES ({', '.join(f'%s::{t}' for _, t in WRITTEN)}) RETURNING id) "
    "SELECT id, pg_notify(%s, %s) FROM ins"
)
#: ``INSERT_ONE_NOTIFY`` with libpq's ``$n`` placeholders, prepared by the fast path.
INSERT_ONE_LIBPQ = "".join(
    f"${i}{part}" if i else part for i, part in enumerate(INSERT_ONE_NOTIFY.split("%s"))
)

#: Wake the workers of one queue once the transaction commits.
NOTIFY = "SELECT pg_notify(%(channel)s, %(queue)s)"

# Bulk enqueue through tenantry's own connection: COPY (measured: see
# docs/performance.md). COPY returns no ids, so they are drawn from the
# sequence first, in order. A COPY row is id, payload, then the columns every
# row of one ``enqueue_many`` shares.
COPY_SHARED: tuple[str, ...] = tuple(c for c, _ in WRITTEN if c != "payload")
COPY_JOBS = (
    f"COPY tenantry.tenantry_jobs (id, payload, {', '.join(COPY_SHARED)}) "
    "FROM STDIN (FORMAT binary)"
)
# The sequence is looked up once (the OFFSET 0 keeps the planner from pulling
# the lookup into the per-row call, where it would cost most of the draw).
NEXT_IDS = (
    "SELECT array(SELECT nextval(s.seq) FROM "
    "(SELECT pg_get_serial_sequence('tenantry.tenantry_jobs', 'id')::regclass AS seq OFFSET 0)"
    " AS s, generate_series(1, %(n)s))"
)

#: Every statement text by name, variants as ``NAME[i]``: for tests that check them all.
STATEMENTS: dict[str, str] = {
    **{f"CLAIM_FIFO[{i}]": s for i, s in enumerate(CLAIM_FIFO)},
    **{f"LOCK_LIMITED[{i}]": s for i, s in enumerate(LOCK_LIMITED)},
    **{f"CLAIM_FAIR[{i}]": s for i, s in enumerate(CLAIM_FAIR)},
    "COMPLETE": COMPLETE,
    "EXTEND": EXTEND,
    "RELEASE": RELEASE,
    "BULK_INSERT": BULK_INSERT,
    "BULK_INSERT_NOTIFY": BULK_INSERT_NOTIFY,
    "INSERT_ONE_NOTIFY": INSERT_ONE_NOTIFY,
    "NOTIFY": NOTIFY,
    "COPY_JOBS": COPY_JOBS,
    "NEXT_IDS": NEXT_IDS,
}
