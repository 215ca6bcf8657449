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

:class:`LiveCheckpoints` keeps a checkpoint usable across an erasure: the deletion is a journal change
after the checkpoint's ``seq``, so a restart on it replays the deletion (the subject leaves the templates
and every cohort before the server is SERVING) and the subject is never served. The checkpoint's
*bytes* still hold the subject's template until it is rewritten: after an erasure the server rewrites it
without the subject in the background, at most ``erase_s`` (``FACESEARCH_CHECKPOINT_ERASE_S``, default
30 s) after the deletion (a burst of deletions is written once), at a clean shutdown, and after a crash
right after the start's install (which replays the deletion); a rewrite that fails removes the
checkpoint instead. ``facesearch-index erase-status`` reports the subject as held by the checkpoint
until then. Writing one saves a copy of the statistics (taken under the gallery's write lock, a memory
copy) to a staging file without the lock, in one background thread, after an install and every
:attr:`LiveCheckpoints.EVERY` changes, then moves it in place and writes the pointer: the previous
checkpoint stays usable until the new one is complete.
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
    "ERASE_S",
    "META_FILE",
    "STAGING_FILE",
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
STAGING_FILE = "open_set_checkpoint.next.npz"  # a checkpoint being written (removed at start when left)
FORMAT = 1
ERASE_S = 30.0  # default of FACESEARCH_CHECKPOINT_ERASE_S: an erased subject leaves the checkpoint within this


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
    """Remove the checkpoint (pointer first) and any staging file; a failure is logged (the next save replaces it)."""
    for name in (META_FILE, DATA_FILE, STAGING_FILE, STAGING_FILE + ".tmp.npz", DATA_FILE + ".tmp.npz"):
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
    to checkpoint. Requests come after an install and after every :data:`EVERY` changes; a burst of
    requests is written once, ``delay_s`` after its first. An erasure makes a write due ``erase_s / 2``
    after it (the erasures of that half-window are written once; the write has the other half).

    Erasure: :meth:`erased` (before a deletion is acknowledged) leaves the checkpoint in place (a
    restart on it replays the deletion) and makes a rewrite due within ``erase_s``; :attr:`erase_pending`
    stays true until a checkpoint taken after the last erasure is on disk (or none is).
    """

    EVERY = 1000  # changes between checkpoints (a kill -9 then replays at most about this many)

    def __init__(
        self,
        directory: Path,
        take: Callable[[], Taken | None],
        *,
        delay_s: float = 2.0,
        erase_s: float = ERASE_S,
    ) -> None:
        self.directory = directory
        self._take = take
        self.delay_s = delay_s
        self.erase_s = erase_s
        self.erasures = 0  # erasures since start (a copy taken before one may hold an erased subject)
        self.written = 0  # checkpoints written
        self.erase_rewrites = 0  # checkpoints written (or removed) to drop erased subjects from the disk
        self._changes = 0  # changes since the last request
        self._pending = False  # a request not yet written
        self._on_disk: tuple[CheckpointKey, int] | None = None  # (key, seq) of the checkpoint on disk, when known
        self._erase_due: float | None = None  # monotonic deadline of a rewrite that drops erased subjects
        self._files = threading.Lock()  # erasures vs the final step of a save
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._started = False  # restored once (leftover staging files removed)

    @property
    def erase_pending(self) -> bool:
        """Whether the checkpoint on disk may still hold a subject erased since (or replayed at) the start."""
        return self._erase_due is not None

    def restore(self, key: CheckpointKey, *, at_least: int, at_most: int) -> tuple[GalleryOpenSet, int] | None:
        """The checkpoint of ``key`` at a journal position in ``at_least..at_most`` (see :func:`load`)."""
        if not self._started:  # at start only (later, the thread may be writing them)
            self._started = True
            for name in (STAGING_FILE, STAGING_FILE + ".tmp.npz", DATA_FILE + ".tmp.npz"):  # a write a crash stopped
                (self.directory / name).unlink(missing_ok=True)
        found = load(self.directory, key, at_least=at_least, at_most=at_most)
        self._on_disk = (key, found[1]) if found is not None else None
        return found

    def holds(self, key: CheckpointKey, seq: int) -> bool:
        """Whether the checkpoint on disk is of ``key`` at journal position ``seq`` (nothing to write)."""
        return self._on_disk == (key, seq) and not self.erase_pending

    # -- the writer's calls (under the gallery's write lock) -----------------------------------
    def changed(self, n: int = 1) -> None:
        self._changes += n
        if self._changes >= self.EVERY:
            self.request()

    def erased(self) -> None:
        """A subject is being erased: the checkpoint stays usable (a restart replays the deletion after
        it) and is rewritten without the subject within :attr:`erase_s`."""
        with self._files:
            self.erasures += 1
            if self._erase_due is None:
                self._erase_due = time.monotonic() + self.erase_s
        self._start()
        self._wake.set()

    def replayed_erasures(self, n: int, seq: int) -> None:
        """The start replayed ``n`` deletions made after the restored checkpoint (at ``seq``): its bytes
        hold those subjects until the rewrite the install requests."""
        with self._files:
            if self._erase_due is None:
                self._erase_due = time.monotonic() + self.erase_s
        log.warning(
            "open-set checkpoint at journal seq %d predates %d deletion(s): they are replayed (the subjects are "
            "not served) and the checkpoint is rewritten without them within %gs",
            seq,
            n,
            self.erase_s,
        )

    def drop(self) -> None:
        """Remove the checkpoint (it is for a version no longer served and nothing replaces it)."""
        with self._files:
            self._on_disk = None
            discard(self.directory)
            self._erased_from_disk()

    def request(self) -> None:
        self._changes = 0
        self._pending = True
        self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="open-set-checkpoint", daemon=True)
                self._thread.start()

    def close(self, *, final: bool = False) -> None:
        """Stop the thread; ``final``: first write a checkpoint of changes not yet in one (a clean
        shutdown, so the next start replays nothing, and no erased subject is left in it)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        if final and (self._changes or self._pending or self.erase_pending):
            self._write_or_discard("at shutdown")

    # -- the background thread -----------------------------------------------------------------
    def _due(self, first: float) -> float:
        """When to write: ``delay_s`` after a request, half the window after an erasure (the deletions of
        that half are written together; the write has the other half)."""
        due = first + self.delay_s if self._pending else first
        erase_due = self._erase_due
        if erase_due is not None:
            due = min(due, erase_due - self.erase_s / 2) if self._pending else erase_due - self.erase_s / 2
        return due

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            first = time.monotonic()
            while (left := self._due(first) - time.monotonic()) > 0:
                if self._stop.wait(min(left, 0.5)):
                    return
            if self._stop.is_set():
                return
            self._wake.clear()
            self._write_or_discard("")

    def _write_or_discard(self, when: str) -> None:
        """:meth:`write_now`; when it fails while an erasure is pending, remove the checkpoint instead."""
        try:
            self.write_now()
        except Exception:  # a checkpoint only saves replay time: never fatal
            log.exception("open-set checkpoint not written%s", f" {when}" if when else "")
            if self.erase_pending:
                log.warning("open-set checkpoint removed instead (it may hold an erased subject)")
                self.drop()

    def _erased_from_disk(self, erasures: int | None = None) -> None:
        """Under ``_files``: the disk holds no subject erased before copy ``erasures`` (None: no checkpoint)."""
        if self._erase_due is not None and (erasures is None or erasures == self.erasures):
            self._erase_due = None
            self.erase_rewrites += 1
            log.info("open-set checkpoint holds no erased subject any more")

    def write_now(self) -> bool:
        """Take a copy and save it (True), unless there is none or it is the one on disk."""
        self._pending = False
        taken = self._take()
        if taken is None:  # no statistics to write: a checkpoint that may hold an erased subject goes
            if self.erase_pending:
                self.drop()
            return False
        if self._on_disk == (taken.key, taken.seq):  # nothing new since the one on disk (the same state)
            with self._files:
                self._erased_from_disk(taken.erasures)
            return False
        t0 = time.perf_counter()
        meta_path, data_path, staging = (self.directory / n for n in (META_FILE, DATA_FILE, STAGING_FILE))
        taken.data.save(staging)  # the checkpoint on disk stays usable meanwhile
        sha = sha256_file(staging)
        with self._files:
            meta = {"format": FORMAT, "key": asdict(taken.key), "seq": taken.seq, "sha256": sha}
            staging.replace(data_path)  # the old pointer's sha256 no longer matches: never a mixed pair
            write_atomic(meta_path, json.dumps(meta))
            self._on_disk = (taken.key, taken.seq)
            self._erased_from_disk(taken.erasures)
            if self._erase_due is not None:  # an erasure came after the copy: written again when due
                self._wake.set()
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
