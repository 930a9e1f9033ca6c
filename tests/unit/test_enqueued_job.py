"""``EnqueuedJob._created`` builds instances past the frozen ``__init__``; they must not differ."""

from __future__ import annotations

import dataclasses

import pytest

from tenantry.queue import EnqueuedJob, JobState


def test_bulk_built_jobs_equal_constructed_ones_and_stay_frozen() -> None:
    built = EnqueuedJob._created([7, 9], "acme", "email", "mail", JobState.SCHEDULED)
    made = [EnqueuedJob(i, "acme", "email", "mail", JobState.SCHEDULED, True) for i in (7, 9)]
    assert built == made
    assert [hash(j) for j in built] == [hash(j) for j in made]
    assert [repr(j) for j in built] == [repr(j) for j in made]
    # Every field is set (a field added to the class but not here would fail above too).
    assert all(vars(j).keys() == {f.name for f in dataclasses.fields(j)} for j in built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built[0].id = 1  # type: ignore[misc]
    assert EnqueuedJob._created([], "acme", "email", "mail", JobState.AVAILABLE) == []
