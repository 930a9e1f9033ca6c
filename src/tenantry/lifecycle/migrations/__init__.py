"""Per-tenant schema migrations with Alembic: two histories, many targets (docs/operations.md)."""
