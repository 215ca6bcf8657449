"""The one resumable sharded runner: pending shards -> worker processes -> shard files, with progress.

A :class:`ShardJob` cuts ``items`` into ``(start, end)`` ranges of ``shard_size``; the ranges
whose shard is not done yet (:mod:`facesearch.jobs.shards`) are computed by a *shard worker*
and written as one shard each, and a progress bar (tqdm: count, rate, ETA) counts items. A run
that was killed, or whose worker died, resumes from the shards it finished.

Workers: ``WorkerSpec.factory(*args, threads=n)`` builds one worker per process (a module-level
class or function, so ``spawn`` can import it by name; ONNX sessions must not cross a ``fork``).
A worker maps ``(start, items[start:end])`` to the shard's arrays. With one worker it runs in
this process with ``threads=None`` (all cores for onnxruntime); with more, a ``spawn`` process
pool runs one worker per process with ``threads=1``, which uses the cores better (decode,
landmarks and alignment are single-threaded numpy work), and keeps at most two shards per
process in flight, so memory stays bounded for huge inputs. Default workers: one per core this
process may use.

Workers turn one photo's failure into a row of the shard (see
:func:`facesearch.vision.selection.process_photo`); a shard that still fails (a full disk, a
killed process) stops the run with ``job.failure`` naming the shard, and what was finished stays.
Another executor (the indexer's Ray stage) can run the pending ranges instead of the local pool,
writing shards with :func:`process_shard` exactly as the pool does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from tqdm import tqdm

from facesearch.errors import FaceSearchError
from facesearch.jobs.shards import is_done, shard_ranges, write_shard
from facesearch.vision.onnx_session import default_threads

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Range = tuple[int, int]
#: Runs the pending ranges (writing each shard) and yields each range as it is done.
Executor = Callable[[list[Range]], Iterator[Range]]


class ShardWorker(Protocol):
    """Maps a shard's first row number and its items to the shard's arrays (one row per result)."""

    def __call__(self, start: int, items: list[Any], /) -> Mapping[str, np.ndarray]: ...


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How each process builds its worker: ``factory(*args, threads=n)``."""

    factory: Callable[..., ShardWorker]
    args: tuple[Any, ...] = ()

    def build(self, threads: int | None) -> ShardWorker:
        return self.factory(*self.args, threads=threads)


@dataclass(frozen=True, slots=True)
class ShardJob(Generic[Item]):
    """One job: ``items`` in shards of ``shard_size`` under ``work``, computed by ``worker``."""

    work: Path  # an opened work directory (facesearch.jobs.shards.open_workdir)
    items: Sequence[Item]
    shard_size: int
    worker: WorkerSpec
    workers: int = 0  # processes; 0 = one per core
    desc: str = "job"  # progress bar label, and the job's name in errors
    progress: bool = True
    failure: type[FaceSearchError] = FaceSearchError  # raised (from the cause) when a shard fails

    @property
    def ranges(self) -> list[Range]:
        return shard_ranges(len(self.items), self.shard_size)


@dataclass(frozen=True, slots=True)
class ShardRun:
    """What :func:`run_shards` did."""

    ranges: list[Range]  # every shard of the job, in order
    resumed: int  # shards that were already done when this run started


def process_shard(work: Path, worker: ShardWorker, start: int, end: int, items: list[Any]) -> Range:
    """Compute one shard with ``worker`` and write it (arrays, then the done-marker)."""
    write_shard(work, start, end, worker(start, items))
    return start, end


def run_shards(job: ShardJob[Any], execute: Executor | None = None) -> ShardRun:
    """Compute every shard of ``job`` that is not done yet; ``execute`` replaces the local pool."""
    ranges = job.ranges
    pending = [(s, e) for s, e in ranges if not is_done(job.work, s, e)]
    if len(pending) < len(ranges):
        log.info("resuming: %d of %d shards already done in %s", len(ranges) - len(pending), len(ranges), job.work)
    done_items = len(job.items) - sum(e - s for s, e in pending)
    with tqdm(
        total=len(job.items),
        initial=done_items,
        desc=job.desc,
        unit="img",
        disable=not job.progress,
        dynamic_ncols=True,
    ) as bar:
        if pending:
            for s, e in (execute or _local(job))(pending):
                bar.update(e - s)
    return ShardRun(ranges, len(ranges) - len(pending))


def _local(job: ShardJob[Any]) -> Executor:
    def execute(pending: list[Range]) -> Iterator[Range]:
        workers = max(1, min(job.workers or default_threads(), len(pending)))
        if workers == 1:
            yield from _in_process(job, pending)
        else:
            yield from _in_pool(job, pending, workers)

    return execute


def _in_process(job: ShardJob[Any], pending: list[Range]) -> Iterator[Range]:
    worker = job.worker.build(threads=None)
    for s, e in pending:
        try:
            done = process_shard(job.work, worker, s, e, list(job.items[s:e]))
        except Exception as err:
            raise job.failure(f"{job.desc}: shard {s}-{e} failed: {err}") from err
        yield done


# -- the process pool: one worker per process, built by the initialiser ----------------------------
_worker: ShardWorker | None = None


def _init_process(spec: WorkerSpec) -> None:
    global _worker  # noqa: PLW0603 - one worker per process
    _worker = spec.build(threads=1)


def _pool_task(work: Path, start: int, end: int, items: list[Any]) -> Range:
    assert _worker is not None, "the pool initialiser builds the worker"
    return process_shard(work, _worker, start, end, items)


def _in_pool(job: ShardJob[Any], pending: list[Range], workers: int) -> Iterator[Range]:
    ctx = get_context("spawn")  # onnxruntime sessions must not cross a fork
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_process, initargs=(job.worker,)) as pool:
        todo = iter(pending)
        running: dict[Future[Range], Range] = {}

        def submit(s: int, e: int) -> None:
            running[pool.submit(_pool_task, job.work, s, e, list(job.items[s:e]))] = (s, e)

        for s, e in todo:  # at most two shards per process in flight
            submit(s, e)
            if len(running) >= 2 * workers:
                break
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                s, e = running.pop(fut)
                try:
                    done = fut.result()
                except BrokenProcessPool as err:
                    raise job.failure(f"{job.desc}: a worker process died (shard {s}-{e} unfinished)") from err
                except Exception as err:
                    raise job.failure(f"{job.desc}: shard {s}-{e} failed: {err}") from err
                yield done
                nxt = next(todo, None)
                if nxt is not None:
                    submit(*nxt)
