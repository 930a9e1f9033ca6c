"""One error hierarchy, rooted in :class:`TenantryError`.

Callers can catch ``TenantryError`` to handle everything tenantry raises, or a
leaf class for one situation. A class's docstring is its default message (as
plain text), so a
bare ``raise TenantNotSetError()`` still explains what went wrong.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

#: A database that is away, not a bug: SQLAlchemy's errors and the OS's. The
#: driver's own errors reach callers wrapped by SQLAlchemy; the few paths that
#: talk to psycopg directly translate its errors or catch them themselves, so
#: this module (and with it every SQLite-only program) never imports psycopg,
#: which comes with the 'postgres' extra only.
DB_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError)


class TenantryError(Exception):
    """A tenantry operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or _default_message(type(self)))


def _default_message(cls: type[TenantryError]) -> str:
    """A class's docstring as one line of plain text (its reStructuredText quoting dropped)."""
    return " ".join((cls.__doc__ or "").split()).replace("``", "'")


class ConfigError(TenantryError):
    """The tenantry configuration is invalid."""


class StoreNotFoundError(ConfigError):
    """No store with that name is configured."""


class TenantNotSetError(TenantryError):
    """No tenant is set in the current context.

    Wrap the work in ``with tenant_context("acme"):`` (or let the web middleware
    or the worker set it). tenantry never falls back to a default tenant.
    """


class InvalidTenantId(TenantryError, ValueError):
    """The tenant id is not valid: it must match ^[a-z][a-z0-9_]{0,39}$."""


class TenantNotFoundError(TenantryError, LookupError):
    """No tenant with that id is in the catalog."""


class TenantExistsError(TenantryError):
    """A tenant with that id already exists."""


class TenantUnavailableError(TenantryError):
    """The tenant exists but cannot be served in its current status."""


class TenantSuspendedError(TenantUnavailableError):
    """The tenant is suspended; its data cannot be opened until it is resumed."""


class TenantMigratingError(TenantUnavailableError):
    """The tenant's tables are being migrated; retry in a moment."""


class TenantMovingError(TenantUnavailableError):
    """The tenant is being moved to another store or mode; retry in a moment."""


class UnsupportedIsolation(TenantryError):
    """The store's database does not support this isolation mode."""


class IsolationError(TenantryError):
    """An operation would weaken tenant isolation, so it is refused.

    Raised, for example, when a tenant connection is switched to AUTOCOMMIT
    (its per-transaction tenant binding would not run), or when a store's
    session login could bypass row-level security (a superuser, a BYPASSRLS
    role or the owner of tenant tables).
    """


class UnguardedStatementError(IsolationError):
    """A statement would reach tenant tables without tenantry's tenant filter, so it is refused.

    On SQLite shared tables nothing but tenantry's ORM hooks keeps tenants
    apart: raw ``text()`` SQL, Core statements on tenant ``Table`` objects and
    ``ATTACH`` are refused unless the statement opts out by name with the
    ``tenantry_unguarded`` execution option.
    """


class CrossTenantAccessError(TenantryError):
    """An operation tried to read or write another tenant's rows."""


class GlobalTableJoinError(TenantryError):
    """One statement names global and tenant tables that live in different databases.

    A tenant session reaches global tables on the default store's database;
    a tenant with a database of its own (or on another store) has its tables
    elsewhere, and no single SQL statement reaches two databases.
    """


class InvalidIdentifierError(TenantryError, ValueError):
    """An SQL identifier built by tenantry is not valid."""


class TenantStateError(TenantryError):
    """The tenant is not in a status that allows this operation."""


class AuthenticationError(TenantryError):
    """The request's credential (a token or an API key) is not valid.

    Raised for a credential that was *presented* and failed: it is never
    treated as absent, so a bad credential cannot fall through to a weaker hint.
    """


class ApiKeyNotFoundError(TenantryError, LookupError):
    """No API key with that id exists (for this tenant)."""


class TenantResolutionError(TenantryError):
    """The request does not name its tenant in a usable way."""


class TenantRequiredError(TenantResolutionError):
    """This request must name a tenant (by credential, host or header) and names none."""


class AmbiguousTenantError(TenantResolutionError):
    """The request's tenant hints name different tenants."""


class TenantMismatchError(TenantResolutionError):
    """The request's credential belongs to a different tenant than its other hints name."""


class InvariantError(TenantryError, RuntimeError):
    """tenantry found its own state inconsistent: a bug in tenantry; please report it."""


class QueueError(TenantryError):
    """A job queue operation failed."""


class NoJobRegistryError(QueueError):
    """No job registry is loaded here, so job kinds and payloads cannot be checked.

    Start the service with ``--app module:registry`` to enqueue through it.
    """


class UnknownJobKind(QueueError, LookupError):
    """No handler is registered for this job kind."""


class PayloadValidationError(QueueError, ValueError):
    """The job payload does not match the handler's payload type."""


class JobNotFoundError(QueueError, LookupError):
    """No job with that id exists for this tenant."""


class QueueUnavailableError(QueueError):
    """The queue's database could not be reached; the job was NOT enqueued."""


class LeaseLostError(QueueError):
    """The job's lease was taken over (expired or released); this attempt's result is void."""


class JobStateError(QueueError):
    """The job is not in a state that allows this operation."""


class MigrationError(TenantryError):
    """A schema migration could not be run."""


class ExportError(TenantryError):
    """A tenant export or import failed."""


class ExportCorruptError(ExportError):
    """The export file is damaged or truncated; nothing was imported."""


class ExportChecksumError(ExportCorruptError):
    """The export file's content does not match its checksums; nothing was imported."""


class ExportFormatError(ExportError):
    """The export file is not in a format (or format version) this tenantry reads."""


class ExportRevisionError(ExportError):
    """The export was taken at another migration revision than this application's head."""


class BackupError(TenantryError):
    """A tenant backup could not be made."""


class MoveError(TenantryError):
    """A tenant move cannot start, go on or be verified."""


class JobTimeoutError(TenantryError, TimeoutError):
    """The handler ran longer than its timeout; the attempt counts as failed."""
