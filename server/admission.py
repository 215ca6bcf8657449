"""Admission control: bounded work in front of the CPU stages, counted in requests and in memory; deadlines.

A request asks for a slot with its *cost*: the bytes its photo's decoding and detection hold at
their peak (``facesearch.vision.detection_plan.work_bytes``, from the photo's header, before any
pixel is decoded). It runs when a worker is free and the costs of the requests running stay within
``work_memory``; otherwise it waits for a turn, in arrival order (a large photo is not overtaken by
a stream of small ones). Waiting is bounded too: a request is refused at once with
RESOURCE_EXHAUSTED when ``queue_size`` requests already wait (reason ``QUEUE_FULL``) or when the
costs waiting would exceed ``work_memory`` (reason ``WORK_MEMORY_FULL``). So a burst of large
photos runs as many as fit in memory, queues as many again, and refuses the rest: memory never
grows with the offered load. A request whose deadline passes while it waits stops there
(DEADLINE_EXCEEDED); once running, its :class:`Deadline` (a :class:`facesearch.util.cancel.CancelToken`)
is checked by the worker thread at checkpoints inside each stage, and the request's slot is given
back only when that thread has stopped (:func:`run_stoppable`), so a request that timed out or was
cancelled never leaves work running behind a free slot.

Every RPC passes through admission, in one of three lanes of the service: the CPU lane above
(Identify, Verify, Detect, Enroll's photos, each StreamIdentify item: a stream's items are refused
with QUEUE_FULL like unary calls), and two light lanes with their own worker threads and bounded
queues: reads (GetIdentity, ListIdentities, GetStats) and writes (Enroll's store, DeleteIdentity,
DeleteFaces), so a crowd of readers cannot delay a delete, nor photos a read. :attr:`Admission.peak_depth`
records the most requests ever waiting or running in a lane (GetStats reports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TypeVar

from facesearch.errors import Reason, ResourceExhaustedError
from facesearch.util.cancel import Cancelled, CancelToken, DeadlineExceeded, WorkStopped

__all__ = [
    "Admission",
    "Busy",
    "Cancelled",
    "Deadline",
    "DeadlineExceeded",
    "StreamIdle",
    "WorkStopped",
    "run_stoppable",
]

T = TypeVar("T")

#: A request's deadline and cancel flag, checked by its worker thread (:mod:`facesearch.util.cancel`).
Deadline = CancelToken


class StreamIdle(DeadlineExceeded):
    """A call sent nothing for the idle limit: a stream no item, a unary call not its request message
    (sent as DEADLINE_EXCEEDED, reason STREAM_IDLE)."""

    reason = Reason.STREAM_IDLE


class Busy:
    """How many threads are executing a lane's work right now (thread-safe): what GetStats reports as
    ``busy_threads``, so a test or an operator sees whether abandoned work has really stopped."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._n

    def wrap(self, fn: Callable[[], T]) -> Callable[[], T]:
        def counted() -> T:
            with self._lock:
                self._n += 1
            try:
                return fn()
            finally:
                with self._lock:
                    self._n -= 1

        return counted


async def run_stoppable(executor: Executor, deadline: Deadline, fn: Callable[[], T], busy: Busy | None = None) -> T:
    """``fn()`` on ``executor``; if the calling task is cancelled (the client cancelled, or its deadline
    passed), ``deadline`` is cancelled so the thread stops at its next checkpoint, and this returns
    (re-raising the cancellation) only once the thread has stopped: the caller's admission slot is
    held until the work really ended."""
    future = asyncio.get_running_loop().run_in_executor(executor, busy.wrap(fn) if busy is not None else fn)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        deadline.cancel("the call was cancelled")
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue  # cancelled again: keep waiting for the thread
            except BaseException:
                break
        raise


@dataclass(eq=False, slots=True)
class _Waiter:
    cost: int
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Admission:
    """At most ``workers`` requests at once whose costs sum to at most ``work_memory`` bytes (None:
    not counted), plus a bounded wait queue (``queue_size`` requests, ``work_memory`` of cost)."""

    def __init__(
        self, workers: int, queue_size: int, work_memory: int | None = None, *, name: str = "FACESEARCH_QUEUE_SIZE"
    ) -> None:
        self.workers = workers
        self.queue_size = queue_size
        self.work_memory = work_memory
        self.name = name  # what the refusal names: the setting, or the lane
        self.active = 0
        self.active_cost = 0
        self.peak_depth = 0
        self.refused = 0
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
        self.peak_depth = max(self.peak_depth, self.depth)

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
            self.refused += 1
            raise ResourceExhaustedError(
                f"server busy: {self.active} requests running and {self.waiting} queued "
                f"({self.name}={self.queue_size}); retry with backoff",
                reason=Reason.QUEUE_FULL,
            )
        if self.work_memory is not None and self.waiting_cost + cost > self.work_memory:
            self.refused += 1
            raise ResourceExhaustedError(
                f"server busy: the photos running and queued need {(self.active_cost + self.waiting_cost) >> 20} MiB "
                f"of FACESEARCH_WORK_MEMORY={self.work_memory >> 20} MiB and this one {cost >> 20} MiB more; "
                "retry with backoff",
                reason=Reason.WORK_MEMORY_FULL,
            )

    @contextlib.asynccontextmanager
    async def slot(self, deadline: Deadline, *, cost: int = 0) -> AsyncIterator[None]:
        """Hold a worker and ``cost`` bytes of work memory for the body; refused at once when the
        queue is full (every caller, a stream's items too: nothing bypasses the bound)."""
        if self.work_memory is not None and cost > self.work_memory:
            raise ResourceExhaustedError(
                f"this request needs {cost >> 20} MiB to process, more than the server's "
                f"FACESEARCH_WORK_MEMORY={self.work_memory >> 20} MiB; send a smaller photo",
                reason=Reason.WORK_MEMORY_FULL,
            )
        if not self._queue and self._fits(cost):
            self._grant(cost)
        else:
            self._refuse_if_full(cost)
            await self._wait_for_turn(_Waiter(cost), deadline)
        try:
            yield
        finally:
            self._release(cost)

    async def _wait_for_turn(self, waiter: _Waiter, deadline: Deadline) -> None:
        self._queue.append(waiter)
        self.peak_depth = max(self.peak_depth, self.depth)
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
