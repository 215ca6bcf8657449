"""The checkpoint of the embedding stage: ``(start, end)`` shard files with done-markers.

``WORK/fingerprint.json`` names the inputs, model and options that made the shards; a run
with a different fingerprint is refused (``--restart`` discards the old work). A shard is
``WORK/shard-<start>-<end>.npz`` (zero-padded, written to a temp name then ``os.replace``d)
plus ``WORK/shard-<start>-<end>.done`` written after it, so a shard with a marker is
complete and a rerun skips it. The local process pool and Ray workers write the same files.

Shard arrays (no pickles): ``rows`` (input row of each accepted face), ``embeddings``,
``boxes``, ``det_scores``, ``face_sizes``, ``blurs``, optional ``chips``; and for skipped
rows ``reject_rows``, ``reject_reasons``, ``reject_details``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import PreconditionError
from facesearch.store.index_artifact import write_atomic

FINGERPRINT_FILE = "fingerprint.json"


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def shard_path(work: Path, start: int, end: int) -> Path:
    return work / f"shard-{start:012d}-{end:012d}.npz"


def done_path(work: Path, start: int, end: int) -> Path:
    return work / f"shard-{start:012d}-{end:012d}.done"


def is_done(work: Path, start: int, end: int) -> bool:
    return done_path(work, start, end).is_file() and shard_path(work, start, end).is_file()


def open_workdir(work: Path, fingerprint: str, info: dict[str, Any], *, restart: bool) -> int:
    """Create or reuse ``work``; returns how many shards are already done."""
    marker = work / FINGERPRINT_FILE
    if work.exists() and restart:
        shutil.rmtree(work)
    if work.exists():
        try:
            old = json.loads(marker.read_text()).get("fingerprint")
        except (OSError, json.JSONDecodeError):
            old = None
        if old != fingerprint:
            raise PreconditionError(
                f"{work} holds an unfinished embedding stage of other inputs, model or options "
                f"(fingerprint {old}, this job {fingerprint}); rerun that job to finish it, or pass "
                "--restart to discard it",
                reason="RESUME_MISMATCH",
            )
        return len(list(work.glob("shard-*.done")))
    work.mkdir(parents=True)
    write_atomic(marker, json.dumps({"fingerprint": fingerprint, **info}, indent=2, default=str).encode())
    return 0


def write_shard(work: Path, start: int, end: int, arrays: dict[str, np.ndarray]) -> Path:
    path = shard_path(work, start, end)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    savez: Any = np.savez  # numpy's stubs do not type **arrays
    savez(tmp, **arrays)
    os.replace(tmp, path)
    write_atomic(done_path(work, start, end), b"done\n")
    return path


def read_shard(work: Path, start: int, end: int) -> dict[str, np.ndarray]:
    with np.load(shard_path(work, start, end), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
