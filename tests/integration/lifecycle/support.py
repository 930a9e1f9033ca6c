"""Alembic histories written by the tests, and a configuration that points at them."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

from tenantry import TenantryConfig
from tenantry.lifecycle.migrations.scaffold import scaffold


def make_histories(root: Path) -> tuple[Path, Path]:
    """Empty tenant and global histories (``tenantry migrate init``)."""
    scaffold(root)
    return root / "tenant", root / "global"


def add_revision(
    history: Path, revision: str, down: str | None, upgrade: str, *, imports: str = ""
) -> Path:
    """Write one revision script whose ``upgrade()`` body is *upgrade*."""
    body = textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")
    path = history / "versions" / f"{revision}.py"
    path.write_text(
        "import sqlalchemy as sa\n"
        "from alembic import op\n"
        f"{imports}\n"
        f"revision = {revision!r}\n"
        f"down_revision = {down!r}\n"
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        f"def upgrade() -> None:\n{body}\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )
    return path


#: A migration like the benchmark's: a column and an index on a tenant table.
ADD_COLOR = """
op.add_column("notes", sa.Column("color", sa.String(20), nullable=True))
op.create_index("ix_notes_color", "notes", ["color"])
"""

#: Fails for a tenant whose notes have duplicate bodies.
UNIQUE_BODY = """
op.create_index("uq_notes_body", "notes", ["body"], unique=True)
"""

#: A global-table migration.
ADD_PLAN_PRICE = """
op.add_column("plans", sa.Column("price_cents", sa.Integer, nullable=True))
"""


def with_migrations(
    config: TenantryConfig, tenant: Path | None, global_: Path | None
) -> TenantryConfig:
    return replace(
        config,
        tenant_migrations=None if tenant is None else str(tenant),
        global_migrations=None if global_ is None else str(global_),
    )
