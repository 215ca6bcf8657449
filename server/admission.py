"""Admission control: a bounded queue in front of the CPU stages, and deadlines.

At most ``workers`` requests run their CPU stages at once; up to ``queue_size`` more wait
for a turn (in arrival order); anything beyond is refused at once with RESOURCE_EXHAUSTED
(reason ``QUEUE_FULL``), so memory never grows with the offered load. A request whose
deadline passes while it waits, or between two stages, stops there (DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from facesearch.errors import Reason, ResourceExhaustedError


class DeadlineExceeded(Exception):  # noqa: N818 - named after the gRPC status it becomes
    """The client's deadline passed; the work was abandoned."""


class Cancelled(Exception):  # noqa: N818
    """The server is shutting down or the client went away."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute ``time.monotonic()`` instant (``inf``: none)."""

    at: float = float("inf")

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(float("inf") if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self, stage: str) -> None:
        if time.monotonic() >= self.at:
            raise DeadlineExceeded(f"deadline exceeded before {stage}")


class Admission:
    """Bounded concurrency (``workers``) plus a bounded wait queue (``queue_size``)."""

    def __init__(self, workers: int, queue_size: int) -> None:
        self.workers = workers
        self.queue_size = queue_size
        self._sem = asyncio.Semaphore(workers)
        self.waiting = 0
        self.active = 0

    @property
    def depth(self) -> int:
        """Requests waiting for or holding a worker."""
        return self.waiting + self.active

    @contextlib.asynccontextmanager
    async def slot(self, deadline: Deadline, *, wait: bool = False) -> AsyncIterator[None]:
        """Hold a worker for the body. ``wait``: queue even when the queue is full (callers
        that bound their own outstanding work, e.g. one stream's window)."""
        if not wait and self.active >= self.workers and self.waiting >= self.queue_size:
            raise ResourceExhaustedError(
                f"server busy: {self.active} requests running and {self.waiting} queued "
                f"(FACESEARCH_QUEUE_SIZE={self.queue_size}); retry with backoff",
                reason=Reason.QUEUE_FULL,
            )
        self.waiting += 1
        try:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise DeadlineExceeded("deadline exceeded while queued")
            try:
                await asyncio.wait_for(self._sem.acquire(), timeout=None if remaining == float("inf") else remaining)
            except TimeoutError:
                raise DeadlineExceeded("deadline exceeded while queued") from None
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._sem.release()
