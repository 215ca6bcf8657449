"""A published index version loaded for serving: the FAISS index, its identity store, and the
vector id -> identity map that per-identity scoring needs (16 bytes a face, in memory).

Everything here is read-only once loaded, so any number of requests share one
:class:`BaseIndex`; SQLite reads go through a small pool of read-only connections.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.scoring.gallery_stats import GalleryOpenSet
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, LoadedIndex, load_index, resolve_version_dir

log = logging.getLogger(f"facesearch.{__name__}")

POOL_SIZE = 4


@dataclass(frozen=True, slots=True)
class StoredIdentity:
    key: int
    identity_id: str
    name: str | None
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class StoredFace:
    vector_id: int
    identity_id: str
    source: str | None
    box: tuple[float, float, float, float] | None
    det_score: float | None
    face_size: float | None
    blur: float | None
    created_at: float


class _ReadPool:
    """Read-only SQLite connections shared by request threads."""

    def __init__(self, path: Path, size: int) -> None:
        self._free: queue.Queue[sqlite3.Connection] = queue.Queue()
        uri = f"{path.resolve().as_uri()}?mode=ro"
        for _ in range(size):
            self._free.put(sqlite3.connect(uri, uri=True, check_same_thread=False))

    @contextlib.contextmanager
    def conn(self) -> Iterator[sqlite3.Connection]:
        c = self._free.get()
        try:
            yield c
        finally:
            self._free.put(c)

    def close(self) -> None:
        while not self._free.empty():
            self._free.get_nowait().close()


class BaseIndex:
    def __init__(
        self,
        loaded: LoadedIndex,
        *,
        vector_ids: np.ndarray,
        identity_keys: np.ndarray,
        n_identities: int,
        live_seq: int,
        live_journal_id: str | None,
        load_s: float,
    ) -> None:
        self.loaded = loaded
        self.vector_ids = vector_ids  # ascending
        self.identity_keys = identity_keys  # aligned with vector_ids
        self.n_identities = n_identities
        self.live_seq = live_seq
        self.live_journal_id = live_journal_id
        self.load_s = load_s
        self._pool = _ReadPool(loaded.dir / STORE_FILE, POOL_SIZE)
        # The version's open-set statistics, attached by the loader before the version is installed;
        # the gallery takes them over (and keeps them current) on install.
        self.open_set: GalleryOpenSet | None = None

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, root: Path, *, contract_id: str) -> BaseIndex:
        """Load ``root``'s CURRENT version; refuses another model contract (ContractMismatchError)."""
        t0 = time.perf_counter()
        vdir = resolve_version_dir(root)
        loaded = load_index(vdir, expected_contract_id=contract_id)
        with IdentityStore.open(vdir / STORE_FILE, readonly=True) as store:
            store.check_contract(contract_id)
            vids, keys = store.vector_identity_keys()
            n_identities = store.count_identities()
            live_seq = int(store.meta("live_seq") or 0)
            journal_id = store.meta("live_journal_id")
        base = cls(
            loaded,
            vector_ids=vids,
            identity_keys=keys,
            n_identities=n_identities,
            live_seq=live_seq,
            live_journal_id=journal_id,
            load_s=round(time.perf_counter() - t0, 3),
        )
        log.info(
            "loaded index %s: ntotal=%d identities=%d factory=%s live_seq=%d in %.2fs",
            loaded.manifest.version,
            loaded.ntotal,
            n_identities,
            loaded.manifest.factory,
            live_seq,
            base.load_s,
        )
        return base

    def close(self) -> None:
        self._pool.close()

    # -- facts -------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.loaded.dir

    @property
    def version(self) -> str:
        return self.loaded.manifest.version

    @property
    def ntotal(self) -> int:
        return self.loaded.ntotal

    @property
    def factory(self) -> str:
        return self.loaded.manifest.factory

    # -- search ------------------------------------------------------------------------
    def search(self, queries: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``kk`` ``(cosines, vector ids)`` per query (ids -1 past the end)."""
        kk = max(1, min(kk, self.ntotal))
        return self.loaded.search(queries, kk)

    def keys_of(self, vids: np.ndarray) -> np.ndarray:
        """Identity keys of vector ids (-1 where unknown)."""
        flat = vids.ravel()
        pos = np.searchsorted(self.vector_ids, flat)
        pos = np.minimum(pos, max(len(self.vector_ids) - 1, 0))
        if len(self.vector_ids) == 0:
            return np.full(vids.shape, -1, np.int64)
        found = self.vector_ids[pos] == flat
        return np.where(found, self.identity_keys[pos], -1).reshape(vids.shape)

    def contains(self, vids: Sequence[int]) -> np.ndarray:
        return self.keys_of(np.asarray(vids, dtype=np.int64)) >= 0

    # -- store reads -------------------------------------------------------------------
    def identities_by_key(self, keys: Sequence[int]) -> dict[int, StoredIdentity]:
        out: dict[int, StoredIdentity] = {}
        wanted = sorted({int(k) for k in keys if k >= 0})
        with self._pool.conn() as c:
            for chunk in _chunks(wanted, 900):
                q = f"SELECT key, identity_id, name, metadata FROM identities WHERE key IN ({_marks(chunk)})"
                for r in c.execute(q, chunk):
                    out[r[0]] = StoredIdentity(r[0], r[1], r[2], _meta(r[3]))
        return out

    def identity(self, identity_id: str) -> StoredIdentity | None:
        with self._pool.conn() as c:
            r = c.execute(
                "SELECT key, identity_id, name, metadata FROM identities WHERE identity_id = ?", (identity_id,)
            ).fetchone()
        return None if r is None else StoredIdentity(r[0], r[1], r[2], _meta(r[3]))

    def identities_after(self, after: str, limit: int) -> list[StoredIdentity]:
        """Identities with ``identity_id > after``, in identity id order."""
        with self._pool.conn() as c:
            rows = c.execute(
                "SELECT key, identity_id, name, metadata FROM identities WHERE identity_id > ? "
                "ORDER BY identity_id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [StoredIdentity(r[0], r[1], r[2], _meta(r[3])) for r in rows]

    def keys_of_identities(self, identity_ids: Sequence[str]) -> dict[str, int]:
        """Identity id -> key for the ids this version holds."""
        out: dict[str, int] = {}
        with self._pool.conn() as c:
            for chunk in _chunks(sorted(set(identity_ids)), 900):
                q = f"SELECT identity_id, key FROM identities WHERE identity_id IN ({_marks(chunk)})"
                out.update(c.execute(q, chunk).fetchall())
        return out

    def faces_of_keys(self, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(vector ids, identity keys)`` of every face of the given identities (one pass, 1 byte a face)."""
        mask = np.isin(self.identity_keys, np.asarray(list(keys), np.int64))
        return self.vector_ids[mask], self.identity_keys[mask]

    def face_ids_of(self, key: int) -> np.ndarray:
        lo = self.identity_keys == key  # 1 byte a face, fine per call; avoids needing an index
        return self.vector_ids[lo]

    def face_counts(self, keys: Sequence[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        with self._pool.conn() as c:
            for chunk in _chunks(sorted({int(k) for k in keys}), 900):
                q = f"SELECT identity_key, COUNT(*) FROM faces WHERE identity_key IN ({_marks(chunk)}) GROUP BY 1"
                out.update(c.execute(q, chunk).fetchall())
        return out

    def faces(self, vids: Sequence[int]) -> list[StoredFace]:
        """Face rows of vector ids (unknown ids are skipped), in vector id order."""
        out: list[StoredFace] = []
        with self._pool.conn() as c:
            for chunk in _chunks(sorted(int(v) for v in vids), 900):
                q = (
                    "SELECT f.vector_id, i.identity_id, f.source, f.x1, f.y1, f.x2, f.y2, f.det_score, f.face_size, "
                    "f.blur, f.created_at FROM faces f JOIN identities i ON i.key = f.identity_key "
                    f"WHERE f.vector_id IN ({_marks(chunk)}) ORDER BY f.vector_id"
                )
                for r in c.execute(q, chunk):
                    box = None if r[3] is None else (r[3], r[4], r[5], r[6])
                    out.append(StoredFace(r[0], r[1], r[2], box, r[7], r[8], r[9], r[10]))
        return out

    def embeddings(self, vids: Sequence[int]) -> np.ndarray:
        """Embeddings (n, d) of vector ids, in the given order (unknown ids raise KeyError)."""
        d = self.loaded.d
        found: dict[int, bytes] = {}
        with self._pool.conn() as c:
            for chunk in _chunks(sorted({int(v) for v in vids}), 900):
                q = f"SELECT vector_id, embedding FROM faces WHERE vector_id IN ({_marks(chunk)})"
                found.update(c.execute(q, chunk).fetchall())
        if not vids:
            return np.zeros((0, d), np.float32)
        blob = b"".join(found[int(v)] for v in vids)
        return np.frombuffer(blob, dtype="<f4").reshape(len(vids), d).astype(np.float32)


def _marks(chunk: Sequence[Any]) -> str:
    return ",".join("?" * len(chunk))


def _meta(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    data = json.loads(text)
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
