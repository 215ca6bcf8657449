"""Micro-batching of embedding inference across concurrent requests.

Requests hand their aligned face chips to :meth:`EmbedBatcher.embed` and await the result.
One task drains the queue: it takes every request waiting (up to ``max_batch`` chips, more
only when a single request brings more), runs the embedder once on a dedicated thread, and
hands each request its rows. While a batch runs, the next one accumulates, so batches grow
with load and a lone request never waits for a timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from server.admission import Deadline, DeadlineExceeded

log = logging.getLogger(f"facesearch.{__name__}")

EmbedFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(slots=True)
class _Job:
    chips: np.ndarray
    deadline: Deadline
    future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = field(repr=False)


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
        await self._queue.put(_Job(chips, deadline, future))
        return await future

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
        try:
            embeddings, norms = await loop.run_in_executor(self._executor, self._embed, chips)
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
