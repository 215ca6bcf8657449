"""The embedding stage on Ray Data: the same shards, written by an actor pool.

:func:`ray_executor` is an executor of :func:`facesearch.jobs.runner.run_shards`. Each dataset
row is one pending shard ``(start, end, rows)``; ``map_batches`` runs :class:`_RayShardActor`
(an actor holding one :class:`indexer.embed.ShardEmbedder`, built once) over them with
``batch_size=1``, and every actor writes the shard file and done-marker itself with
:func:`facesearch.jobs.runner.process_shard`, exactly as the local pool does. On a cluster the
work directory (under the index root) must be on storage every node sees; the driver only
collects ``(start, end)`` for progress.

``--ray local`` starts a private Ray instance on this machine (``--workers`` CPUs, default
all); any other value is passed to ``ray.init(address=...)`` (e.g. ``auto``,
``ray://head:10001``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import IndexBuildError, PreconditionError
from facesearch.jobs.inputs import ImageRow
from facesearch.jobs.runner import Executor, process_shard
from indexer.config import EmbedOptions

log = logging.getLogger(f"facesearch.{__name__}")


class _RayShardActor:
    def __init__(self, bundle: str, options: dict[str, Any], work: str) -> None:
        from indexer.embed import ShardEmbedder  # noqa: PLC0415 - built inside the Ray actor

        self.work = Path(work)
        self.embedder = ShardEmbedder(bundle, EmbedOptions(**options), threads=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        starts, ends = [], []
        for start, end, rows_json in zip(batch["start"], batch["end"], batch["rows"], strict=True):
            rows = [ImageRow(**r) for r in json.loads(str(rows_json))]
            s, e = process_shard(self.work, self.embedder, int(start), int(end), rows)
            starts.append(s)
            ends.append(e)
        return {"start": np.asarray(starts, dtype=np.int64), "end": np.asarray(ends, dtype=np.int64)}


def _init_ray(address: str, workers: int) -> bool:
    """Connect to (or, for ``local``, start) Ray; True when this call started it."""
    try:
        import ray  # noqa: PLC0415 - Ray is optional
    except ImportError as err:
        raise PreconditionError("--ray needs the 'ray[data]' package (pip install 'ray[data]')") from err
    if ray.is_initialized():
        return False
    if address == "local":
        # local workers import this checkout even when it is not installed (clusters install it)
        code_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (code_root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(
            num_cpus=workers or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
        )
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True


def ray_executor(rows: list[ImageRow], bundle: str, options: EmbedOptions, work: Path) -> Executor:
    """The executor that embeds pending shards of ``rows`` on Ray (``options.ray_address``)."""

    def execute(pending: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        return run_ray(rows, pending, bundle, options, work)

    return execute


def run_ray(
    rows: list[ImageRow], pending: list[tuple[int, int]], bundle: str, options: EmbedOptions, work: Path
) -> Iterator[tuple[int, int]]:
    """Embed the ``pending`` shards on Ray; yields each ``(start, end)`` as it is written."""
    if not pending:
        return
    assert options.ray_address is not None
    started = _init_ray(options.ray_address, options.workers)
    import ray  # noqa: PLC0415 - Ray is optional
    import ray.data  # noqa: PLC0415

    items = [{"start": s, "end": e, "rows": json.dumps([asdict(r) for r in rows[s:e]])} for s, e in pending]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = max(1, min(options.workers or cpus, cpus, len(pending)))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _RayShardActor,
        fn_constructor_kwargs={"bundle": bundle, "options": asdict(options), "work": str(work)},
        batch_size=1,
        concurrency=actors,
        num_cpus=1,
    )
    try:
        for row in ds.iter_rows():
            yield int(row["start"]), int(row["end"])
    except Exception as err:  # Ray wraps worker failures in its own exception types
        raise IndexBuildError(f"the Ray embedding stage failed: {err}") from err
    finally:
        if started:
            ray.shutdown()
