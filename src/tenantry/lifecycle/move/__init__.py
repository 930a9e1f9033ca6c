"""Moving a tenant to another store or isolation mode, resumable after a crash.

A move copies the tenant twice: once in bulk while it is still served, and
then, paused, only what changed since. The pause therefore lasts as long as
comparing the two copies and writing the difference, not as long as the
whole copy. Progress is persisted in ``tenantry_moves`` beside the catalog,
and the catalog row points at exactly one copy at every moment:

1. **start**: the move row is written (step ``bulk``). The tenant keeps its
   status: sessions and jobs go on against the old copy.
2. **bulk copy** (served): whatever an earlier attempt left at the target is
   removed; the target storage is provisioned; the tenant's tables are
   exported (one snapshot, streamed to a file) and loaded into the target in
   one transaction. Its jobs are not copied yet: they keep running.
3. **pause**: the tenant becomes ``moving`` and the step ``copying``, in one
   catalog transaction (sessions refuse with the retryable
   :class:`~tenantry.errors.TenantMovingError`, the queue stops starting its
   jobs). The move waits for other processes' catalog caches to expire, for
   the tenant's running jobs to finish and, on PostgreSQL, for transactions
   begun before then to end: the pause window starts here.
4. **delta**: per table, every row of both copies is reduced to its key and
   a hash of its values; rows only in the target are deleted, rows whose
   hash differs are updated, rows only in the source are inserted. The
   unfinished jobs are copied (replacing any the target got from an earlier
   attempt). All of it is one target transaction. No triggers are installed:
   nothing has to be removed again when a move crashes or is aborted, and it
   works the same in every mode and on SQLite.
5. **verify**: the target is read again and every row's key and hash must
   equal the source's (which implies equal row counts and equal contents),
   and so must the unfinished jobs' count and digest.
6. **switch**: the tenant's store and mode, and the move's step, change in
   one catalog transaction. From here the target copy is the tenant.
7. **clean up**: the old copy is removed; the tenant gets its status from
   before the pause back, and the move row is deleted (one transaction).

When the target is shared tables, surrogate keys are renumbered on the way
in (other tenants' rows own the old numbers). The delta must still find each
copied row, so the renumbering is kept in ``tenantry_move_keys`` on the
target store, written in the same transaction as the rows it describes, and
removed with the move.

A crash during the bulk copy leaves the tenant served from the old copy;
running the move again starts the bulk copy over (``abort=True`` removes the
partial target). A crash in the pause leaves the catalog on the old copy,
which was only read: running the move again computes the delta again against
whatever the target holds (or ``abort=True`` removes it and serves the old
copy again). A crash after the switch leaves the catalog on the new copy:
running the move again finishes the clean-up.
"""

from __future__ import annotations

from tenantry.lifecycle.export import Progress
from tenantry.lifecycle.move.delta import TableDelta
from tenantry.lifecycle.move.keys import move_keys_table
from tenantry.lifecycle.move.state import Move, MoveStep, read_move
from tenantry.lifecycle.move.steps import STEPS, MoveResult, StepHook, move_tenant

__all__ = [
    "STEPS",
    "Move",
    "MoveResult",
    "MoveStep",
    "Progress",
    "StepHook",
    "TableDelta",
    "move_keys_table",
    "move_tenant",
    "read_move",
]
