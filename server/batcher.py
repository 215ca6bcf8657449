"""Micro-batching of embedding inference across concurrent requests.

Requests hand their aligned face chips to :meth:`EmbedBatcher.embed` and await the result.
One task drains the queue: it takes every request waiting (up to ``max_batch`` chips, more
only when a single request brings more), runs the embedder once on a dedicated thread, and
hands each request its rows. While a batch runs, the next one accumulates, so batches grow
with load and a lone request never waits for a timer.

Cancellation: a request whose deadline passed or that was cancelled before its batch starts is
dropped from it; a batch running stops between two embedding runs of ``max_batch`` chips once every
request in it is cancelled (:class:`facesearch.util.cancel.AllCancelled`). A caller cancelled while
its chips are in the running batch returns only when that batch has ended, so its admission slot
is not given back while the embedder still works for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from facesearch.util.cancel import AllCancelled, Checkpoint
from server.admission import Busy, Deadline, DeadlineExceeded

log = logging.getLogger(f"facesearch.{__name__}")

#: ``embed(chips, cancel)``: the embedder, which checks ``cancel`` between its runs.
EmbedFn = Callable[[np.ndarray, Checkpoint], tuple[np.ndarray, np.ndarray]]


@dataclass(slots=True)
class _Job:
    chips: np.ndarray
    deadline: Deadline
    future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = field(repr=False)
    batch: asyncio.Future[tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)  # running batch


class EmbedBatcher:
    def __init__(
        self, embed: EmbedFn, max_batch: int, dim: int, on_batch: Callable[[int, float], None] | None = None
    ) -> None:
        self._embed = embed
        self.max_batch = max_batch
        self.dim = dim
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._task: asyncio.Task[None] | None = None
        self.busy = Busy()  # 1 while a batch is being embedded

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="embed-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def embed(self, chips: np.ndarray, deadline: Deadline) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (n, d) float32 L2-normalised and raw norms (n,) of ``chips`` (n, s, s, 3)."""
        if len(chips) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.float32)
        if self._task is None:
            raise RuntimeError("EmbedBatcher.embed before start()")
        future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = asyncio.get_running_loop().create_future()
        job = _Job(chips, deadline, future)
        await self._queue.put(job)
        try:
            return await future
        except asyncio.CancelledError:
            deadline.cancel("the call was cancelled")
            while job.batch is not None and not job.batch.done():  # its chips are being embedded: wait
                try:
                    await asyncio.shield(job.batch)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if first is None:
                return
            jobs = [first]
            total = len(first.chips)
            stop = False
            while total < self.max_batch and not self._queue.empty():
                job = self._queue.get_nowait()
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                total += len(job.chips)
            live = []
            for job in jobs:
                if job.future.done():  # the caller went away
                    continue
                if job.deadline.remaining() <= 0:
                    job.future.set_exception(DeadlineExceeded("deadline exceeded before embedding"))
                    continue
                live.append(job)
            if live:
                await self._run_batch(loop, live)
            if stop:
                return

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        chips = np.concatenate([j.chips for j in jobs]) if len(jobs) > 1 else jobs[0].chips
        start = loop.time()
        cancel = AllCancelled([j.deadline for j in jobs])
        batch = loop.run_in_executor(self._executor, self.busy.wrap(lambda: self._embed(chips, cancel)))
        for job in jobs:
            job.batch = batch
        try:
            embeddings, norms = await batch
        except Exception as err:  # every waiter gets the failure; the loop goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        if self._on_batch is not None:
            self._on_batch(len(chips), loop.time() - start)
        row = 0
        for job in jobs:
            n = len(job.chips)
            if not job.future.done():
                job.future.set_result((embeddings[row : row + n], norms[row : row + n]))
            row += n
