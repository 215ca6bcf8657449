"""The checkpoint of a resumable batch job: a work directory of ``(start, end)`` shard files.

Layout of ``WORK``:

- ``fingerprint.json``: ``{"fingerprint": ..., **info}``. The directory is created under a
  temporary name with this file in it and renamed into place, so a work directory without it
  was not made by this code (an older layout) and is refused like any other mismatch.
- ``shard-<start>-<end>.npz`` (12-digit zero-padded row numbers, no pickles) and, written after
  it, ``shard-<start>-<end>.done``. A shard is done when both exist; each is written through
  :func:`facesearch.util.fs.atomic_path` (temp file, ``fsync``, ``os.replace``), so a done
  shard is whole after a crash at any point, and a shard without its marker is redone.

:func:`fingerprint` is the one fingerprint of a job: sha256 over the JSON of its config (what
changes the result: model contract, options, shard size) and of each input item, in order. A run
whose fingerprint differs from the one in ``WORK`` is refused (``PreconditionError``, reason
``RESUME_MISMATCH``) with the caller's way out (``--restart``, or deleting the folder); so is a
work directory of an older layout, which has no fingerprint or a different one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import PreconditionError, Reason
from facesearch.util.fs import atomic_path, fsync_dir, write_atomic

FINGERPRINT_FILE = "fingerprint.json"
SHARD_DIGITS = 12


def fingerprint(config: Sequence[Any], inputs: Iterable[Sequence[Any]] = ()) -> str:
    """Hex sha256 of ``config`` then of each input item, each as JSON (keys sorted)."""
    digest = hashlib.sha256(json.dumps(list(config), sort_keys=True, default=str).encode())
    for item in inputs:
        digest.update(json.dumps(list(item), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2 size), ..., (k size, n)]``."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def shard_path(work: Path, start: int, end: int) -> Path:
    return work / f"shard-{start:0{SHARD_DIGITS}d}-{end:0{SHARD_DIGITS}d}.npz"


def done_path(work: Path, start: int, end: int) -> Path:
    return shard_path(work, start, end).with_suffix(".done")


def is_done(work: Path, start: int, end: int) -> bool:
    return done_path(work, start, end).is_file() and shard_path(work, start, end).is_file()


def open_workdir(
    work: Path,
    fingerprint: str,
    info: Mapping[str, Any],
    *,
    restart: bool,
    remedy: str = "pass --restart to discard it",
) -> int:
    """Create ``work`` for a job of ``fingerprint``, or reuse it if it holds the same job's shards.

    ``restart`` discards whatever ``work`` holds first. Returns how many shards are already done.
    A ``work`` of another job is refused, with ``remedy`` as the way out.
    """
    if work.exists() and restart:
        shutil.rmtree(work)
    if work.exists():
        try:
            old = json.loads((work / FINGERPRINT_FILE).read_text()).get("fingerprint")
        except (OSError, json.JSONDecodeError, AttributeError):
            old = None
        if old != fingerprint:
            raise PreconditionError(
                f"{work} holds an unfinished run of other inputs, model or options (fingerprint {old}, "
                f"this job {fingerprint}); rerun that job to finish it, or {remedy}",
                reason=Reason.RESUME_MISMATCH,
            )
        return len(list(work.glob("shard-*.done")))
    work.parent.mkdir(parents=True, exist_ok=True)
    staging = work.with_name(f".{work.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write_atomic(staging / FINGERPRINT_FILE, json.dumps({"fingerprint": fingerprint, **info}, indent=2, default=str))
    os.replace(staging, work)
    fsync_dir(work.parent)
    return 0


def write_shard(work: Path, start: int, end: int, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write one shard's arrays, then its done-marker (each fsync'd and renamed into place)."""
    path = shard_path(work, start, end)
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        savez: Any = np.savez  # numpy's stubs do not type **arrays
        savez(fh, **arrays)
    write_atomic(done_path(work, start, end), b"done\n")
    return path


def read_shard(work: Path, start: int, end: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """A shard's arrays (only ``keys`` when given)."""
    with np.load(shard_path(work, start, end), allow_pickle=False) as data:
        return {k: data[k] for k in (data.files if keys is None else keys)}
