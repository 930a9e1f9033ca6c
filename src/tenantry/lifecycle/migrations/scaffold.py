"""``tenantry migrate init DIR``: the two Alembic script directories an application keeps.

``tenantry migrate`` runs the revision scripts itself (see ``history.py``), so
the generated ``env.py`` is only for the ``alembic`` command: ``alembic
revision`` needs none, ``alembic revision --autogenerate`` compares the models
with a reference (:mod:`.autogen`), ``alembic upgrade --sql`` renders a script
for review, and an online ``alembic upgrade`` is refused, because it would
migrate one database's default schema and no tenant.
"""

from __future__ import annotations

from pathlib import Path

from tenantry.errors import MigrationError
from tenantry.lifecycle.migrations.history import GLOBAL_VERSION_TABLE, TENANT_VERSION_TABLE

_INI = """\
# Alembic settings for the {kind} history of a tenantry application.
# New revision:  tenantry migrate revision{flag} --autogenerate -m "add products.sku"
#           or:  alembic -c {ini} revision --autogenerate -m "add products.sku"
# Apply:         tenantry migrate        (not `alembic upgrade`)
[alembic]
script_location = %(here)s
file_template = %%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s
# The working directory, so that tenantry.toml's "module:attr" models import.
prepend_sys_path = .
path_separator = os
"""

_ENV = '''\
"""Alembic environment of the {kind} history, for the `alembic` command only.

`tenantry migrate` runs these revisions itself, on {where},
each with its own version table ({table}).
"""

from alembic import context

if getattr(context.config.cmd_opts, "autogenerate", False):
    # `alembic revision --autogenerate`: the models named in tenantry.toml compared
    # with a reference (-x reference=ID picks the tenant; docs/operations.md).
    from tenantry import Tenantry
    from tenantry.lifecycle.migrations.autogen import run_in_env

    with Tenantry() as tenantry:
        run_in_env(context, tenantry, "{kind}")
elif not context.is_offline_mode():
    raise SystemExit(
        "apply these migrations with `tenantry migrate`: it migrates {where}"
    )
else:
    # `alembic upgrade head --sql`: the SQL for review, as PostgreSQL.
    context.configure(
        dialect_name="postgresql",
        version_table="{table}",
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
'''

_TENANT_NOTE = """\
# Tenant tables: write names UNQUALIFIED (op.add_column("products", ...)).
# tenantry runs this script once per tenant schema/database (and once per store
# for shared tables) with search_path set to that schema: an unqualified name
# is the tenant's table. schema="tenantry_tenant" is NOT translated by Alembic's
# DDL and fails (schema "tenantry_tenant" does not exist).
"""

_SCRIPT = '''\
"""${{message}}

Revision ID: ${{up_revision}}
Revises: ${{down_revision | comma,n}}
Create Date: ${{create_date}}

"""
{note}from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${{imports if imports else ""}}

revision: str = ${{repr(up_revision)}}
down_revision: str | Sequence[str] | None = ${{repr(down_revision)}}
branch_labels: str | Sequence[str] | None = ${{repr(branch_labels)}}
depends_on: str | Sequence[str] | None = ${{repr(depends_on)}}


def upgrade() -> None:
    ${{upgrades if upgrades else "pass"}}


def downgrade() -> None:
    ${{downgrades if downgrades else "pass"}}
'''

_KINDS = {
    "tenant": (
        TENANT_VERSION_TABLE,
        "every tenant schema and database and on each store's shared tables",
        _TENANT_NOTE,
    ),
    "global": (GLOBAL_VERSION_TABLE, "the default store's global tables", ""),
}


def scaffold(directory: str | Path) -> list[Path]:
    """Create ``DIR/tenant`` and ``DIR/global``; refuses to overwrite anything."""
    root = Path(directory)
    written: list[Path] = []
    for kind in _KINDS:
        target = root / kind
        if target.exists() and any(target.iterdir()):
            raise MigrationError(f"{target} exists and is not empty; nothing was written")
    for kind, (table, where, note) in _KINDS.items():
        target = root / kind
        (target / "versions").mkdir(parents=True, exist_ok=True)
        files = {
            "alembic.ini": _INI.format(
                kind=kind,
                ini=target / "alembic.ini",
                flag=" --global" if kind == "global" else "",
            ),
            "env.py": _ENV.format(kind=kind, where=where, table=table),
            "script.py.mako": _SCRIPT.format(note=note),
        }
        for name, text in files.items():
            path = target / name
            path.write_text(text)
            written.append(path)
        keep = target / "versions" / ".gitkeep"
        keep.touch()
        written.append(keep)
    return written
