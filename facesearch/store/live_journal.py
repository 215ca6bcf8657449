"""The live journal: enrollments and deletions made since the published index version was built.

The server writes it (one writer); ``facesearch-index compact`` reads a consistent snapshot of
it and publishes a version that contains it; the server then drops exactly the part that the
new version contains. Layout of ``LIVE_DIR`` (by default ``INDEX_ROOT/live``)::

    journal.sqlite        WAL mode, synchronous=FULL: every change is one transaction
    vectors-000001.f32    the live faces' embeddings, append-only records of
                          ``int64 vector_id`` + ``d`` float32 (little-endian), fsync'd
                          *before* the transaction that references them commits

Tables of ``journal.sqlite``:

``ops``         one row per change (``seq``, the change's sequence number, AUTOINCREMENT so
                it never goes back), kind and identity: the high-water mark and an audit log.
``identities``  the latest state of every identity touched since the version: ``deleted``,
                the effective name and metadata, and the ``seq`` of the last change to it.
``faces``       live faces (not yet in a published version): vector id, ``seq``, identity,
                offset of the embedding in the vectors file, box, scores, source.
``tombstones``  deleted faces (``vector_id``, ``seq``): of the published version, and of
                live faces (a face may already be in a version being compacted).

A change with ``seq <= N`` is in a version whose identity store has meta ``live_seq = N``
(and ``live_journal_id`` equal to this journal's id). Live vector ids start at
:data:`LIVE_VECTOR_ID_BASE`, far above the ids ``facesearch-index`` allocates, and are never
reused, so face ids stay valid when a compaction moves faces into a version.

Durability: a change is acknowledged only after its vectors were fsync'd and its SQLite
transaction committed (WAL + ``synchronous=FULL`` fsyncs the log on commit). A crash can
leave vector records that no committed row references; they are ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import ContractMismatchError, IndexFormatError, Reason

SCHEMA_VERSION = 1
JOURNAL_FILE = "journal.sqlite"
#: Journals of model contracts other than the first one a live directory served.
CONTRACTS_DIR = "contracts"
LIVE_VECTOR_ID_BASE = 1 << 48
_ID_BYTES = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    identity_id TEXT,
    created_at REAL NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS identities (
    identity_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    name TEXT,
    metadata TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    vector_id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    identity_id TEXT NOT NULL,
    offset INTEGER NOT NULL,
    source TEXT,
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,
    det_score REAL,
    face_size REAL,
    blur REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_identity ON faces(identity_id);
CREATE TABLE IF NOT EXISTS tombstones (
    vector_id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    identity_id TEXT
);
"""


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
    candidates = [live_dir]
    extra = live_dir / CONTRACTS_DIR
    if extra.is_dir():
        candidates += sorted(p for p in extra.iterdir() if p.is_dir())
    held = {d: _journal_summary(d) for d in candidates if (d / JOURNAL_FILE).is_file()}
    if live_dir not in held:
        chosen = live_dir
    else:
        chosen = next((d for d, (c, _) in held.items() if c == contract_id), extra / contract_id.replace(":", "-"))
    others = tuple((d, c, n) for d, (c, n) in held.items() if d != chosen)
    return JournalPlace(chosen, others)


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


class LiveJournal:
    """One journal directory. Writes are not thread-safe: the caller serialises them."""

    def __init__(self, directory: Path, conn: sqlite3.Connection, d: int) -> None:
        self.dir = directory
        self._conn = conn
        self.d = d
        self._record = _ID_BYTES + 4 * d

    # -- lifecycle ---------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | Path, *, contract_id: str, d: int, create: bool = True) -> LiveJournal:
        """Open (or create) the journal; refuses one written for another model contract."""
        directory = Path(directory)
        path = directory / JOURNAL_FILE
        if not path.is_file() and not create:
            raise IndexFormatError(f"no live journal at {path}", reason=Reason.JOURNAL_MISSING)
        directory.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(_SCHEMA)
        journal = cls(directory, conn, d)
        if journal._meta("schema_version") is None:
            journal._init_meta(contract_id, d)
        if journal._meta("schema_version") != SCHEMA_VERSION:
            raise IndexFormatError(
                f"live journal {path} has schema {journal._meta('schema_version')}, this code reads {SCHEMA_VERSION}"
            )
        held, held_d = journal._meta("contract_id"), int(journal._meta("d"))
        if held != contract_id or held_d != d:
            conn.close()
            raise ContractMismatchError(
                f"live journal {path} holds {held_d}-d embeddings of model contract {held}, the loaded model is "
                f"{contract_id}; compact it into an index of that model, or move it away to start an empty one"
            )
        journal._check_vectors_file()
        return journal

    @classmethod
    def open_reader(cls, directory: str | Path) -> LiveJournal:
        """Open an existing journal to read snapshots only (e.g. while the server writes it)."""
        path = Path(directory) / JOURNAL_FILE
        if not path.is_file():
            raise IndexFormatError(f"no live journal at {path}", reason=Reason.JOURNAL_MISSING)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        row = conn.execute("SELECT value FROM meta WHERE key = 'd'").fetchone()
        if row is None:
            conn.close()
            raise IndexFormatError(f"live journal {path} has no meta (not initialised)")
        return cls(Path(directory), conn, int(json.loads(row[0])))

    @property
    def contract_id(self) -> str:
        return str(self._meta("contract_id"))

    @classmethod
    def exists(cls, directory: str | Path) -> bool:
        return (Path(directory) / JOURNAL_FILE).is_file()

    def close(self) -> None:
        self._conn.close()

    def _init_meta(self, contract_id: str, d: int) -> None:
        name = "vectors-000001.f32"
        _create_empty(self.dir / name)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "contract_id": contract_id,
            "d": d,
            "journal_id": uuid.uuid4().hex,
            "vectors_file": name,
            "next_vector_id": LIVE_VECTOR_ID_BASE,
        }
        with self._txn():
            self._conn.executemany(
                "INSERT OR IGNORE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
            )

    def _meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @property
    def journal_id(self) -> str:
        return str(self._meta("journal_id"))

    @property
    def vectors_path(self) -> Path:
        return self.dir / str(self._meta("vectors_file"))

    def _check_vectors_file(self) -> None:
        """Cut a torn trailing record left by a crash (no committed row can reference it)."""
        path = self.vectors_path
        if not path.exists():
            committed = self._conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
            if committed:
                raise IndexFormatError(
                    f"live journal {self.dir}: {path.name} is missing but {committed} faces reference it"
                )
            _create_empty(path)
            return
        size = path.stat().st_size
        whole = size - size % self._record
        if whole != size:
            with path.open("r+b") as fh:
                fh.truncate(whole)
                os.fsync(fh.fileno())

    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``): committed whole or rolled back."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- reads -------------------------------------------------------------------------
    def high_water(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'ops'").fetchone()
        return int(row[0]) if row else 0

    def snapshot(self, after_seq: int = 0) -> JournalSnapshot:
        """Everything with ``seq > after_seq``, read in one transaction (a consistent cut)."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            high = self.high_water()
            vectors_file = self.dir / str(self._meta("vectors_file"))
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
                    "SELECT vector_id, seq, identity_id FROM tombstones WHERE seq > ? ORDER BY vector_id", (after_seq,)
                )
            ]
            embeddings = self._read_vectors(vectors_file, [(r[0], r[3]) for r in rows])
        finally:
            conn.execute("COMMIT")
        faces = [
            LiveFace(
                r[0], r[1], r[2], r[4], None if r[5] is None else (r[5], r[6], r[7], r[8]), r[9], r[10], r[11], r[12]
            )
            for r in rows
        ]
        return JournalSnapshot(self.journal_id, high, identities, faces, embeddings, tombstones)

    def _read_vectors(self, path: Path, refs: Sequence[tuple[int, int]]) -> np.ndarray:
        out = np.empty((len(refs), self.d), dtype=np.float32)
        if not refs:
            return out
        with path.open("rb") as fh:
            data = np.frombuffer(fh.read(), dtype=np.uint8)
        for i, (vid, offset) in enumerate(refs):
            rec = data[offset : offset + self._record]
            if len(rec) != self._record or int(rec[:_ID_BYTES].view("<i8")[0]) != vid:
                raise IndexFormatError(
                    f"live journal {self.dir}: vector of face {vid} at offset {offset} of "
                    f"{path.name} is missing or belongs to another face"
                )
            out[i] = rec[_ID_BYTES:].view("<f4")
        return out

    # -- writes ------------------------------------------------------------------------
    def enroll(self, identity: LiveIdentity, faces: Sequence[NewFace]) -> tuple[int, np.ndarray]:
        """Add ``faces`` to ``identity`` (whose row is written as given, with the new seq).

        Returns ``(seq, vector_ids)``; durable when this returns.
        """
        now = time.time()
        with self._txn():
            first = int(self._meta("next_vector_id"))
            vids = np.arange(first, first + len(faces), dtype=np.int64)
            offsets = self._append_vectors(vids, np.stack([f.embedding for f in faces]) if faces else None)
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
        return seq, vids

    def delete_identity(self, identity: LiveIdentity, vector_ids: Sequence[int]) -> int:
        """Mark ``identity`` deleted and tombstone ``vector_ids`` (all its faces); returns the seq."""
        with self._txn():
            seq = self._op("delete_identity", identity.identity_id, {"faces": len(vector_ids)})
            self._put_identity(identity, seq)
            self._conn.execute("DELETE FROM faces WHERE identity_id = ?", (identity.identity_id,))
            self._tombstone(vector_ids, seq, identity.identity_id)
        return seq

    def delete_faces(self, vector_ids: Sequence[int], identity_ids: Sequence[str]) -> int:
        """Tombstone faces (of the version or live); returns the seq."""
        with self._txn():
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
        with self._txn():
            for table in ("ops", "identities", "faces", "tombstones"):
                self._conn.execute(f"DELETE FROM {table} WHERE seq <= ?", (upto_seq,))
            self._rotate_vectors()

    def _rotate_vectors(self) -> None:
        """Copy the still-referenced vectors into a new file (inside the caller's transaction)."""
        old = self.vectors_path
        rows = self._conn.execute("SELECT vector_id, offset FROM faces ORDER BY vector_id").fetchall()
        keep = self._read_vectors(old, rows)
        number = int(old.stem.split("-")[-1]) + 1
        new = self.dir / f"vectors-{number:06d}.f32"
        _create_empty(new)
        offsets = self._write_records(new, np.asarray([r[0] for r in rows], dtype=np.int64), keep)
        self._conn.executemany(
            "UPDATE faces SET offset = ? WHERE vector_id = ?",
            [(off, r[0]) for off, r in zip(offsets, rows, strict=True)],
        )
        self._set_meta("vectors_file", new.name)
        for stale in self.dir.glob("vectors-*.f32"):  # keep the previous file for readers mid-snapshot
            if stale.name not in (new.name, old.name):
                stale.unlink(missing_ok=True)

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

    def _append_vectors(self, vids: np.ndarray, embeddings: np.ndarray | None) -> list[int]:
        if embeddings is None or len(vids) == 0:
            return []
        if embeddings.shape != (len(vids), self.d):
            raise IndexFormatError(f"embeddings of shape {embeddings.shape}, expected ({len(vids)}, {self.d})")
        return self._write_records(self.vectors_path, vids, embeddings)

    def _write_records(self, path: Path, vids: np.ndarray, embeddings: np.ndarray) -> list[int]:
        """Append records and fsync; returns their offsets."""
        if len(vids) == 0:
            return []
        records = np.empty((len(vids), self._record), dtype=np.uint8)
        records[:, :_ID_BYTES] = np.ascontiguousarray(vids, dtype="<i8").view(np.uint8).reshape(-1, _ID_BYTES)
        records[:, _ID_BYTES:] = np.ascontiguousarray(embeddings, dtype="<f4").view(np.uint8).reshape(len(vids), -1)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            start = os.fstat(fd).st_size
            view = memoryview(records.tobytes())
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        return [start + i * self._record for i in range(len(vids))]


def _create_empty(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
