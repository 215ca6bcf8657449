"""The identity store of an index version: SQLite, one file, no photo pixels by default.

Tables
    ``meta``        key/value: contract id of the embeddings, embedding dim, next vector id.
    ``identities``  ``key`` (int), ``identity_id`` (the caller's id, unique), display name,
                    JSON metadata, created/updated timestamps (unix seconds).
    ``faces``       ``vector_id`` (the id of the face's vector in the FAISS index), identity
                    key, source reference (path or URI), box ``x1 y1 x2 y2`` in source
                    pixels, detector score, quality (face size, blur), JSON metadata,
                    created timestamp and the embedding itself (float32 little-endian, so a
                    version can be rebuilt or re-measured without the photos).
    ``chips``       optional (``--keep-chips``): the aligned face chip per face, PNG.

Deleting an identity deletes its faces and chips; the indexer writes every published version
into a new file and ``VACUUM``s it, so deleted rows are physically gone from that version.

Hiding (the server's view of a kept version that still holds erased subjects): :meth:`IdentityStore.hide`
makes every read leave out some identities (with all their faces) and some faces, so the version is
served as if it had been purged (``facesearch.store.erasure_ledger``); the file is not changed.

Every SQL statement against these tables is in this module: the indexer writes and reads a store
through :class:`IdentityStore`, and the server reads a published one through the same class opened
with a pool of read-only connections (``IdentityStore.open(path, readers=4)``), so request threads
query it at once. Reads that take many ids run in chunks of 900 (SQLite's bound-parameter limit) and
return typed rows: :class:`StoredIdentity`, :class:`IdentityInfo`, :class:`StoredFace`.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facesearch.errors import ContractMismatchError, InvalidInputError, NotFoundError, PreconditionError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (
    key INTEGER PRIMARY KEY,
    identity_id TEXT NOT NULL UNIQUE,
    name TEXT,
    metadata TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE faces (
    vector_id INTEGER PRIMARY KEY,
    identity_key INTEGER NOT NULL REFERENCES identities(key) ON DELETE CASCADE,
    source TEXT,
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,
    det_score REAL,
    face_size REAL,
    blur REAL,
    metadata TEXT,
    created_at REAL NOT NULL,
    embedding BLOB NOT NULL
);
CREATE TABLE chips (
    vector_id INTEGER PRIMARY KEY REFERENCES faces(vector_id) ON DELETE CASCADE,
    format TEXT NOT NULL,
    data BLOB NOT NULL
);
"""
_FACE_INDEX = "CREATE INDEX IF NOT EXISTS faces_identity ON faces(identity_key)"


@dataclass(frozen=True, slots=True)
class FaceRows:
    """A batch of faces to insert: parallel columns, one row per face.

    ``identity_ids`` are the callers' ids; identities that do not exist yet are created with
    the matching ``names`` entry. Optional columns may be ``None`` for the whole batch.
    """

    vector_ids: np.ndarray  # (n,) int64
    identity_ids: Sequence[str]
    embeddings: np.ndarray  # (n, d) float32
    names: Sequence[str | None] | None = None
    sources: Sequence[str | None] | None = None
    boxes: np.ndarray | None = None  # (n, 4) float
    det_scores: np.ndarray | None = None
    face_sizes: np.ndarray | None = None
    blurs: np.ndarray | None = None
    metadata: Sequence[dict[str, Any] | None] | None = None
    chips: Sequence[np.ndarray | None] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.vector_ids.shape[0])


@dataclass(frozen=True, slots=True)
class StoredIdentity:
    """An identity row as the server joins it to search hits: its key, and metadata as strings."""

    key: int
    identity_id: str
    name: str | None
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class IdentityInfo:
    """One identity described in full: its metadata as stored (any JSON) and its face count."""

    identity_id: str
    name: str | None
    metadata: dict[str, Any]
    faces: int


@dataclass(frozen=True, slots=True)
class StoredFace:
    """A face row of the store, with its identity's id and name."""

    vector_id: int
    identity_id: str
    name: str | None
    source: str | None
    box: tuple[float, float, float, float] | None
    det_score: float | None
    face_size: float | None
    blur: float | None
    metadata: dict[str, Any]
    created_at: float


class IdentityStore:
    """One SQLite file. Opened plainly it is one connection for one thread (the indexer's jobs);
    opened with ``readers=N`` it is ``N`` read-only connections that any number of threads share
    (the server's published version): each read borrows one for the duration of its query."""

    def __init__(self, conns: Sequence[sqlite3.Connection], path: Path) -> None:
        self._conn = conns[0]
        self._pool: queue.Queue[sqlite3.Connection] | None = None
        if len(conns) > 1:
            self._pool = queue.Queue()
            for conn in conns:
                self._pool.put(conn)
        self.path = path
        self._deleted = False
        self._d: int | None = None
        self._hidden_keys: frozenset[int] = frozenset()
        self._hidden_faces: frozenset[int] = frozenset()
        self._hidden_per_key: dict[int, int] = {}  # visible identity key -> its hidden faces

    # -- lifecycle ---------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, contract_id: str, d: int) -> IdentityStore:
        """A new, empty store at ``path`` (which must not exist)."""
        path = Path(path)
        if path.exists():
            raise PreconditionError(f"identity store {path} already exists")
        conn = _connect(path, readonly=False)
        conn.executescript(_SCHEMA)
        meta = {"schema_version": SCHEMA_VERSION, "contract_id": contract_id, "d": d, "next_vector_id": 0}
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        conn.commit()
        return cls([conn], path)

    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = True, readers: int = 1) -> IdentityStore:
        """Open a store; ``readers`` > 1 (read-only only) opens that many connections for threads to share."""
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"identity store {path} does not exist")
        if readers > 1 and not readonly:
            raise PreconditionError("an identity store opened for writing has one connection")
        conns = [_connect(path, readonly=readonly, shared=readers > 1) for _ in range(max(1, readers))]
        store = cls(conns, path)
        version = store.meta("schema_version")
        if version != SCHEMA_VERSION:
            store.close()
            raise PreconditionError(f"identity store {path} has schema {version}, expected {SCHEMA_VERSION}")
        return store

    def close(self) -> None:
        if self._pool is None:
            self._conn.close()
            return
        while not self._pool.empty():
            self._pool.get_nowait().close()

    def __enter__(self) -> IdentityStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection to read with: the store's own, or one borrowed from the pool."""
        if self._pool is None:
            yield self._conn
            return
        conn = self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put(conn)

    def commit(self) -> None:
        self._conn.commit()

    def finalize(self) -> None:
        """Index and commit; after deletions also ``VACUUM`` so no deleted row survives in the file
        (``secure_delete`` already zeroes freed pages; VACUUM drops them)."""
        self._conn.execute(_FACE_INDEX)
        self._conn.commit()
        free_pages = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        if self._deleted or free_pages:
            self._conn.execute("VACUUM")

    # -- meta --------------------------------------------------------------------------
    def meta(self, key: str) -> Any:
        with self._reading() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        if key == "d":
            self._d = None

    @property
    def contract_id(self) -> str:
        return str(self.meta("contract_id"))

    @property
    def d(self) -> int:
        """The embedding dimension (read once: a store's ``d`` never changes)."""
        if self._d is None:
            self._d = int(self.meta("d"))
        return self._d

    def check_contract(self, contract_id: str) -> None:
        if contract_id != self.contract_id:
            raise ContractMismatchError(
                f"identity store {self.path} holds embeddings of model contract {self.contract_id}, "
                f"not {contract_id}; reindexing with a new model is a full rebuild (build --retrain)"
            )

    def hide(self, identity_keys: Iterable[int], vector_ids: Iterable[int]) -> None:
        """Leave these identities (and all their faces) and these faces out of every read from now on."""
        keys = frozenset(int(k) for k in identity_keys)
        faces = {int(v) for v in vector_ids}
        if keys:
            vids, _ = self.faces_of_identity_keys(sorted(keys))
            faces.update(vids.tolist())
        per_key: dict[int, int] = {}
        if faces:
            _, owners = self._face_owners(sorted(faces))
            for owner in owners.tolist():
                if owner not in keys:
                    per_key[owner] = per_key.get(owner, 0) + 1
        self._hidden_keys, self._hidden_faces, self._hidden_per_key = keys, frozenset(faces), per_key

    @property
    def hidden(self) -> tuple[frozenset[int], frozenset[int]]:
        """``(identity keys, vector ids)`` that reads leave out (see :meth:`hide`)."""
        return self._hidden_keys, self._hidden_faces

    def allocate_vector_ids(self, n: int) -> np.ndarray:
        """``n`` fresh vector ids (never reused within a lineage of versions)."""
        start = int(self.meta("next_vector_id"))
        self.set_meta("next_vector_id", start + n)
        return np.arange(start, start + n, dtype=np.int64)

    # -- writes ------------------------------------------------------------------------
    def upsert_identities(self, rows: Iterable[tuple[str, str | None, dict[str, Any] | None]]) -> None:
        """Create identities (or update the name/metadata of existing ones)."""
        now = time.time()
        self._conn.executemany(
            "INSERT INTO identities (identity_id, name, metadata, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(identity_id) DO UPDATE SET "
            "name = COALESCE(excluded.name, name), "
            "metadata = COALESCE(excluded.metadata, metadata), updated_at = excluded.updated_at",
            [(i, n, json.dumps(m) if m else None, now, now) for i, n, m in rows],
        )

    def _identity_keys(self, identity_ids: Sequence[str], names: Sequence[str | None] | None) -> list[int]:
        """Keys of ``identity_ids``, creating missing identities (memory bounded by the batch)."""
        keys = self.identity_keys(identity_ids)
        new = [i for i in sorted(set(identity_ids)) if i not in keys]
        if new:
            name_of: dict[str, str | None] = {}
            if names is not None:
                name_of = {i: n for i, n in zip(identity_ids, names, strict=True) if n}
            self.upsert_identities((i, name_of.get(i), None) for i in new)
            keys.update(self.identity_keys(new))
        return [keys[i] for i in identity_ids]

    def add_faces(self, rows: FaceRows) -> np.ndarray:
        """Insert faces (creating their identities); returns their identity keys (int64)."""
        n = len(rows)
        if rows.embeddings.shape != (n, self.d) or rows.embeddings.dtype != np.float32:
            raise InvalidInputError(
                f"embeddings must be float32 of shape ({n}, {self.d}), got {rows.embeddings.dtype} "
                f"{rows.embeddings.shape}"
            )
        if len(rows.identity_ids) != n:
            raise InvalidInputError(f"{len(rows.identity_ids)} identity ids for {n} faces")
        keys = self._identity_keys(rows.identity_ids, rows.names)
        now = time.time()
        emb = np.ascontiguousarray(rows.embeddings, dtype="<f4")
        none: list[None] = [None] * n
        boxes = rows.boxes.tolist() if rows.boxes is not None else [(None,) * 4] * n
        det = rows.det_scores.tolist() if rows.det_scores is not None else none
        size = rows.face_sizes.tolist() if rows.face_sizes is not None else none
        blur = rows.blurs.tolist() if rows.blurs is not None else none
        src = rows.sources if rows.sources is not None else none
        meta = [json.dumps(m) if m else None for m in rows.metadata] if rows.metadata is not None else none
        self._conn.executemany(
            "INSERT INTO faces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (int(v), k, s, *b, ds, fs, bl, md, now, e.tobytes())
                for v, k, s, b, ds, fs, bl, md, e in zip(
                    rows.vector_ids.tolist(), keys, src, boxes, det, size, blur, meta, emb, strict=True
                )
            ),
        )
        if rows.chips is not None:
            self.add_chips(rows.vector_ids, rows.chips)
        return np.asarray(keys, dtype=np.int64)

    def add_chips(self, vector_ids: np.ndarray, chips: Sequence[np.ndarray | None]) -> None:
        out = []
        for v, chip in zip(vector_ids.tolist(), chips, strict=True):
            if chip is None:
                continue
            ok, png = cv2.imencode(".png", np.ascontiguousarray(chip[..., ::-1]))
            if not ok:
                raise InvalidInputError(f"cannot encode chip of vector {v}")
            out.append((int(v), "png", png.tobytes()))
        self._conn.executemany("INSERT INTO chips VALUES (?, ?, ?)", out)

    def remove_identities(self, identity_ids: Sequence[str]) -> np.ndarray:
        """Delete identities with their faces and chips; returns the removed vector ids."""
        self._deleted = True
        keys = list(self.identity_keys(identity_ids).values())
        removed: list[int] = []
        for chunk in _chunks(keys, 900):
            marks = _marks(len(chunk))
            removed.extend(
                v for (v,) in self._conn.execute(f"SELECT vector_id FROM faces WHERE identity_key IN ({marks})", chunk)
            )
            self._conn.execute(
                f"DELETE FROM chips WHERE vector_id IN (SELECT vector_id FROM faces WHERE identity_key IN ({marks}))",
                chunk,
            )
            self._conn.execute(f"DELETE FROM faces WHERE identity_key IN ({marks})", chunk)
            self._conn.execute(f"DELETE FROM identities WHERE key IN ({marks})", chunk)
        return np.asarray(sorted(removed), dtype=np.int64)

    def remove_faces(self, vector_ids: Sequence[int]) -> int:
        """Delete single faces (and their chips) by vector id; returns how many existed."""
        self._deleted = True
        removed = 0
        for chunk in _chunks([int(v) for v in vector_ids], 900):
            marks = _marks(len(chunk))
            self._conn.execute(f"DELETE FROM chips WHERE vector_id IN ({marks})", chunk)
            removed += self._conn.execute(f"DELETE FROM faces WHERE vector_id IN ({marks})", chunk).rowcount
        return removed

    # -- reads: counts ------------------------------------------------------------------
    def _count(self, table: str) -> int:
        with self._reading() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def count_faces(self) -> int:
        return self._count("faces") - len(self._hidden_faces)

    def count_identities(self) -> int:
        return self._count("identities") - len(self._hidden_keys)

    def count_chips(self) -> int:
        return self._count("chips")

    def face_counts(self, keys: Sequence[int]) -> dict[int, int]:
        """Identity key -> number of faces, for the keys that have faces."""
        out: dict[int, int] = {}
        with self._reading() as conn:
            for chunk in _chunks(sorted({int(k) for k in keys}), 900):
                q = f"SELECT identity_key, COUNT(*) FROM faces WHERE identity_key IN ({_marks(len(chunk))}) GROUP BY 1"
                out.update(conn.execute(q, chunk).fetchall())
        if self._hidden_faces:
            out = {k: n - self._hidden_per_key.get(k, 0) for k, n in out.items() if k not in self._hidden_keys}
            out = {k: n for k, n in out.items() if n > 0}
        return out

    # -- reads: identities ---------------------------------------------------------------
    def identity_keys(self, identity_ids: Iterable[str]) -> dict[str, int]:
        """Identity id -> key, for the ids the store holds (and does not hide)."""
        out = self._keys_of(identity_ids)
        if self._hidden_keys:
            out = {i: k for i, k in out.items() if k not in self._hidden_keys}
        return out

    def _keys_of(self, identity_ids: Iterable[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._reading() as conn:
            for chunk in _chunks(sorted(set(identity_ids)), 900):
                q = f"SELECT identity_id, key FROM identities WHERE identity_id IN ({_marks(len(chunk))})"
                out.update(conn.execute(q, chunk).fetchall())
        return out

    def existing_identities(self, identity_ids: Sequence[str]) -> set[str]:
        return set(self.identity_keys(identity_ids))

    def identity(self, identity_id: str) -> IdentityInfo:
        """One identity with its face count; NotFoundError if the store does not hold it (or hides it)."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT i.identity_id, i.name, i.metadata, "
                "(SELECT COUNT(*) FROM faces f WHERE f.identity_key = i.key), i.key "
                "FROM identities i WHERE i.identity_id = ?",
                (identity_id,),
            ).fetchone()
        if row is None or row[4] in self._hidden_keys:
            raise NotFoundError(f"identity {identity_id!r} is not in {self.path}")
        faces = int(row[3]) - self._hidden_per_key.get(row[4], 0)
        return IdentityInfo(row[0], row[1], json.loads(row[2]) if row[2] else {}, faces)

    def find_identity(self, identity_id: str) -> StoredIdentity | None:
        """The identity row of ``identity_id``, or None (one indexed lookup, no face count)."""
        with self._reading() as conn:
            row = conn.execute(_IDENTITY_BY_ID, (identity_id,)).fetchone()
        if row is None or row[0] in self._hidden_keys:
            return None
        return StoredIdentity(row[0], row[1], row[2], _string_metadata(row[3]))

    def identities_by_key(self, keys: Sequence[int]) -> dict[int, StoredIdentity]:
        """Key -> identity row for the keys the store holds (negative keys are skipped)."""
        out: dict[int, StoredIdentity] = {}
        with self._reading() as conn:
            for chunk in _chunks(sorted({int(k) for k in keys if k >= 0 and k not in self._hidden_keys}), 900):
                for r in conn.execute(f"{_IDENTITY_ROW} WHERE key IN ({_marks(len(chunk))})", chunk):
                    out[r[0]] = StoredIdentity(r[0], r[1], r[2], _string_metadata(r[3]))
        return out

    def identities_after(self, after: str, limit: int) -> list[StoredIdentity]:
        """Up to ``limit`` identities with ``identity_id > after``, in identity id order (a page)."""
        out: list[StoredIdentity] = []
        with self._reading() as conn:
            while len(out) < limit:
                want = limit - len(out)
                rows = conn.execute(_IDENTITIES_AFTER, (after, want)).fetchall()
                out.extend(StoredIdentity(r[0], r[1], r[2], _string_metadata(r[3])) for r in rows)
                if self._hidden_keys:
                    out = [s for s in out if s.key not in self._hidden_keys]
                if len(rows) < want:
                    break
                after = rows[-1][1]
        return out

    def iter_identity_keys(self, chunk_size: int = 65_536) -> Iterator[tuple[int, str]]:
        """Every ``(key, identity_id)`` of the file (hidden ones too), in key order."""
        last = -1
        while True:
            with self._reading() as conn:
                rows = conn.execute(
                    "SELECT key, identity_id FROM identities WHERE key > ? ORDER BY key LIMIT ?", (last, chunk_size)
                ).fetchall()
            yield from rows
            if len(rows) < chunk_size:
                return
            last = rows[-1][0]

    def identity_ids_by_key(self, keys: Sequence[int]) -> list[str]:
        """The identity id of each key, in order (every key must exist)."""
        found: dict[int, str] = {}
        with self._reading() as conn:
            for chunk in _chunks([int(k) for k in keys], 900):
                q = f"SELECT key, identity_id FROM identities WHERE key IN ({_marks(len(chunk))})"
                found.update(conn.execute(q, chunk).fetchall())
        return [found[int(k)] for k in keys]

    # -- reads: faces and embeddings -----------------------------------------------------
    def iter_embeddings(self, chunk_size: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(vector_ids int64, embeddings float32 (n, d), identity_keys int64)`` in vector id order."""
        d = self.d
        with self._reading() as conn:
            cur = conn.execute("SELECT vector_id, identity_key, embedding FROM faces ORDER BY vector_id")
            while True:
                rows = cur.fetchmany(chunk_size)
                if not rows:
                    return
                vids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                keys = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
                emb = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), d)
                yield vids, emb.astype(np.float32, copy=False), keys

    def embeddings_by_ids(self, vector_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Embeddings (n, d) float32 of ``vector_ids``, in that order (unknown ids: NotFoundError)."""
        d = self.d
        wanted = np.asarray(vector_ids, dtype=np.int64).tolist()
        found: dict[int, bytes] = {}
        with self._reading() as conn:
            for chunk in _chunks(sorted(set(wanted)), 900):
                q = f"SELECT vector_id, embedding FROM faces WHERE vector_id IN ({_marks(len(chunk))})"
                found.update(conn.execute(q, chunk).fetchall())
        missing = [v for v in wanted if v not in found]
        if missing:
            raise NotFoundError(f"vector ids not in {self.path}: {missing[:5]}")
        blob = b"".join(found[v] for v in wanted)
        return np.frombuffer(blob, dtype="<f4").reshape(len(wanted), d).astype(np.float32)

    def vector_identity_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """All visible ``(vector_ids, identity_keys)``, sorted by vector id (16 bytes a face)."""
        with self._reading() as conn:
            cur = conn.execute("SELECT vector_id, identity_key FROM faces ORDER BY vector_id")
            flat = np.fromiter((x for row in cur for x in row), dtype=np.int64)
        pairs = flat.reshape(-1, 2)
        vids, keys = pairs[:, 0].copy(), pairs[:, 1].copy()
        if self._hidden_faces:
            keep = ~np.isin(vids, np.fromiter(self._hidden_faces, np.int64, len(self._hidden_faces)))
            vids, keys = vids[keep], keys[keep]
        return vids, keys

    def faces_of_identity_keys(self, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(vector ids, identity keys)`` of every face of these identities (hidden ones too), by vector id."""
        return self._select_pairs("SELECT vector_id, identity_key FROM faces WHERE identity_key IN", keys)

    def _face_owners(self, vector_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        return self._select_pairs("SELECT vector_id, identity_key FROM faces WHERE vector_id IN", vector_ids)

    def _select_pairs(self, query: str, values: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows: list[tuple[int, int]] = []
        with self._reading() as conn:
            for chunk in _chunks([int(v) for v in values], 900):
                rows.extend(conn.execute(f"{query} ({_marks(len(chunk))})", chunk).fetchall())
        rows.sort()
        return np.asarray([r[0] for r in rows], np.int64), np.asarray([r[1] for r in rows], np.int64)

    def faces_of_identities(self, identity_ids: Sequence[str]) -> list[StoredFace]:
        """Every face row of these identities (hidden ones too), by vector id."""
        vids, _ = self.faces_of_identity_keys(list(self._keys_of(identity_ids).values()))
        return [f for f in self._face_rows(vids.tolist()) if f is not None]

    def faces(self, vector_ids: Sequence[int]) -> list[StoredFace | None]:
        """Face rows for vector ids (``None`` where a vector id is unknown or hidden), in input order."""
        rows = self._face_rows(vector_ids)
        if self._hidden_faces:
            return [None if f is None or f.vector_id in self._hidden_faces else f for f in rows]
        return rows

    def _face_rows(self, vector_ids: Sequence[int]) -> list[StoredFace | None]:
        found: dict[int, StoredFace] = {}
        with self._reading() as conn:
            for chunk in _chunks([int(v) for v in vector_ids], 900):
                q = (
                    "SELECT f.vector_id, i.identity_id, i.name, f.source, f.x1, f.y1, f.x2, f.y2, f.det_score, "
                    "f.face_size, f.blur, f.metadata, f.created_at FROM faces f JOIN identities i "
                    f"ON i.key = f.identity_key WHERE f.vector_id IN ({_marks(len(chunk))})"
                )
                for r in conn.execute(q, chunk):
                    box = None if r[4] is None else (r[4], r[5], r[6], r[7])
                    found[r[0]] = StoredFace(
                        r[0], r[1], r[2], r[3], box, r[8], r[9], r[10], json.loads(r[11]) if r[11] else {}, r[12]
                    )
        return [found.get(int(v)) for v in vector_ids]

    def chip(self, vector_id: int) -> np.ndarray | None:
        with self._reading() as conn:
            row = conn.execute("SELECT data FROM chips WHERE vector_id = ?", (vector_id,)).fetchone()
        if row is None:
            return None
        bgr = cv2.imdecode(np.frombuffer(row[0], np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise PreconditionError(f"chip of vector {vector_id} in {self.path} is not a decodable PNG")
        return np.ascontiguousarray(bgr[..., ::-1])


_IDENTITY_ROW = "SELECT key, identity_id, name, metadata FROM identities"
_IDENTITY_BY_ID = f"{_IDENTITY_ROW} WHERE identity_id = ?"
_IDENTITIES_AFTER = f"{_IDENTITY_ROW} WHERE identity_id > ? ORDER BY identity_id LIMIT ?"


def _string_metadata(text: str | None) -> dict[str, str]:
    """Identity metadata as the API carries it: a JSON object's items as strings (else empty)."""
    if not text:
        return {}
    data = json.loads(text)
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _connect(path: Path, *, readonly: bool, shared: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=not shared)
    else:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode = OFF")  # versions are written once, then published
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
