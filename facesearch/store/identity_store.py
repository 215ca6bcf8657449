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
"""

from __future__ import annotations

import json
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
class IdentityInfo:
    identity_id: str
    name: str | None
    metadata: dict[str, Any]
    faces: int


@dataclass(frozen=True, slots=True)
class FaceInfo:
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
    """One SQLite file: one connection per thread, or ``open(..., shared=True)`` to read from many."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._deleted = False

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
        return cls(conn, path)

    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = True, shared: bool = False) -> IdentityStore:
        """Open a store; ``shared`` lets several threads use one read-only connection (SQLite
        serialises them), else open one per thread."""
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"identity store {path} does not exist")
        conn = _connect(path, readonly=readonly, shared=shared and readonly)
        store = cls(conn, path)
        version = store.meta("schema_version")
        if version != SCHEMA_VERSION:
            conn.close()
            raise PreconditionError(f"identity store {path} has schema {version}, expected {SCHEMA_VERSION}")
        return store

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> IdentityStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @property
    def contract_id(self) -> str:
        return str(self.meta("contract_id"))

    @property
    def d(self) -> int:
        return int(self.meta("d"))

    def check_contract(self, contract_id: str) -> None:
        if contract_id != self.contract_id:
            raise ContractMismatchError(
                f"identity store {self.path} holds embeddings of model contract {self.contract_id}, "
                f"not {contract_id}; reindexing with a new model is a full rebuild (build --retrain)"
            )

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
        wanted = sorted(set(identity_ids))
        keys: dict[str, int] = {}
        for chunk in _chunks(wanted, 900):
            q = f"SELECT identity_id, key FROM identities WHERE identity_id IN ({_marks(len(chunk))})"
            keys.update(self._conn.execute(q, chunk).fetchall())
        new = [i for i in wanted if i not in keys]
        if new:
            name_of: dict[str, str | None] = {}
            if names is not None:
                name_of = {i: n for i, n in zip(identity_ids, names, strict=True) if n}
            self.upsert_identities((i, name_of.get(i), None) for i in new)
            for chunk in _chunks(new, 900):
                q = f"SELECT identity_id, key FROM identities WHERE identity_id IN ({_marks(len(chunk))})"
                keys.update(self._conn.execute(q, chunk).fetchall())
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
        keys: list[int] = []
        for chunk in _chunks(list(identity_ids), 900):
            q = f"SELECT key FROM identities WHERE identity_id IN ({_marks(len(chunk))})"
            keys.extend(k for (k,) in self._conn.execute(q, chunk))
        removed: list[int] = []
        for chunk in _chunks(keys, 900):
            marks = ",".join("?" * len(chunk))
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

    # -- reads -------------------------------------------------------------------------
    def count_faces(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0])

    def count_identities(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM identities").fetchone()[0])

    def count_chips(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM chips").fetchone()[0])

    def existing_identities(self, identity_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(list(identity_ids), 900):
            q = f"SELECT identity_id FROM identities WHERE identity_id IN ({_marks(len(chunk))})"
            found.update(i for (i,) in self._conn.execute(q, chunk))
        return found

    def iter_embeddings(self, chunk_size: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(vector_ids int64, embeddings float32 (n, d), identity_keys int64)`` in vector id order."""
        d = self.d
        cur = self._conn.execute("SELECT vector_id, identity_key, embedding FROM faces ORDER BY vector_id")
        while True:
            rows = cur.fetchmany(chunk_size)
            if not rows:
                return
            vids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            keys = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
            emb = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), d)
            yield vids, emb.astype(np.float32, copy=False), keys

    def embeddings_by_ids(self, vector_ids: np.ndarray) -> np.ndarray:
        """Embeddings (n, d) float32 of ``vector_ids``, in that order (unknown ids are an error)."""
        d = self.d
        wanted = np.asarray(vector_ids, dtype=np.int64)
        found: dict[int, bytes] = {}
        for chunk in _chunks(np.unique(wanted).tolist(), 900):
            q = f"SELECT vector_id, embedding FROM faces WHERE vector_id IN ({_marks(len(chunk))})"
            found.update(self._conn.execute(q, chunk).fetchall())
        missing = [int(v) for v in wanted if int(v) not in found]
        if missing:
            raise NotFoundError(f"vector ids not in {self.path}: {missing[:5]}")
        blob = b"".join(found[int(v)] for v in wanted)
        return np.frombuffer(blob, dtype="<f4").reshape(len(wanted), d).astype(np.float32)

    def vector_identity_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """All ``(vector_ids, identity_keys)``, sorted by vector id (16 bytes a face)."""
        cur = self._conn.execute("SELECT vector_id, identity_key FROM faces ORDER BY vector_id")
        flat = np.fromiter((x for row in cur for x in row), dtype=np.int64)
        pairs = flat.reshape(-1, 2)
        return pairs[:, 0].copy(), pairs[:, 1].copy()

    def faces(self, vector_ids: Sequence[int]) -> list[FaceInfo | None]:
        """Face rows for vector ids (``None`` where a vector id is unknown), in input order."""
        found: dict[int, FaceInfo] = {}
        for chunk in _chunks([int(v) for v in vector_ids], 900):
            q = (
                "SELECT f.vector_id, i.identity_id, i.name, f.source, f.x1, f.y1, f.x2, f.y2, f.det_score, "
                "f.face_size, f.blur, f.metadata, f.created_at FROM faces f JOIN identities i "
                f"ON i.key = f.identity_key WHERE f.vector_id IN ({_marks(len(chunk))})"
            )
            for r in self._conn.execute(q, chunk):
                box = None if r[4] is None else (r[4], r[5], r[6], r[7])
                found[r[0]] = FaceInfo(
                    r[0], r[1], r[2], r[3], box, r[8], r[9], r[10], json.loads(r[11]) if r[11] else {}, r[12]
                )
        return [found.get(int(v)) for v in vector_ids]

    def identity(self, identity_id: str) -> IdentityInfo:
        row = self._conn.execute(
            "SELECT i.identity_id, i.name, i.metadata, "
            "(SELECT COUNT(*) FROM faces f WHERE f.identity_key = i.key) "
            "FROM identities i WHERE i.identity_id = ?",
            (identity_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"identity {identity_id!r} is not in {self.path}")
        return IdentityInfo(row[0], row[1], json.loads(row[2]) if row[2] else {}, int(row[3]))

    def identity_ids_by_key(self, keys: Sequence[int]) -> list[str]:
        found: dict[int, str] = {}
        for chunk in _chunks([int(k) for k in keys], 900):
            q = f"SELECT key, identity_id FROM identities WHERE key IN ({_marks(len(chunk))})"
            found.update(self._conn.execute(q, chunk).fetchall())
        return [found[int(k)] for k in keys]

    def chip(self, vector_id: int) -> np.ndarray | None:
        row = self._conn.execute("SELECT data FROM chips WHERE vector_id = ?", (vector_id,)).fetchone()
        if row is None:
            return None
        bgr = cv2.imdecode(np.frombuffer(row[0], np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise PreconditionError(f"chip of vector {vector_id} in {self.path} is not a decodable PNG")
        return np.ascontiguousarray(bgr[..., ::-1])


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
