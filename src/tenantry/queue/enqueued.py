"""What an enqueue answers: the jobs it wrote (or found, for an idempotency key)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar, overload

from tenantry.queue.job import JobState


@dataclass(frozen=True)
class EnqueuedJob:
    id: int
    tenant_id: str
    kind: str
    queue: str
    state: JobState
    created: bool  # False when an unfinished job with the same idempotency key was returned


T = TypeVar("T")


class ByIds(Sequence[T]):
    """A sequence of items made from job ids when read, not up front.

    Answers to a large write hold thousands of jobs that differ only in
    their ids; making an object per job is most of what answering costs.
    """

    __slots__ = ("_ids",)

    def __init__(self, ids: Sequence[int]) -> None:
        self._ids = ids

    @abstractmethod
    def _item(self, job_id: int) -> T:
        """The item that stands for *job_id*."""

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self._item(i) for i in self._ids[index]]
        return self._item(self._ids[index])

    def __iter__(self) -> Iterator[T]:
        return map(self._item, self._ids)


class EnqueuedJobs(ByIds[EnqueuedJob]):
    """The jobs one ``enqueue_many`` created, alike but for their ids.

    Each ``EnqueuedJob`` is built when it is read, not up front: answering a
    large enqueue with one object per job costs a real share of the call, in
    the objects themselves and in the garbage collections their allocation
    sets off (measured: see docs/performance.md). Callers that want only the ids
    read ``ids`` and never build one. It compares equal to a list of the
    same jobs.
    """

    __slots__ = ("_kind", "_queue", "_state", "_tenant_id")

    def __init__(
        self, ids: Sequence[int], tenant_id: str, kind: str, queue: str, state: JobState
    ) -> None:
        super().__init__(ids)
        self._tenant_id = tenant_id
        self._kind = kind
        self._queue = queue
        self._state = state

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def _item(self, job_id: int) -> EnqueuedJob:
        return EnqueuedJob(job_id, self._tenant_id, self._kind, self._queue, self._state, True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EnqueuedJobs | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, so unhashable like them

    def __repr__(self) -> str:
        shown = ", ".join(repr(j) for j in self[:3])
        more = f", ... ({len(self)} jobs)" if len(self) > 3 else ""
        return f"EnqueuedJobs([{shown}{more}])"
