"""A published index version loaded for serving: the FAISS index, its identity store, and the
vector id -> identity map that per-identity scoring needs (16 bytes a face, in memory).

Everything here is read-only once loaded, so any number of requests share one
:class:`BaseIndex`; identity and face rows are read through :attr:`BaseIndex.store`, the version's
identity store opened with a small pool of read-only connections.

Loading checks before anything is served:

* integrity: the sha256 and size of every file against the manifest
  (``facesearch.store.index_artifact.check_files``; a corrupt or incomplete version is refused with
  ``INDEX_INVALID`` and the watcher keeps serving the old one). Every byte is hashed at every load,
  no cache: a cache keyed by (inode, mtime, size) cannot see media corruption, which changes none of
  them, and the check costs about one more load of the version (1.2x the load time from the page
  cache, 200k faces: ``bench/results/load_integrity.md``).
* erasures: identities and faces the root's erasure ledger erased after the version was written
  (a kept version rolled back to) are hidden from every read and every search
  (:meth:`facesearch.store.identity_store.IdentityStore.hide`, :attr:`BaseIndex.hidden_identities`),
  so Identify, Verify, GetIdentity and ListIdentities agree that they do not exist.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facesearch.scoring.gallery_stats import GalleryOpenSet
from facesearch.store.erasure_ledger import ERASURE_SEQ_META, ErasureSet, StoreHits, erased_in_store, read_erasures
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, LoadedIndex, load_index, resolve_version_dir

log = logging.getLogger(f"facesearch.{__name__}")

#: Read-only SQLite connections request threads share.
POOL_SIZE = 4


class BaseIndex:
    def __init__(
        self,
        loaded: LoadedIndex,
        store: IdentityStore,
        *,
        vector_ids: np.ndarray,
        identity_keys: np.ndarray,
        n_identities: int,
        live_seq: int,
        live_journal_id: str | None,
        load_s: float,
        hidden_identities: tuple[str, ...] = (),
    ) -> None:
        self.loaded = loaded
        self.vector_ids = vector_ids  # ascending
        self.identity_keys = identity_keys  # aligned with vector_ids
        self.n_identities = n_identities
        self.live_seq = live_seq
        self.live_journal_id = live_journal_id
        self.load_s = load_s
        self.store = store  # read-only, pooled: identity and face rows of this version
        # Identities with erased rows or faces hidden (the open-set statistics must drop or re-derive them).
        self.hidden_identities = hidden_identities
        hidden = store.hidden[1]
        self._hidden = np.asarray(sorted(hidden), dtype=np.int64) if hidden else None
        # The version's open-set statistics, attached by the loader before the version is installed;
        # the gallery takes them over (and keeps them current) on install.
        self.open_set: GalleryOpenSet | None = None

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, root: Path, *, contract_id: str) -> BaseIndex:
        """Load ``root``'s CURRENT version; refuses another model contract (ContractMismatchError)."""
        t0 = time.perf_counter()
        vdir = resolve_version_dir(root)
        loaded = load_index(vdir, expected_contract_id=contract_id, verify=True)
        store = IdentityStore.open(vdir / STORE_FILE, readonly=True, readers=POOL_SIZE)
        try:
            store.check_contract(contract_id)
            hidden = _hide_erased(store, vdir)
            vids, keys = store.vector_identity_keys()
            n_identities = store.count_identities()
            live_seq = int(store.meta("live_seq") or 0)
            journal_id = store.meta("live_journal_id")
        except BaseException:
            store.close()
            raise
        base = cls(
            loaded,
            store,
            vector_ids=vids,
            identity_keys=keys,
            n_identities=n_identities,
            live_seq=live_seq,
            live_journal_id=journal_id,
            load_s=round(time.perf_counter() - t0, 3),
            hidden_identities=hidden,
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
        self.store.close()

    def hide_erased(self, erased: ErasureSet) -> tuple[str, ...]:
        """G: also hide what ``erased`` names (a shared PostgreSQL store's ledger: replicas do not write
        the root's), before install; returns the identities newly touched (their statistics re-derived)."""
        found = _hide(self.store, erased)
        if found is None:
            return ()
        hits, touched = found
        hidden = self.store.hidden[1]
        self._hidden = np.asarray(sorted(hidden), dtype=np.int64) if hidden else None
        # as a load's: the hidden faces are no longer this version's (contains() is False for them), so a
        # replayed tombstone of one is not subtracted from its identity's count a second time
        self.vector_ids, self.identity_keys = self.store.vector_identity_keys()
        self.hidden_identities = tuple(sorted({*self.hidden_identities, *touched}))
        self.n_identities = self.store.count_identities()
        log.warning(
            "index %s holds %d identities and %d faces the store erased: hidden",
            self.version,
            len(hits.identities),
            len(hits.face_ids),
        )
        return touched

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
    def hidden_faces(self) -> int:
        """Faces of the FAISS index hidden as erased (counted with the deleted ones in statistics)."""
        return 0 if self._hidden is None else len(self._hidden)

    @property
    def factory(self) -> str:
        return self.loaded.manifest.factory

    # -- search ------------------------------------------------------------------------
    def search(self, queries: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``kk`` ``(cosines, vector ids)`` per query (ids -1 past the end)."""
        kk = max(1, min(kk, self.ntotal))
        scores, vids = self.loaded.search(queries, kk)
        if self._hidden is not None:  # erased faces of a version written before the erasure
            scores[np.isin(vids, self._hidden)] = -np.inf
        return scores, vids

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

    def faces_of_keys(self, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(vector ids, identity keys)`` of every face of the given identities (one pass, 1 byte a face)."""
        mask = np.isin(self.identity_keys, np.asarray(list(keys), np.int64))
        return self.vector_ids[mask], self.identity_keys[mask]

    def face_ids_of(self, key: int) -> np.ndarray:
        lo = self.identity_keys == key  # 1 byte a face, fine per call; avoids needing an index
        return self.vector_ids[lo]


def _hide_erased(store: IdentityStore, vdir: Path) -> tuple[str, ...]:
    """Hide what the root's ledger erased after ``vdir`` was written; returns the identities touched."""
    found = _hide(store, read_erasures(vdir.parent).since(int(store.meta(ERASURE_SEQ_META) or 0)))
    if found is None:
        return ()
    hits, touched = found
    log.warning(
        "index %s holds %d erased identities and %d erased faces (written before their erasure): hidden; "
        "`facesearch-index erase-status` lists the files that still hold them",
        vdir.name,
        len(hits.identities),
        len(hits.face_ids),
    )
    return touched


def _hide(store: IdentityStore, erased: ErasureSet) -> tuple[StoreHits, tuple[str, ...]] | None:
    """Add what ``erased`` names in ``store`` to what its reads leave out; ``(hits, identities touched)``,
    or None when the version holds none of it. The one hiding step of a load and of a replica's install."""
    hits = erased_in_store(store, erased)
    if not hits:
        return None
    touched = set(hits.identities) | {f.identity_id for f in store.faces(hits.face_ids.tolist()) if f is not None}
    keys, faces = store.hidden
    store.hide([*keys, *hits.keys], [*faces, *hits.face_ids.tolist()])
    return hits, tuple(sorted(touched))
