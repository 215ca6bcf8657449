"""Admission counts what requests cost (bytes of work memory), not only how many there are."""

from __future__ import annotations

import asyncio

import pytest

from facesearch.errors import ResourceExhaustedError
from server.admission import Admission, Deadline, DeadlineExceeded


async def _hold(adm: Admission, cost: int, release: asyncio.Event, started: list[int]) -> None:
    async with adm.slot(Deadline(), cost=cost):
        started.append(cost)
        await release.wait()


def test_a_burst_of_costly_requests_runs_what_fits_queues_as_much_again_and_refuses_the_rest() -> None:
    async def scenario() -> None:
        adm = Admission(workers=4, queue_size=10, work_memory=100)
        release, started = asyncio.Event(), []
        first = asyncio.create_task(_hold(adm, 60, release, started))
        await asyncio.sleep(0)
        second = asyncio.create_task(_hold(adm, 60, release, started))  # a worker is free, memory is not
        await asyncio.sleep(0)
        assert started == [60] and adm.active == 1 and adm.waiting == 1 and adm.active_cost == 60
        with pytest.raises(ResourceExhaustedError) as err:
            async with adm.slot(Deadline(), cost=60):
                pass
        assert err.value.reason == "WORK_MEMORY_FULL"
        assert "FACESEARCH_WORK_MEMORY" in err.value.message
        release.set()
        async with asyncio.timeout(5):
            await asyncio.gather(first, second)
        assert started == [60, 60] and adm.depth == 0 and adm.active_cost == 0

    asyncio.run(scenario())


def test_small_requests_run_side_by_side_and_do_not_overtake_a_waiting_large_one() -> None:
    async def scenario() -> None:
        adm = Admission(workers=4, queue_size=10, work_memory=100)
        release, started = asyncio.Event(), []
        tasks = [asyncio.create_task(_hold(adm, 30, release, started)) for _ in range(2)]
        await asyncio.sleep(0)
        assert adm.active == 2  # 60 of 100
        tasks.append(asyncio.create_task(_hold(adm, 90, release, started)))  # waits for memory
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(_hold(adm, 10, release, started)))  # would fit, but waits its turn
        await asyncio.sleep(0)
        assert started == [30, 30] and adm.waiting == 2
        release.set()
        async with asyncio.timeout(5):
            await asyncio.gather(*tasks)
        assert started == [30, 30, 90, 10]

    asyncio.run(scenario())


def test_a_request_costlier_than_the_work_memory_is_refused_at_once() -> None:
    async def scenario() -> None:
        adm = Admission(workers=2, queue_size=10, work_memory=100)
        with pytest.raises(ResourceExhaustedError) as err:
            async with adm.slot(Deadline(), cost=101):
                pass
        assert err.value.reason == "WORK_MEMORY_FULL" and adm.depth == 0

    asyncio.run(scenario())


def test_a_waiter_whose_deadline_passes_leaves_the_queue_and_frees_its_turn() -> None:
    async def scenario() -> None:
        adm = Admission(workers=4, queue_size=10, work_memory=100)
        release, started = asyncio.Event(), []
        first = asyncio.create_task(_hold(adm, 80, release, started))
        await asyncio.sleep(0)
        with pytest.raises(DeadlineExceeded):
            async with adm.slot(Deadline.after(0.05), cost=50):
                pass
        assert adm.waiting == 0 and adm.active == 1
        small = asyncio.create_task(_hold(adm, 20, release, started))  # fits beside the first
        await asyncio.sleep(0)
        assert started == [80, 20]
        release.set()
        await asyncio.gather(first, small)
        assert adm.depth == 0 and adm.active_cost == 0

    asyncio.run(scenario())
