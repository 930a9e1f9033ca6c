"""Property-based isolation: random interleavings by three tenants never cross over.

Hypothesis generates sequences of inserts, updates, deletes and reads, each by
one of three tenants, including updates and deletes aimed at row ids that
belong to *other* tenants. A plain dict models what each tenant should see;
after every step every tenant's visible rows must equal its model exactly.
"""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, text, update

from tenantry import Tenantry, tenant_context
from tests.conftest import ALL_CASES, TenantryFactory
from tests.models import Note

TENANTS = ("alpha", "beta", "gamma")
Op = tuple[str, Literal["insert", "update", "delete", "read"], int, str]

ops = st.lists(
    st.tuples(
        st.sampled_from(TENANTS),
        st.sampled_from(["insert", "update", "delete", "read"]),
        st.integers(min_value=0, max_value=30),  # a row id, often another tenant's
        st.text(alphabet="abcxyz'\";-", min_size=0, max_size=8),
    ),
    min_size=1,
    max_size=25,
)

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _reset(t: Tenantry) -> None:
    for tid in TENANTS:
        with tenant_context(tid), t.session() as s:
            s.execute(delete(Note))
            s.commit()


def _visible(t: Tenantry, tid: str, raw: bool) -> dict[int, str]:
    with tenant_context(tid), t.session() as s:
        if raw:
            rows = s.execute(text("SELECT id, body FROM notes")).all()
        else:
            rows = s.execute(select(Note.id, Note.body)).all()
        return {row[0]: row[1] for row in rows}


def _apply(t: Tenantry, op: Op, model: dict[str, dict[int, str]], raw: bool) -> None:
    tid, kind, row_id, body = op
    own = model[tid]
    with tenant_context(tid), t.session() as s:
        if kind == "insert":
            if raw:
                new_id = s.execute(
                    text("INSERT INTO notes (tenant_id, body) VALUES (:t, :b) RETURNING id"),
                    {"t": tid, "b": body},
                ).scalar_one()
            else:
                note = Note(body=body)
                s.add(note)
                s.flush()
                new_id = note.id
            own[new_id] = body
        elif kind == "update":
            if raw:  # deliberately no tenant filter: RLS must supply it
                s.execute(
                    text("UPDATE notes SET body = :b WHERE id = :i"), {"b": body, "i": row_id}
                )
            else:
                s.execute(update(Note).where(Note.id == row_id).values(body=body))
            if row_id in own:
                own[row_id] = body
        elif kind == "delete":
            if raw:
                s.execute(text("DELETE FROM notes WHERE id = :i"), {"i": row_id})
            else:
                s.execute(delete(Note).where(Note.id == row_id))
            own.pop(row_id, None)
        else:
            got = s.get(Note, row_id)
            assert (got.body if got else None) == own.get(row_id)
        s.commit()


def _check_interleaving(t: Tenantry, sequence: list[Op], raw: bool) -> None:
    _reset(t)
    model: dict[str, dict[int, str]] = {tid: {} for tid in TENANTS}
    for op in sequence:
        _apply(t, op, model, raw)
        for tid in TENANTS:
            assert _visible(t, tid, raw) == model[tid], (op, tid)


@pytest.mark.parametrize(("backend", "mode"), ALL_CASES)
def test_orm_interleavings_never_cross_tenants(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    t = make_tenantry(backend)
    for tid in TENANTS:
        t.create_tenant(tid, isolation=mode)

    @SETTINGS
    @given(sequence=ops)
    def run(sequence: list[Op]) -> None:
        _check_interleaving(t, sequence, raw=False)

    run()


@pytest.mark.postgres
def test_raw_sql_interleavings_are_contained_by_rls(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("postgresql")
    for tid in TENANTS:
        t.create_tenant(tid, isolation="shared")

    @SETTINGS
    @given(sequence=ops)
    def run(sequence: list[Op]) -> None:
        _check_interleaving(t, sequence, raw=True)

    run()
