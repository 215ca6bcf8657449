"""Long batch jobs over many photos: the one resumable sharded runner, image lists and photo inputs,
and ``facesearch embed``.

Layer: batch. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs | client)
> storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors | util |
api) > reasons.

Modules (and the tests that cover them):

- ``embed``: ``facesearch embed``: embeddings for many images, resumable, on all cores. Tests:
  ``tests/integration/test_batch_bad_photos.py``, ``tests/integration/test_pipeline_embed.py``,
  ``tests/unit/test_jobs_runner.py``.
- ``image_list``: Reading the list of images a job works on: a file of paths, or a folder. Tests:
  ``tests/unit/test_image_list.py``, ``tests/unit/test_open_set_eval.py``.
- ``inputs``: Photo inputs: a folder tree (one folder per identity, LFW style) or a CSV/JSONL
  manifest. Tests: ``tests/integration/test_batch_bad_photos.py``,
  ``tests/unit/test_image_list.py``, ``tests/unit/test_jobs_runner.py``.
- ``runner``: The one resumable sharded runner: pending shards -> worker processes -> shard files,
  with progress. Tests: ``tests/integration/test_batch_bad_photos.py``,
  ``tests/unit/test_jobs_runner.py``.
- ``shards``: The checkpoint of a resumable batch job: a work directory of ``(start, end)`` shard
  files. Tests: ``tests/integration/test_batch_bad_photos.py``,
  ``tests/integration/test_pipeline_embed.py``, ``tests/unit/test_jobs_runner.py``.
"""

from __future__ import annotations

from facesearch.jobs.embed import (
    EmbedConfig,
    EmbedWorker,
    check_detector,
    embed_paths,
    pipeline_mode,
    run,
)
from facesearch.jobs.image_list import (
    IMAGE_SUFFIXES,
    read_image_list,
)
from facesearch.jobs.inputs import (
    ImageRow,
    rows_from_manifest,
    rows_from_tree,
)
from facesearch.jobs.runner import (
    Executor,
    ShardJob,
    WorkerSpec,
    process_shard,
    run_shards,
)
from facesearch.jobs.shards import (
    FINGERPRINT_FILE,
    done_path,
    fingerprint,
    open_workdir,
    read_shard,
    shard_path,
    shard_ranges,
    write_shard,
)

__all__ = [
    "FINGERPRINT_FILE",
    "IMAGE_SUFFIXES",
    "EmbedConfig",
    "EmbedWorker",
    "Executor",
    "ImageRow",
    "ShardJob",
    "WorkerSpec",
    "check_detector",
    "done_path",
    "embed_paths",
    "fingerprint",
    "open_workdir",
    "pipeline_mode",
    "process_shard",
    "read_image_list",
    "read_shard",
    "rows_from_manifest",
    "rows_from_tree",
    "run",
    "run_shards",
    "shard_path",
    "shard_ranges",
    "write_shard",
]
