"""``tenantry doctor``: check that a deployment's tenants are walled off as designed.

The wall between tenants on PostgreSQL is made of several parts that a DBA, a
migration or a hurried fix can each undo without any test failing: row-level
security switched off on one table, a policy dropped, the session login made a
superuser or given ``CREATE`` on ``public``, a unique key or foreign key without
``tenant_id`` (constraints see every tenant's rows, RLS or not). Each part is
cheap to check from the system catalogs, so this package checks all of them, per
store database, per tenant database (database mode) and per tenant schema
(schema mode), and says for each problem the SQL or setting that fixes it.

It reads only: the configuration, the tenant catalog (through the
:class:`~tenantry.tenancy.facade.Tenancy` facade) and the system catalogs,
through each store's admin login. It changes nothing, so that a finding is
never hidden by the check itself repairing it (the session engine of a
one-URL store would set the login up first: the admin engine is used).

On SQLite there is one question: whether shared-mode tenants have a wall below
the ORM filter (the statement guard of :mod:`tenantry.tenancy.sqlite_guard`).

The modules, one per part: :mod:`.run` walks the stores and databases,
:mod:`.wall` checks the binding functions and policies, :mod:`.login` the
session login and its grants, :mod:`.keys` the keys of shared tables,
:mod:`.config` the settings (passwords, pooler), :mod:`.sqlite` the SQLite
guard; :mod:`.findings` is what they report and :mod:`.tables` what they read.
"""

from __future__ import annotations

from tenantry.tenancy.doctor.config import PGBOUNCER_PORT, config_findings, pooler_suspected
from tenantry.tenancy.doctor.findings import Finding, Severity, failed
from tenantry.tenancy.doctor.login import session_login
from tenantry.tenancy.doctor.run import DoctorProgress, checkable, diagnose
from tenantry.tenancy.doctor.tables import JOBS_TABLES
from tenantry.tenancy.doctor.wall import CURRENT_TENANT_CALL, WALL_POLICY, is_wall_predicate

__all__ = [
    "CURRENT_TENANT_CALL",
    "JOBS_TABLES",
    "PGBOUNCER_PORT",
    "WALL_POLICY",
    "DoctorProgress",
    "Finding",
    "Severity",
    "checkable",
    "config_findings",
    "diagnose",
    "failed",
    "is_wall_predicate",
    "pooler_suspected",
    "session_login",
]
