"""Admission control: bounded work in front of the CPU stages, counted in requests and in memory; deadlines.

A request asks for a slot with its *cost*: the bytes its photo's decoding and detection hold at
their peak (``facesearch.vision.detection_plan.work_bytes``, from the photo's header, before any
pixel is decoded). It runs when a worker is free and the costs of the requests running stay within
``work_memory``; otherwise it waits for a turn, in arrival order (a large photo is not overtaken by
a stream of small ones). Waiting is bounded too: a request is refused at once with
RESOURCE_EXHAUSTED when ``queue_size`` requests already wait (reason ``QUEUE_FULL``) or when the
costs waiting would exceed ``work_memory`` (reason ``WORK_MEMORY_FULL``). So a burst of large
photos runs as many as fit in memory, queues as many again, and refuses the rest: memory never
grows with the offered load. A request whose deadline passes while it waits, or between two
stages, stops there (DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

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


@dataclass(eq=False, slots=True)
class _Waiter:
    cost: int
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Admission:
    """At most ``workers`` requests at once whose costs sum to at most ``work_memory`` bytes (None:
    not counted), plus a bounded wait queue (``queue_size`` requests, ``work_memory`` of cost)."""

    def __init__(self, workers: int, queue_size: int, work_memory: int | None = None) -> None:
        self.workers = workers
        self.queue_size = queue_size
        self.work_memory = work_memory
        self.active = 0
        self.active_cost = 0
        self._queue: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def waiting_cost(self) -> int:
        return sum(w.cost for w in self._queue)

    @property
    def depth(self) -> int:
        """Requests waiting for or holding a worker."""
        return self.waiting + self.active

    def _fits(self, cost: int) -> bool:
        memory_ok = self.work_memory is None or self.active_cost + cost <= self.work_memory
        return self.active < self.workers and memory_ok

    def _grant(self, cost: int) -> None:
        self.active += 1
        self.active_cost += cost

    def _release(self, cost: int) -> None:
        self.active -= 1
        self.active_cost -= cost
        self._wake()

    def _wake(self) -> None:
        while self._queue and self._fits(self._queue[0].cost):
            waiter = self._queue.popleft()
            self._grant(waiter.cost)
            waiter.granted.set_result(None)

    def _refuse_if_full(self, cost: int) -> None:
        if self.waiting >= self.queue_size:
            raise ResourceExhaustedError(
                f"server busy: {self.active} requests running and {self.waiting} queued "
                f"(FACESEARCH_QUEUE_SIZE={self.queue_size}); retry with backoff",
                reason=Reason.QUEUE_FULL,
            )
        if self.work_memory is not None and self.waiting_cost + cost > self.work_memory:
            raise ResourceExhaustedError(
                f"server busy: the photos running and queued need {(self.active_cost + self.waiting_cost) >> 20} MiB "
                f"of FACESEARCH_WORK_MEMORY={self.work_memory >> 20} MiB and this one {cost >> 20} MiB more; "
                "retry with backoff",
                reason=Reason.WORK_MEMORY_FULL,
            )

    @contextlib.asynccontextmanager
    async def slot(self, deadline: Deadline, *, wait: bool = False, cost: int = 0) -> AsyncIterator[None]:
        """Hold a worker and ``cost`` bytes of work memory for the body. ``wait``: queue even when
        the queue is full (callers that bound their own outstanding work, e.g. one stream's window)."""
        if self.work_memory is not None and cost > self.work_memory:
            raise ResourceExhaustedError(
                f"this request needs {cost >> 20} MiB to process, more than the server's "
                f"FACESEARCH_WORK_MEMORY={self.work_memory >> 20} MiB; send a smaller photo",
                reason=Reason.WORK_MEMORY_FULL,
            )
        if not self._queue and self._fits(cost):
            self._grant(cost)
        else:
            if not wait:
                self._refuse_if_full(cost)
            await self._wait_for_turn(_Waiter(cost), deadline)
        try:
            yield
        finally:
            self._release(cost)

    async def _wait_for_turn(self, waiter: _Waiter, deadline: Deadline) -> None:
        self._queue.append(waiter)
        remaining = deadline.remaining()
        try:
            if remaining <= 0:
                raise DeadlineExceeded("deadline exceeded while queued")
            try:
                timeout = None if remaining == float("inf") else remaining
                await asyncio.wait_for(asyncio.shield(waiter.granted), timeout=timeout)
            except TimeoutError:
                raise DeadlineExceeded("deadline exceeded while queued") from None
        except BaseException:
            if waiter.granted.done():  # granted as the wait ended: give the turn back
                self._release(waiter.cost)
            else:
                self._queue.remove(waiter)
                waiter.granted.cancel()
                self._wake()  # the requests behind it may fit now
            raise
