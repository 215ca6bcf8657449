"""Bounded queue, deadlines and micro-batching, without a network."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from facesearch.errors import ResourceExhaustedError
from server.admission import Admission, Deadline, DeadlineExceeded
from server.batcher import EmbedBatcher


def test_queue_full_is_resource_exhausted() -> None:
    async def scenario() -> None:
        adm = Admission(workers=1, queue_size=1)
        release = asyncio.Event()

        async def hold() -> None:
            async with adm.slot(Deadline()):
                await release.wait()

        first = asyncio.create_task(hold())
        await asyncio.sleep(0)
        second = asyncio.create_task(hold())  # waits in the queue
        await asyncio.sleep(0)
        assert adm.active == 1 and adm.waiting == 1 and adm.depth == 2
        with pytest.raises(ResourceExhaustedError) as err:
            async with adm.slot(Deadline()):
                pass
        assert err.value.reason == "QUEUE_FULL"
        assert adm.peak_depth == 2 and adm.refused == 1
        async with asyncio.timeout(5):
            release.set()
            await asyncio.gather(first, second)
        assert adm.depth == 0

    asyncio.run(scenario())


def test_deadline_passes_while_queued() -> None:
    async def scenario() -> None:
        adm = Admission(workers=1, queue_size=4)
        release = asyncio.Event()

        async def hold() -> None:
            async with adm.slot(Deadline()):
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        with pytest.raises(DeadlineExceeded):
            async with adm.slot(Deadline.after(0.05)):
                pass
        assert adm.waiting == 0
        release.set()
        await holder

    asyncio.run(scenario())


def test_deadline_check_between_stages() -> None:
    Deadline.after(None).check("detect")
    d = Deadline.after(0.0)
    time.sleep(0.001)
    with pytest.raises(DeadlineExceeded, match="before embed"):
        d.check("embed")


def test_batcher_combines_concurrent_requests() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def embed(chips: np.ndarray, cancel: object = None) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(chips))
        gate.wait(5)  # the first batch is slow: the others queue up behind it
        out = chips.reshape(len(chips), -1)[:, :4].astype(np.float32)
        return out, np.ones(len(chips), np.float32)

    async def scenario() -> None:
        batcher = EmbedBatcher(embed, max_batch=32, dim=4)
        batcher.start()
        chips = [np.full((n, 2, 2, 3), i, np.uint8) for i, n in enumerate([1, 2, 3, 1])]
        tasks = [asyncio.create_task(batcher.embed(chips[0], Deadline()))]
        async with asyncio.timeout(5):
            while not calls:  # the first batch is running...
                await asyncio.sleep(0.01)
        tasks += [asyncio.create_task(batcher.embed(c, Deadline())) for c in chips[1:]]
        await asyncio.sleep(0.05)  # ...while three more requests arrive
        gate.set()
        results = await asyncio.gather(*tasks)
        for i, (emb, norms) in enumerate(results):
            assert emb.shape == (len(chips[i]), 4) and (emb == i).all() and len(norms) == len(chips[i])
        await batcher.stop()

    asyncio.run(scenario())
    assert calls == [1, 6]  # the first alone, then the other three in one batch


def test_batcher_drops_expired_requests() -> None:
    async def scenario() -> None:
        batcher = EmbedBatcher(
            lambda c, _=None: (np.zeros((len(c), 4), np.float32), np.ones(len(c))), max_batch=8, dim=4
        )
        batcher.start()
        expired = Deadline(time.monotonic() - 1)
        with pytest.raises(DeadlineExceeded):
            await batcher.embed(np.zeros((1, 2, 2, 3), np.uint8), expired)
        emb, _ = await batcher.embed(np.zeros((2, 2, 2, 3), np.uint8), Deadline())
        assert emb.shape == (2, 4)
        await batcher.stop()

    asyncio.run(scenario())
