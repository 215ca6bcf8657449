"""Checkpoints of the live gallery's open-set statistics, so a restart replays only what came after one.

Replaying the live journal into the open-set statistics (:meth:`server.gallery.Gallery.install`) costs,
per identity the journal touched, one pass over every identity's template and a search of the gallery
(:mod:`server.open_set_upkeep`): it grows with the delta times the gallery. A checkpoint is those
statistics as they stood after journal change ``seq`` on top of one published version; a restart that
finds one for the version it serves (and the same journal and parameters) loads it and replays only the
identities touched after ``seq``. The statistics are exactly what the full replay computes: they are
the state the incremental updates kept, and the replay applies the same updates.

Files, in the journal's directory (they hold templates, that is mean embeddings, and identity ids, so
they are erasure-relevant):

``open_set_checkpoint.npz``
    :meth:`facesearch.scoring.gallery_stats.GalleryOpenSet.save` of the statistics.
``open_set_checkpoint.json``
    what they belong to (:class:`CheckpointKey`), the journal position ``seq`` and the npz's sha256;
    written last (atomically), removed first: a checkpoint without it, or whose npz does not match
    its sha256, is ignored (the restart replays everything, as without checkpoints).

:class:`LiveCheckpoints` removes both when the server erases a subject, before the deletion is
acknowledged (a new checkpoint without the subject is written shortly after). Writing one copies the
statistics under the gallery's write lock (a memory copy) and saves the copy without it, in one
background thread, after an install and every :attr:`LiveCheckpoints.EVERY` changes.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from facesearch.errors import FaceSearchError
from facesearch.scoring.gallery_stats import GalleryOpenSet
from facesearch.store.index_artifact import MANIFEST
from facesearch.util.fs import fsync_dir, sha256_file, write_atomic
from server.base_index import BaseIndex
from server.open_set_upkeep import OpenSetParams

__all__ = [
    "DATA_FILE",
    "META_FILE",
    "CheckpointKey",
    "LiveCheckpoints",
    "Taken",
    "copy_of",
    "discard",
    "key_for",
    "load",
]

log = logging.getLogger(f"facesearch.{__name__}")

DATA_FILE = "open_set_checkpoint.npz"
META_FILE = "open_set_checkpoint.json"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class CheckpointKey:
    """What a checkpoint's statistics were computed for (all must match for it to be used)."""

    version: str  # the published version ("" for none)
    manifest_sha256: str  # of that version's manifest.json ("" for none)
    journal_id: str
    k: int
    rule: str
    depth: int | None


def load(directory: Path, key: CheckpointKey, *, at_least: int, at_most: int) -> tuple[GalleryOpenSet, int] | None:
    """The checkpoint for ``key`` with ``at_least <= seq <= at_most``, or None (none, another key, damaged)."""
    meta_path, data_path = directory / META_FILE, directory / DATA_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("open-set checkpoint %s unreadable (%s): replaying the whole journal", meta_path, err)
        return None
    seq = int(meta.get("seq", -1))
    if meta.get("format") != FORMAT or meta.get("key") != asdict(key):
        log.info("open-set checkpoint in %s is for another version, journal or parameters: not used", directory)
        return None
    if not at_least <= seq <= at_most:
        log.info("open-set checkpoint at journal seq %d is outside %d..%d: not used", seq, at_least, at_most)
        return None
    try:
        if sha256_file(data_path) != meta.get("sha256"):
            log.warning("open-set checkpoint %s does not match its sha256: replaying the whole journal", data_path)
            return None
        data = GalleryOpenSet.load(data_path)
    except (OSError, FaceSearchError) as err:
        log.warning("open-set checkpoint %s unreadable (%s): replaying the whole journal", data_path, err)
        return None
    return data, seq


def key_for(base: BaseIndex | None, journal_id: str, params: OpenSetParams) -> CheckpointKey:
    """The key of the statistics of ``base`` (or no version) plus journal ``journal_id`` under ``params``."""
    version, sha = "", ""
    if base is not None:
        version, sha = base.version, sha256_file(base.dir / MANIFEST)
    return CheckpointKey(version, sha, journal_id, params.k, params.rule, params.depth)


def discard(directory: Path) -> None:
    """Remove the checkpoint (pointer first); a failure is logged (the next save replaces it)."""
    for name in (META_FILE, DATA_FILE):
        try:
            (directory / name).unlink(missing_ok=True)
        except OSError as err:
            log.warning("cannot remove the open-set checkpoint %s: %s", directory / name, err)


@dataclass(frozen=True, slots=True)
class Taken:
    """A copy of the statistics to checkpoint, with what they belong to."""

    key: CheckpointKey
    seq: int
    data: GalleryOpenSet
    erasures: int  # :attr:`LiveCheckpoints.erasures` when the copy was taken


class LiveCheckpoints:
    """The gallery's checkpoints: restored at install, written in one background thread.

    ``take`` (called in that thread) returns a copy of the served statistics taken under the gallery's
    write lock with :attr:`erasures` read under it too (:class:`Taken`), or None when there is nothing
    to checkpoint. Requests come after an
    install, after every :data:`EVERY` changes, and after an erasure (which first removes the current
    checkpoint, before the deletion is acknowledged); a burst of requests is written once, ``delay_s``
    after its first. A checkpoint whose copy predates an erasure is never left behind.
    """

    EVERY = 1000  # changes between checkpoints (a kill -9 then replays at most about this many)

    def __init__(self, directory: Path, take: Callable[[], Taken | None], *, delay_s: float = 2.0) -> None:
        self.directory = directory
        self._take = take
        self.delay_s = delay_s
        self.erasures = 0  # erasures since start (a copy taken before one is stale)
        self.written = 0  # checkpoints written
        self._changes = 0  # changes since the last request
        self._pending = False  # a request not yet written
        self._on_disk: tuple[CheckpointKey, int] | None = None  # (key, seq) of the checkpoint on disk, when known
        self._files = threading.Lock()  # discard vs the final step of a save
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def restore(self, key: CheckpointKey, *, at_least: int, at_most: int) -> tuple[GalleryOpenSet, int] | None:
        """The checkpoint of ``key`` at a journal position in ``at_least..at_most`` (see :func:`load`)."""
        found = load(self.directory, key, at_least=at_least, at_most=at_most)
        self._on_disk = (key, found[1]) if found is not None else None
        return found

    # -- the writer's calls (under the gallery's write lock) -----------------------------------
    def changed(self, n: int = 1) -> None:
        self._changes += n
        if self._changes >= self.EVERY:
            self.request()

    def erased(self) -> None:
        """A subject is being erased: remove the checkpoint now (it may hold the subject's template)."""
        with self._files:
            self.erasures += 1
            self._on_disk = None
            discard(self.directory)
        self.request()

    def drop(self) -> None:
        """Remove the checkpoint (it is for a version no longer served and nothing replaces it)."""
        with self._files:
            self._on_disk = None
            discard(self.directory)

    def request(self) -> None:
        self._changes = 0
        self._pending = True
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="open-set-checkpoint", daemon=True)
                self._thread.start()
        self._wake.set()

    def close(self, *, final: bool = False) -> None:
        """Stop the thread; ``final``: first write a checkpoint of changes not yet in one (a clean
        shutdown, so the next start replays nothing)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        if final and (self._changes or self._pending):
            try:
                self.write_now()
            except Exception:
                log.exception("open-set checkpoint not written at shutdown")

    # -- the background thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.wait(self.delay_s):
                return
            self._wake.clear()
            try:
                self.write_now()
            except Exception:  # a checkpoint only saves replay time: never fatal
                log.exception("open-set checkpoint not written")

    def write_now(self) -> bool:
        """Take a copy and save it (True), unless there is none or an erasure came after the copy."""
        self._pending = False
        taken = self._take()
        if taken is None or self._on_disk == (taken.key, taken.seq):  # nothing new since the one on disk
            return False
        t0 = time.perf_counter()
        meta_path, data_path = self.directory / META_FILE, self.directory / DATA_FILE
        with self._files:
            if taken.erasures != self.erasures:
                return False
            self._on_disk = None
            meta_path.unlink(missing_ok=True)  # never a pointer to a half-written npz
        taken.data.save(data_path)
        sha = sha256_file(data_path)
        with self._files:
            if taken.erasures != self.erasures:  # erased meanwhile: this copy may hold the subject
                discard(self.directory)
                return False
            meta = {"format": FORMAT, "key": asdict(taken.key), "seq": taken.seq, "sha256": sha}
            write_atomic(meta_path, json.dumps(meta))
            self._on_disk = (taken.key, taken.seq)
        fsync_dir(self.directory)
        self.written += 1
        log.info(
            "open-set checkpoint at journal seq %d written (%d identities) in %.2fs",
            taken.seq,
            len(taken.data),
            time.perf_counter() - t0,
        )
        return True


def copy_of(data: GalleryOpenSet) -> GalleryOpenSet:
    """A deep copy (the served statistics change under the writer)."""
    return copy.deepcopy(data)
