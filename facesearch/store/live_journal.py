"""The live journal: enrollments and deletions made since the published index version was built.

The server writes it (one writer, held by ``journal.lock``); ``facesearch-index compact`` reads a
consistent snapshot of it and publishes a version that contains it; the server then drops exactly
the part that the new version contains. Layout of a journal directory (by default
``INDEX_ROOT/live``)::

    journal.sqlite        WAL mode, synchronous=FULL: every change is one transaction
    journal.lock          the writer's lock (fcntl.flock), holding its pid
    vectors-000002.vec    the live faces' embeddings: append-only checksummed records
                          (:mod:`facesearch.store.journal_vectors`), fsync'd *before* the
                          transaction that references them commits

Tables of ``journal.sqlite``:

``ops``         one row per change (``seq``, the change's sequence number, AUTOINCREMENT so
                it never goes back), kind and identity: the high-water mark and an audit log.
``identities``  the latest state of every identity touched since the version: ``deleted``,
                the effective name and metadata, and the ``seq`` of the last change to it.
``faces``       live faces (not yet in a published version): vector id, ``seq``, identity,
                offset of the embedding in the vectors file, box, scores, source.
``tombstones``  deleted faces (``vector_id``, ``seq``): of the published version, and of
                live faces (a face may already be in a version being compacted).
``quarantine``  faces whose record was damaged, deleted by ``facesearch-index journal repair``
                (also tombstoned): what was lost, for the operator to re-enroll.

A change with ``seq <= N`` is in a version whose identity store has meta ``live_seq = N``
(and ``live_journal_id`` equal to this journal's id). Live vector ids start at
:data:`LIVE_VECTOR_ID_BASE`, far above the ids ``facesearch-index`` allocates, and are never
reused, so face ids stay valid when a compaction moves faces into a version.

Durability: a change is acknowledged only after its vectors were fsync'd and its SQLite
transaction committed (WAL + ``synchronous=FULL`` fsyncs the log on commit).

Failures while writing (:mod:`facesearch.store.storage_errors`): a full disk (ENOSPC, EDQUOT,
SQLite "database or disk is full") raises :class:`~facesearch.errors.UnavailableError` with
``Reason.STORAGE_FULL``, an I/O error ``STORAGE_ERROR``; nothing was written: the transaction is
rolled back and the vectors file cut back to its last good record before the error is raised. The
one ambiguous case is a failing ``COMMIT`` itself (the disk may still hold it): its records are
kept, so whichever way SQLite recovers, no committed row points past the file. The next write
simply tries again: writes resume when space returns, without a restart.

Opening for writing (:meth:`LiveJournal.open`) takes the lock (a second writer is refused, naming
the holder's pid), then checks every record a row references:

- bytes after the last referenced record are writes that were never acknowledged (a crash between
  fsync and commit, a torn record): they are cut off, and the cut is logged;
- a referenced record that is missing, belongs to another face or fails its checksum is damage:
  the open is refused (``Reason.JOURNAL_DAMAGED``) with the records named and the repair command,
  ``facesearch-index journal repair DIR`` (:meth:`LiveJournal.repair`: the damaged faces are
  tombstoned and listed in ``quarantine``; a damaged embedding is never served);
- a journal written before checksums (schema 1, ``vectors-*.f32``) is rewritten as checksummed
  records in one transaction (the new file is complete and fsync'd before the transaction that
  switches to it commits) and its schema becomes 2, which the code before this change refuses.

Readers (:meth:`LiveJournal.open_reader`, compaction) take no lock, read both record formats and
check every record they return (:meth:`snapshot` raises on damage).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import ContractMismatchError, IndexFormatError, PreconditionError, Reason
from facesearch.store.journal_db import (
    JOURNAL_FILE,
    LIVE_VECTOR_ID_BASE,
    READABLE_SCHEMAS,
    SCHEMA,
    SCHEMA_VERSION,
    connect,
    init_meta,
    read_meta,
)
from facesearch.store.journal_db import high_water as high_water_of
from facesearch.store.journal_vectors import (
    FORMAT_CHECKSUMMED,
    Damage,
    RecordLayout,
    VectorsAppender,
    file_name,
    file_number,
    header_problem,
    read_records,
    write_file,
)
from facesearch.store.storage_errors import storage_errors
from facesearch.util import failpoints
from facesearch.util.lock import FileLock, LockHeldError

__all__ = [
    "CONTRACTS_DIR",
    "JOURNAL_FILE",
    "LIVE_VECTOR_ID_BASE",
    "LOCK_FILE",
    "Inspection",
    "JournalPlace",
    "JournalSnapshot",
    "LiveFace",
    "LiveIdentity",
    "LiveJournal",
    "NewFace",
    "QuarantinedFace",
    "Tombstone",
    "damaged_message",
    "journal_dirs",
    "journal_place",
]

log = logging.getLogger(__name__)

LOCK_FILE = "journal.lock"
#: Journals of model contracts other than the first one a live directory served.
CONTRACTS_DIR = "contracts"
#: Damaged records named in an error message (the report lists them all).
_NAMED = 5


@dataclass(frozen=True, slots=True)
class JournalPlace:
    """Where the journal of one model contract lives under a live directory, and what else is there."""

    directory: Path
    #: Journals of other contracts under the same live directory: (directory, contract id, live faces).
    others: tuple[tuple[Path, str, int], ...]


def journal_place(live_dir: str | Path, contract_id: str) -> JournalPlace:
    """The journal directory of ``contract_id`` under ``live_dir``.

    A live directory's first model keeps its journal at ``live_dir`` itself; a model with another
    contract (a promoted bundle) gets ``live_dir/contracts/<contract>/``, an empty journal of its own.
    Live faces hold embeddings of the model that made them and cannot be searched with another, so
    a model change never mixes, moves or deletes them: switching back to the old bundle finds them
    where they were, and ``others`` lets the caller say how many are not being served.
    """
    live_dir = Path(live_dir)
    held = {d: _journal_summary(d) for d in journal_dirs(live_dir)}
    extra = live_dir / CONTRACTS_DIR
    if live_dir not in held:
        chosen = live_dir
    else:
        chosen = next((d for d, (c, _) in held.items() if c == contract_id), extra / contract_id.replace(":", "-"))
    others = tuple((d, c, n) for d, (c, n) in held.items() if d != chosen)
    return JournalPlace(chosen, others)


def journal_dirs(live_dir: str | Path) -> list[Path]:
    """Every journal directory under a live directory: its own, then ``contracts/*`` in name order."""
    live_dir = Path(live_dir)
    candidates = [live_dir]
    extra = live_dir / CONTRACTS_DIR
    if extra.is_dir():
        candidates += sorted(p for p in extra.iterdir() if p.is_dir())
    return [d for d in candidates if (d / JOURNAL_FILE).is_file()]


def _journal_summary(directory: Path) -> tuple[str, int]:
    """(contract id, alive live faces) of an existing journal, read without changing it."""
    path = directory / JOURNAL_FILE
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'contract_id'").fetchone()
            count = conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise IndexFormatError(f"live journal {path} is unreadable: {err}") from err
    if row is None:
        raise IndexFormatError(f"live journal {path} has no meta (not initialised)")
    return str(json.loads(row[0])), int(count)


@dataclass(frozen=True, slots=True)
class LiveIdentity:
    identity_id: str
    seq: int
    deleted: bool
    name: str | None
    metadata: dict[str, str]
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class LiveFace:
    vector_id: int
    seq: int
    identity_id: str
    source: str | None
    box: tuple[float, float, float, float] | None
    det_score: float | None
    face_size: float | None
    blur: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class NewFace:
    """A face to enroll: its embedding (L2-normalised) and what is kept about it."""

    embedding: np.ndarray  # (d,) float32
    source: str | None
    box: tuple[float, float, float, float] | None
    det_score: float | None
    face_size: float | None
    blur: float | None


@dataclass(frozen=True, slots=True)
class Tombstone:
    vector_id: int
    seq: int
    identity_id: str | None


@dataclass(frozen=True, slots=True)
class JournalSnapshot:
    """The journal's state after every change with ``seq <= high_water`` (and none after)."""

    journal_id: str
    high_water: int
    identities: list[LiveIdentity]
    faces: list[LiveFace]  # vector id order
    embeddings: np.ndarray  # (len(faces), d) float32, row i for faces[i]
    tombstones: list[Tombstone]

    @property
    def empty(self) -> bool:
        return not (self.identities or self.faces or self.tombstones)


@dataclass(frozen=True, slots=True)
class Inspection:
    """The state of a journal's vectors file (:meth:`LiveJournal.inspect`)."""

    vectors_file: str
    live_faces: int  # records that rows reference
    header: str | None  # what is wrong with a format-2 header (None: sound)
    damaged: tuple[Damage, ...]  # referenced records that cannot be served
    end: int  # where the last referenced record ends
    size: int  # the file's size (bytes after ``end`` are unacknowledged writes)

    @property
    def ok(self) -> bool:
        return self.header is None and not self.damaged


@dataclass(frozen=True, slots=True)
class QuarantinedFace:
    vector_id: int
    identity_id: str | None
    problem: str
    seq: int
    created_at: float


def damaged_message(directory: Path, vectors_file: str, header: str | None, damage: Sequence[Damage]) -> str:
    """The error a damaged journal is refused with: what, where, and the command that repairs it."""
    parts = ([header] if header else []) + [d.describe() for d in damage[:_NAMED]]
    more = f" and {len(damage) - _NAMED} more" if len(damage) > _NAMED else ""
    return (
        f"live journal {directory}: {len(damage)} damaged record(s) in {vectors_file}"
        + (" (and a damaged header)" if header else "")
        + f": {'; '.join(parts)}{more}. Their embeddings cannot be served. Stop the server and run "
        f"`facesearch-index journal repair {directory}` to quarantine those faces (they are deleted and "
        f"listed by `facesearch-index journal check {directory}`; re-enroll them), or restore the "
        "directory from a backup"
    )


class LiveJournal:
    """One journal directory, opened to write (:meth:`open`, holding its lock) or to read.

    Writes are not thread-safe: the caller serialises them. :meth:`snapshot` may run in another
    thread meanwhile (a writer's snapshots read through a connection of their own).
    """

    def __init__(self, directory: Path, conn: sqlite3.Connection, meta: dict[str, Any], lock: FileLock | None) -> None:
        self.dir = directory
        self._conn = conn
        self._lock = lock
        self.d = int(meta["d"])
        self.journal_id = str(meta["journal_id"])
        self.contract_id = str(meta["contract_id"])
        self.schema = int(meta["schema_version"])
        self._appender: VectorsAppender | None = None

    # -- lifecycle ---------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | Path, *, contract_id: str, d: int, create: bool = True) -> LiveJournal:
        """Open (or create) the journal to write: takes its lock, checks its records, cuts a torn
        tail, migrates a journal written before checksums; refuses one of another model contract."""
        directory = Path(directory)
        path = directory / JOURNAL_FILE
        if not path.is_file() and not create:
            raise IndexFormatError(f"no live journal at {path}", reason=Reason.JOURNAL_MISSING)
        directory.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(directory)
        conn: sqlite3.Connection | None = None
        try:
            with storage_errors(f"live journal {directory}: open"):
                conn = connect(path)
                conn.executescript(SCHEMA)
                meta = read_meta(conn)
                if not meta:
                    meta = init_meta(conn, directory, contract_id, d)
            journal = cls(directory, conn, meta, lock)
            if journal.schema not in READABLE_SCHEMAS:
                raise IndexFormatError(
                    f"live journal {path} has schema {journal.schema}, this code reads {READABLE_SCHEMAS}"
                )
            if journal.contract_id != contract_id or journal.d != d:
                raise ContractMismatchError(
                    f"live journal {path} holds {journal.d}-d embeddings of model contract {journal.contract_id}, "
                    f"the loaded model is {contract_id}; compact it into an index of that model, or move it away "
                    "to start an empty one"
                )
            journal._recover()
        except BaseException:
            if conn is not None:
                conn.close()
            lock.release()
            raise
        return journal

    @classmethod
    def open_reader(cls, directory: str | Path) -> LiveJournal:
        """Open an existing journal to read snapshots only (e.g. while the server writes it); no lock."""
        path = Path(directory) / JOURNAL_FILE
        if not path.is_file():
            raise IndexFormatError(f"no live journal at {path}", reason=Reason.JOURNAL_MISSING)
        conn = connect(path)
        meta = read_meta(conn)
        if not meta:
            conn.close()
            raise IndexFormatError(f"live journal {path} has no meta (not initialised)")
        return cls(Path(directory), conn, meta, None)

    @classmethod
    def exists(cls, directory: str | Path) -> bool:
        return (Path(directory) / JOURNAL_FILE).is_file()

    def close(self) -> None:
        self._conn.close()
        if self._lock is not None:
            self._lock.release()

    @property
    def writer(self) -> bool:
        return self._lock is not None

    def _meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @property
    def vectors_path(self) -> Path:
        return self.dir / str(self._meta("vectors_file"))

    def _layout(self, path: Path) -> RecordLayout:
        return RecordLayout.of(path, self.d)

    def _what(self, action: str) -> str:
        return f"live journal {self.dir}: {action}"

    # -- checking and repairing ------------------------------------------------------------
    def _recover(self) -> None:
        """The writer's open: refuse damage, cut the unreferenced tail, migrate format 1."""
        path = self.vectors_path
        refs = self._conn.execute("SELECT vector_id, offset FROM faces").fetchall()
        header, damage, end = _inspect(path, self._layout(path), refs)
        if header or damage:
            raise IndexFormatError(damaged_message(self.dir, path.name, header, damage), reason=Reason.JOURNAL_DAMAGED)
        layout = self._layout(path)
        if not path.exists():  # nothing references it (else: damage): start a fresh file
            self._rewrite("recreate a missing vectors file")
            return
        appender = VectorsAppender(path, layout, end)
        size = path.stat().st_size
        if size > end:
            with storage_errors(self._what("cut the unreferenced tail")):
                appender.cut(end)
            whole = (size - end) // layout.size
            log.warning(
                "live journal %s: cut %d bytes after the last acknowledged record of %s (%d unacknowledged "
                "record(s)%s: writes a crash or a full disk interrupted before they were acknowledged)",
                self.dir,
                size - end,
                path.name,
                whole,
                f" and a torn record of {(size - end) % layout.size} bytes" if (size - end) % layout.size else "",
            )
        self._appender = appender
        if layout.version != FORMAT_CHECKSUMMED or self.schema != SCHEMA_VERSION:
            old = path.name
            self._rewrite("migrate to checksummed records")
            log.info(
                "live journal %s: migrated to checksummed records (schema %d -> %d, %s -> %s, %d faces)",
                self.dir,
                self.schema,
                SCHEMA_VERSION,
                old,
                self.vectors_path.name,
                len(refs),
            )
            self.schema = SCHEMA_VERSION

    @classmethod
    def open_to_repair(cls, directory: str | Path) -> LiveJournal:
        """Open a journal to write without checking it (for :func:`facesearch.store.journal_check.repair`):
        takes the writer's lock, so the server must be stopped."""
        directory = Path(directory)
        if not (directory / JOURNAL_FILE).is_file():
            raise IndexFormatError(f"no live journal at {directory / JOURNAL_FILE}", reason=Reason.JOURNAL_MISSING)
        lock = _take_lock(directory)
        try:
            conn = connect(directory / JOURNAL_FILE)
            with storage_errors(f"live journal {directory}: open"):
                conn.executescript(SCHEMA)
            return cls(directory, conn, read_meta(conn), lock)
        except BaseException:
            lock.release()
            raise

    def inspect(self) -> Inspection:
        """Every referenced record checked, read-only (in one read transaction)."""
        self._conn.execute("BEGIN")
        try:
            path = self.dir / str(self._meta("vectors_file"))
            refs = self._conn.execute("SELECT vector_id, offset FROM faces").fetchall()
        finally:
            self._conn.execute("COMMIT")
        header, damage, end = _inspect(path, self._layout(path), refs)
        size = path.stat().st_size if path.exists() else 0
        return Inspection(path.name, len(refs), header, tuple(damage), end, size)

    def quarantine(self, damage: Sequence[Damage]) -> Path:
        """Delete and tombstone the faces of damaged records (listed in ``quarantine``), in one
        transaction that also rewrites the vectors file with the good records; returns the new file."""
        path = self.vectors_path
        owner = dict(self._conn.execute("SELECT vector_id, identity_id FROM faces").fetchall())
        created: list[Path] = []
        with storage_errors(self._what("quarantine")), self._txn(undo=lambda: _unlink_all(created)):
            if damage:
                seq = self._op("quarantine", None, {"vector_ids": [d.vector_id for d in damage]})
                now = time.time()
                for dmg in damage:
                    who = owner.get(dmg.vector_id)
                    self._conn.execute("DELETE FROM faces WHERE vector_id = ?", (dmg.vector_id,))
                    self._conn.execute("INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)", (dmg.vector_id, seq, who))
                    self._conn.execute(
                        "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?)",
                        (dmg.vector_id, seq, who, dmg.problem, now),
                    )
            new, end = self._rotate(created)
            self._set_meta("schema_version", SCHEMA_VERSION)
        self._finish_rotation(path, new, end)
        self.schema = SCHEMA_VERSION
        return new

    def quarantined(self) -> tuple[QuarantinedFace, ...]:
        """Faces ``quarantine`` ever took out (until their identity is deleted)."""
        try:
            rows = self._conn.execute(
                "SELECT vector_id, identity_id, problem, seq, created_at FROM quarantine ORDER BY vector_id"
            ).fetchall()
        except sqlite3.OperationalError:  # schema 1: no quarantine table yet
            return ()
        return tuple(QuarantinedFace(r[0], r[1], r[2], r[3], r[4]) for r in rows)

    # -- reads -------------------------------------------------------------------------
    def high_water(self) -> int:
        return high_water_of(self._conn)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for a read transaction: the writer's snapshots use one of their own."""
        if not self.writer:
            yield self._conn
            return
        conn = connect(self.dir / JOURNAL_FILE)
        try:
            yield conn
        finally:
            conn.close()

    def snapshot(self, after_seq: int = 0) -> JournalSnapshot:
        """Everything with ``seq > after_seq``, read in one transaction (a consistent cut); every
        embedding checked (damage raises ``JOURNAL_DAMAGED``: none is ever returned)."""
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                high = high_water_of(conn)
                row = conn.execute("SELECT value FROM meta WHERE key = 'vectors_file'").fetchone()
                vectors_file = self.dir / str(json.loads(row[0]))
                identities = [
                    LiveIdentity(r[0], r[1], bool(r[2]), r[3], json.loads(r[4]) if r[4] else {}, r[5], r[6])
                    for r in conn.execute(
                        "SELECT identity_id, seq, deleted, name, metadata, created_at, updated_at "
                        "FROM identities WHERE seq > ? ORDER BY identity_id",
                        (after_seq,),
                    )
                ]
                rows = conn.execute(
                    "SELECT vector_id, seq, identity_id, offset, source, x1, y1, x2, y2, det_score, face_size, blur, "
                    "created_at FROM faces WHERE seq > ? ORDER BY vector_id",
                    (after_seq,),
                ).fetchall()
                tombstones = [
                    Tombstone(r[0], r[1], r[2])
                    for r in conn.execute(
                        "SELECT vector_id, seq, identity_id FROM tombstones WHERE seq > ? ORDER BY vector_id",
                        (after_seq,),
                    )
                ]
                refs = [(r[0], r[3]) for r in rows]
                if refs and not vectors_file.exists():
                    embeddings, damage = np.zeros((0, self.d), np.float32), [Damage(v, o, "missing") for v, o in refs]
                else:
                    embeddings, damage = read_records(vectors_file, self._layout(vectors_file), refs)
            finally:
                conn.execute("COMMIT")
        if damage:
            raise IndexFormatError(
                damaged_message(self.dir, vectors_file.name, None, damage), reason=Reason.JOURNAL_DAMAGED
            )
        faces = [
            LiveFace(
                r[0], r[1], r[2], r[4], None if r[5] is None else (r[5], r[6], r[7], r[8]), r[9], r[10], r[11], r[12]
            )
            for r in rows
        ]
        return JournalSnapshot(self.journal_id, high, identities, faces, embeddings, tombstones)

    # -- writes ------------------------------------------------------------------------
    def _writer_appender(self) -> VectorsAppender:
        if self._appender is None:
            raise PreconditionError(f"live journal {self.dir} was opened to read, not to write")
        return self._appender

    @contextlib.contextmanager
    def _txn(self, undo: Callable[[], None] | None = None) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``): committed whole or rolled back.

        ``undo`` runs when the body (or the ``journal.commit`` failpoint before ``COMMIT``) fails:
        nothing was committed, so what the body wrote outside SQLite can go. Not when ``COMMIT``
        itself fails: the disk may hold the transaction after all.
        """
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            failpoints.hit("journal.commit")
        except BaseException:
            self._rollback()
            if undo is not None:
                undo()
            raise
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        failpoints.hit("journal.committed")

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def enroll(
        self,
        identity: LiveIdentity,
        faces: Sequence[NewFace],
        *,
        within: Callable[[sqlite3.Connection, int, np.ndarray], None] | None = None,
    ) -> tuple[int, np.ndarray]:
        """Add ``faces`` to ``identity`` (whose row is written as given, with the new seq).

        Returns ``(seq, vector_ids)``; durable when this returns. A full or failing disk raises
        :class:`~facesearch.errors.UnavailableError` with nothing written. ``within(conn, seq,
        vector_ids)`` runs last inside the transaction, right before the commit (the server records
        the request id there and checks the caller's deadline): if it raises, nothing is written.
        """
        embeddings = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, self.d), np.float32)
        if embeddings.shape != (len(faces), self.d):
            raise IndexFormatError(f"embeddings of shape {embeddings.shape}, expected ({len(faces)}, {self.d})")
        appender = self._writer_appender()
        start = appender.end
        now = time.time()
        what = self._what(f"enroll {identity.identity_id!r}")
        with storage_errors(what), self._txn(undo=lambda: appender.cut(start)):
            first = int(self._meta("next_vector_id"))
            vids = np.arange(first, first + len(faces), dtype=np.int64)
            offsets = appender.append(vids, embeddings)
            seq = self._op("enroll", identity.identity_id, {"faces": len(faces)})
            self._put_identity(identity, seq)
            self._conn.executemany(
                "INSERT INTO faces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        int(v),
                        seq,
                        identity.identity_id,
                        off,
                        f.source,
                        *(f.box or (None,) * 4),
                        f.det_score,
                        f.face_size,
                        f.blur,
                        now,
                    )
                    for v, off, f in zip(vids.tolist(), offsets, faces, strict=True)
                ],
            )
            self._set_meta("next_vector_id", first + len(faces))
            if within is not None:
                within(self._conn, seq, vids)
        return seq, vids

    def delete_identity(self, identity: LiveIdentity, vector_ids: Sequence[int]) -> int:
        """Mark ``identity`` deleted and tombstone ``vector_ids`` (all its faces); returns the seq."""
        self._writer_appender()
        with storage_errors(self._what(f"delete {identity.identity_id!r}")), self._txn():
            seq = self._op("delete_identity", identity.identity_id, {"faces": len(vector_ids)})
            self._put_identity(identity, seq)
            self._conn.execute("DELETE FROM faces WHERE identity_id = ?", (identity.identity_id,))
            self._conn.execute("DELETE FROM quarantine WHERE identity_id = ?", (identity.identity_id,))
            self._tombstone(vector_ids, seq, identity.identity_id)
        return seq

    def delete_faces(self, vector_ids: Sequence[int], identity_ids: Sequence[str]) -> int:
        """Tombstone faces (of the version or live); returns the seq."""
        self._writer_appender()
        with storage_errors(self._what("delete faces")), self._txn():
            seq = self._op("delete_faces", None, {"vector_ids": [int(v) for v in vector_ids]})
            for chunk in _chunks([int(v) for v in vector_ids], 900):
                self._conn.execute(f"DELETE FROM faces WHERE vector_id IN ({','.join('?' * len(chunk))})", chunk)
            self._conn.executemany(
                "INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)",
                [(int(v), seq, i) for v, i in zip(vector_ids, identity_ids, strict=True)],
            )
        return seq

    def prune(self, upto_seq: int) -> None:
        """Forget every change with ``seq <= upto_seq`` (a published version contains them)."""
        self._writer_appender()
        old = self.vectors_path
        created: list[Path] = []
        with storage_errors(self._what("prune")), self._txn(undo=lambda: _unlink_all(created)):
            for table in ("ops", "identities", "faces", "tombstones"):
                self._conn.execute(f"DELETE FROM {table} WHERE seq <= ?", (upto_seq,))
            new, end = self._rotate(created)
        self._finish_rotation(old, new, end)

    def _rewrite(self, why: str) -> None:
        """Rotate the vectors file now, in a transaction of its own (and mark the schema current)."""
        old = self.vectors_path
        created: list[Path] = []
        with storage_errors(self._what(why)), self._txn(undo=lambda: _unlink_all(created)):
            new, end = self._rotate(created)
            self._set_meta("schema_version", SCHEMA_VERSION)
        self._finish_rotation(old, new, end)

    def _rotate(self, created: list[Path]) -> tuple[Path, int]:
        """Copy the still-referenced vectors into a new checksummed file (inside the caller's
        transaction); returns the new file and the end of its last record."""
        old = self.vectors_path
        rows = self._conn.execute("SELECT vector_id, offset FROM faces ORDER BY vector_id").fetchall()
        keep = np.zeros((0, self.d), np.float32)
        if rows:
            keep, damage = read_records(old, self._layout(old), rows)
            if damage:  # never copy a damaged record (repair quarantines them first)
                raise IndexFormatError(damaged_message(self.dir, old.name, None, damage), reason=Reason.JOURNAL_DAMAGED)
        new = self.dir / file_name(file_number(old) + 1)
        layout = RecordLayout(FORMAT_CHECKSUMMED, self.d)
        created.append(new)
        offsets = write_file(new, layout, np.asarray([r[0] for r in rows], dtype=np.int64), keep)
        self._conn.executemany(
            "UPDATE faces SET offset = ? WHERE vector_id = ?",
            [(off, r[0]) for off, r in zip(offsets, rows, strict=True)],
        )
        self._set_meta("vectors_file", new.name)
        return new, layout.header + len(rows) * layout.size

    def _finish_rotation(self, old: Path, new: Path, end: int) -> None:
        """After the switch committed: append to the new file; drop files older than the previous
        one (kept for readers in the middle of a snapshot)."""
        self._appender = VectorsAppender(new, RecordLayout(FORMAT_CHECKSUMMED, self.d), end)
        failpoints.hit("journal.unlink")
        for stale in self.dir.glob("vectors-*"):
            if stale.name not in (new.name, old.name):
                with contextlib.suppress(OSError):
                    stale.unlink()

    # -- internals ---------------------------------------------------------------------
    def _op(self, kind: str, identity_id: str | None, detail: dict[str, Any]) -> int:
        cur = self._conn.execute(
            "INSERT INTO ops (kind, identity_id, created_at, detail) VALUES (?, ?, ?, ?)",
            (kind, identity_id, time.time(), json.dumps(detail)),
        )
        return int(cur.lastrowid or 0)

    def _put_identity(self, identity: LiveIdentity, seq: int) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO identities VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                identity.identity_id,
                seq,
                int(identity.deleted),
                identity.name,
                json.dumps(identity.metadata) if identity.metadata else None,
                identity.created_at,
                identity.updated_at,
            ),
        )

    def _tombstone(self, vector_ids: Sequence[int], seq: int, identity_id: str | None) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)", [(int(v), seq, identity_id) for v in vector_ids]
        )


def _take_lock(directory: Path) -> FileLock:
    try:
        return FileLock(directory / LOCK_FILE).acquire()
    except LockHeldError as held:
        raise PreconditionError(
            f"live journal {directory} is being written by pid {held.holder_pid or '(unknown)'} ({held.path}): "
            "another facesearch-server on the same index root or live directory, or a `facesearch-index journal "
            "repair`; only one process may write a live journal: stop it first, or give this server its own "
            "FACESEARCH_LIVE_DIR",
            reason=Reason.LOCK_HELD,
        ) from None


def _inspect(path: Path, layout: RecordLayout, refs: Sequence[tuple[int, int]]) -> tuple[str | None, list[Damage], int]:
    """``(header problem, damaged referenced records, end of the last referenced record)``."""
    end = max((off + layout.size for _, off in refs), default=layout.header)
    if not path.exists():
        return None, [Damage(int(v), int(o), "missing") for v, o in refs], end
    _, damage = read_records(path, layout, refs)
    return header_problem(path, layout), damage, end


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
