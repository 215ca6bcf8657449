"""Versions on disk: stage into a hidden directory, publish by rename, switch ``CURRENT``.

Readers never see a half-written version: files are written under ``ROOT/.staging-<v>-<pid>``,
the directory is renamed to ``ROOT/<v>`` and only then ``CURRENT`` is switched
(:func:`facesearch.util.fs.switch_pointer`: temp file, fsync, ``os.replace``). Older versions
are kept for rollback (``keep`` newest, never the current one). One job at a time per root (an
``flock`` on ``ROOT/.lock``).

Leftovers of killed jobs (``.trash-*`` of a prune that stopped, ``.staging-*`` of a job that stopped
before publishing, ``.work`` of an unfinished build) are deleted by :func:`remove_leftovers`
(``facesearch-index prune``): they may hold anything a version holds, erased subjects included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from facesearch.errors import NotFoundError, PreconditionError, Reason
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import (
    CURRENT,
    INDEX_FILE,
    LEFTOVER_PATTERNS,
    MANIFEST,
    REFINE_CODEC_FILE,
    REFINE_FILE,
    STORE_FILE,
    VECTOR_IDS_FILE,
    FileEntry,
    IndexManifest,
    current_version,
    list_versions,
    write_manifest,
)
from facesearch.util import failpoints
from facesearch.util.fs import fsync_dir, fsync_path, sha256_file, switch_pointer
from facesearch.util.lock import FileLock, LockHeldError


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Exclusive lock on an index root for the duration of a job."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(root / ".lock").acquire()
    except LockHeldError as held:
        raise PreconditionError(
            f"{held}: another facesearch-index job is running on {root}; wait for it to finish", reason=Reason.LOCK_HELD
        ) from None
    try:
        yield
    finally:
        lock.release()


def next_version(root: Path) -> str:
    versions = list_versions(root)
    last = max((int(v[1:]) for v in versions if v[1:].isdigit()), default=0)
    return f"v{last + 1:06d}"


def first_free_vector_id(root: Path) -> int:
    """The lowest vector id no version of ``root`` has used.

    A fresh build into a root continues from it, so vector ids stay unique across the root's
    history: a server's live tombstone of a face of an older version (a deleted face, by id) can
    never hide a face of a newer build that would otherwise have reused its id.
    """
    best = 0
    for version in list_versions(root):
        path = root / version / STORE_FILE
        if path.is_file():
            with IdentityStore.open(path, readonly=True) as store:
                best = max(best, int(store.meta("next_vector_id") or 0))
    return best


@contextlib.contextmanager
def staging_dir(root: Path, version: str) -> Iterator[Path]:
    """A fresh staging folder for ``version``, deleted if the job fails before publishing it
    (publishing renames it away; an exception anywhere in the body removes what it wrote)."""
    for old in root.glob(".staging-*"):  # leftovers of killed jobs (we hold the lock)
        shutil.rmtree(old, ignore_errors=True)
    path = root / f".staging-{version}-{os.getpid()}"
    path.mkdir(parents=True)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def write_index_files(
    vdir: Path, index: Any, vector_ids: np.ndarray, refine_rows: np.ndarray | None, codec: Any | None
) -> None:
    faiss.write_index(index, str(vdir / INDEX_FILE))
    np.save(vdir / VECTOR_IDS_FILE, vector_ids)
    if refine_rows is not None:
        np.save(vdir / REFINE_FILE, refine_rows)
    if codec is not None:
        faiss.write_index(codec, str(vdir / REFINE_CODEC_FILE))


def seal(vdir: Path, manifest: IndexManifest, hashed: dict[str, FileEntry] | None = None) -> IndexManifest:
    """Hash every file of the staged version into the manifest and write ``manifest.json``.

    ``hashed``: entries of files the job already hashed (and has not changed since)."""
    files = {}
    for path in sorted(vdir.iterdir()):
        if path.is_file() and path.name != MANIFEST:
            fsync_path(path)
            known = (hashed or {}).get(path.name)
            if known is not None and known.bytes == path.stat().st_size:
                files[path.name] = known
            else:
                files[path.name] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
    sealed = replace(manifest, files=files)
    failpoints.hit("publish.seal")
    write_manifest(vdir, sealed)
    return sealed


def publish(root: Path, staged: Path, version: str, keep: int) -> Path:
    """Rename the staged directory to ``root/version``, point ``CURRENT`` at it, prune old ones."""
    final = root / version
    if final.exists():
        raise PreconditionError(f"version {final} already exists")
    failpoints.hit("publish.rename")
    os.replace(staged, final)
    fsync_dir(root)
    failpoints.hit("publish.renamed")
    set_current(root, version)
    prune(root, keep)
    return final


def set_current(root: Path, version: str) -> None:
    if not (root / version / MANIFEST).is_file():
        raise NotFoundError(f"no published version {version!r} under {root}")
    switch_pointer(root / CURRENT, version)


def prune(root: Path, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest versions (never the current one); returns the deleted."""
    current = current_version(root)
    versions = list_versions(root)
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
    for v in doomed:
        trash = root / f".trash-{v}-{time.time_ns()}"
        failpoints.hit("publish.prune")
        os.replace(root / v, trash)  # readers following CURRENT never see a half-deleted version
        failpoints.hit("publish.trash")
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def remove_leftovers(root: Path) -> list[str]:
    """Delete the leftovers of killed jobs (call with the root locked); returns their names."""
    gone = []
    for pattern in LEFTOVER_PATTERNS:
        for path in sorted(root.glob(pattern)):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            gone.append(path.name)
    if gone:
        fsync_dir(root)
    return gone


def rollback(root: Path, to: str | None = None) -> str:
    """Point ``CURRENT`` at ``to`` (default: the version before the current one)."""
    versions = list_versions(root)
    current = current_version(root)
    if to is None:
        older = [v for v in versions if current is None or v < current]
        if not older:
            raise NotFoundError(f"no version older than {current} is kept under {root}")
        to = older[-1]
    set_current(root, to)
    return to
