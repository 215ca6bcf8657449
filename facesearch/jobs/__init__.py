"""Long batch jobs over many photos: the one resumable sharded runner, image lists and photo inputs,
and ``facesearch embed``.

Layer: batch. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs | client)
> storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors | util |
api).

Modules (and the tests that cover them):

- ``embed``: ``facesearch embed``: embeddings for many images, resumable, on all cores. Tests:
  ``tests/integration/test_pipeline_embed.py``.
- ``image_list``: Reading the list of images a job works on: a file of paths, or a folder. Tests:
  ``tests/unit/test_image_list.py``, ``tests/unit/test_open_set_eval.py``.
- ``inputs``: Photo inputs: a folder tree (one folder per identity, LFW style) or a CSV/JSONL
  manifest. Tests: ``tests/unit/test_image_list.py``.
- ``shards``: The checkpoint of the embedding stage: ``(start, end)`` shard files with done-markers.
  Tests: through its callers.
"""

from __future__ import annotations

from facesearch.jobs.embed import (
    EmbedConfig,
    embed_paths,
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
from facesearch.jobs.shards import (
    is_done,
    open_workdir,
    read_shard,
    shard_ranges,
    write_shard,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "EmbedConfig",
    "ImageRow",
    "embed_paths",
    "is_done",
    "open_workdir",
    "read_image_list",
    "read_shard",
    "rows_from_manifest",
    "rows_from_tree",
    "run",
    "shard_ranges",
    "write_shard",
]
