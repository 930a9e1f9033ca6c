"""``EnqueuedJobs`` builds its jobs when read; it must behave as the list it replaced."""

from __future__ import annotations

import dataclasses
import gc

import pytest

from tenantry.queue import EnqueuedJob, EnqueuedJobs, JobState


def _made(ids: list[int]) -> list[EnqueuedJob]:
    return [EnqueuedJob(i, "acme", "email", "mail", JobState.SCHEDULED, True) for i in ids]


def test_reads_as_the_list_of_jobs_it_stands_for() -> None:
    jobs = EnqueuedJobs([7, 9, 11, 13], "acme", "email", "mail", JobState.SCHEDULED)
    made = _made([7, 9, 11, 13])
    assert len(jobs) == 4
    assert list(jobs) == made
    assert jobs == made
    assert made == jobs
    assert jobs != made[:3]
    assert jobs != [*made[:3], made[0]]
    assert jobs[0] == made[0]
    assert jobs[-1] == made[-1]
    assert jobs[1:3] == made[1:3]
    assert jobs[::-1] == made[::-1]
    with pytest.raises(IndexError):
        jobs[4]
    assert made[2] in jobs
    assert jobs.index(made[2]) == 2
    assert list(reversed(jobs)) == made[::-1]
    assert jobs.ids == [7, 9, 11, 13]
    assert jobs == EnqueuedJobs([7, 9, 11, 13], "acme", "email", "mail", JobState.SCHEDULED)
    assert jobs != EnqueuedJobs([7, 9, 11, 13], "acme", "email", "jobs", JobState.SCHEDULED)
    assert jobs != tuple(made)  # as a list is not equal to a tuple
    assert "EnqueuedJob(id=7" in repr(jobs)
    assert "(4 jobs)" in repr(jobs)
    with pytest.raises(TypeError):
        hash(jobs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        jobs[0].id = 1  # type: ignore[misc]
    assert EnqueuedJobs([], "acme", "email", "mail", JobState.AVAILABLE) == []


def test_holds_no_object_per_job_until_one_is_read() -> None:
    """The point of it: a 20,000-job answer allocates nothing per job."""
    ids = list(range(20_000))
    gc.collect()
    before = len(gc.get_objects())
    jobs = EnqueuedJobs(ids, "acme", "email", "mail", JobState.AVAILABLE)
    assert len(gc.get_objects()) - before < 10
    assert jobs[19_999].id == 19_999
