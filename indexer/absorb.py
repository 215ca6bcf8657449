"""What a new version must keep besides its input: the server's acknowledged live changes and the
root's erasures.

Every job that writes a version (``build``, ``add``, ``remove``, ``compact``) ends its store stage
with :func:`settle`:

* live changes: ``compact`` applies the journal's snapshot to a copy of the current version
  (:func:`apply_snapshot`). A fresh ``build`` starts from its input alone, so it first carries over
  the faces the current version got from the live journal (vector ids at and above
  ``LIVE_VECTOR_ID_BASE``, with their identities' names and metadata: :func:`carry_live_faces`) and
  then applies the journal's tail after the current version's position, and records the position it
  reached: enrollments the server acknowledged survive a rebuild, and the server replays exactly the
  changes the new version lacks. ``add`` and ``remove`` copy the current store, position included.
* erasures: every erased identity and face is deleted from the store
  (``facesearch.store.erasure_ledger.purge_store``) and the ledger position is recorded, so no
  version written after an erasure holds its subject (the server also hides erased subjects in
  versions written before it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.store.erasure_ledger import ErasureSet, StoreHits, purge_store
from facesearch.store.identity_store import FaceRows, IdentityStore
from facesearch.store.index_artifact import STORE_FILE, current_version, read_manifest, resolve_version_dir
from facesearch.store.journal_retention import LIVE_DIR, NOTHING, Absorbed
from facesearch.store.live_journal import LIVE_VECTOR_ID_BASE, JournalSnapshot, LiveJournal, journal_place

log = logging.getLogger(f"facesearch.{__name__}")

__all__ = ["LIVE_DIR", "Settled", "apply_snapshot", "settle", "settle_fresh"]


@dataclass(frozen=True, slots=True)
class Settled:
    """What :func:`settle` did to a store: the live position it holds, what it carried, what it purged."""

    absorbed: Absorbed
    carried_faces: int
    tail_faces: int
    purged: StoreHits
    erasure_seq: int

    def facts(self) -> dict[str, object]:
        """The manifest's ``build`` entries."""
        return {
            "live_seq": self.absorbed.seq,
            "live_journal_id": self.absorbed.journal_id,
            "carried_live_faces": self.carried_faces,
            "journal_tail_faces": self.tail_faces,
            "erasure_seq": self.erasure_seq,
            "erased_identities_purged": len(self.purged.identities),
            "erased_faces_purged": len(self.purged.face_ids),
        }


def open_journal(live_dir: Path, contract_id: str) -> LiveJournal | None:
    """The journal of ``contract_id`` under ``live_dir`` for reading, or None when there is none."""
    if not live_dir.is_dir():
        return None
    directory = journal_place(live_dir, contract_id).directory
    if not LiveJournal.exists(directory):
        return None
    journal = LiveJournal.open_reader(directory)
    if journal.contract_id != contract_id:
        journal.close()
        return None
    return journal


def settle_fresh(store: IdentityStore, *, root: Path, live_dir: Path, erased: ErasureSet) -> Settled:
    """A fresh build's store: carry the current version's live faces, apply the journal tail, purge."""
    position, carried = NOTHING, 0
    contract = store.contract_id
    current = resolve_version_dir(root) if current_version(root) else None
    if current is not None and read_manifest(current).contract_id == contract:
        with IdentityStore.open(current / STORE_FILE, readonly=True) as old:
            carried = carry_live_faces(old, store)
            position = Absorbed.of(old)
    tail = 0
    journal = open_journal(live_dir, contract)
    if journal is not None and carried and position.journal_id not in (None, journal.journal_id):
        log.warning(
            "the live journal %s is not the one the current version absorbed (%s): its changes are not "
            "absorbed (the server replays them)",
            journal.dir,
            position.journal_id,
        )
        journal.close()
        journal = None
    if journal is not None:
        try:
            snap = journal.snapshot(after_seq=position.position_in(journal.journal_id))
        finally:
            journal.close()
        if snap.high_water > position.position_in(snap.journal_id):
            apply_snapshot(store, snap)
            tail = len(snap.faces)
            position = Absorbed(snap.journal_id, snap.high_water)
    position.write(store)
    store.commit()
    return Settled(position, carried, tail, purge_store(store, erased), erased.position)


def settle(store: IdentityStore, erased: ErasureSet) -> Settled:
    """A derived version's store (``add``/``remove``/``compact``): purge what is erased, keep its position."""
    hits = purge_store(store, erased)
    return Settled(Absorbed.of(store), 0, 0, hits, erased.position)


def carry_live_faces(source: IdentityStore, target: IdentityStore) -> int:
    """Copy the faces ``source`` got from the live journal (with identity names and metadata) into ``target``."""
    vids, _ = source.vector_identity_keys()
    live = vids[vids >= LIVE_VECTOR_ID_BASE]
    if not len(live):
        return 0
    faces = [f for f in source.faces(live.tolist()) if f is not None]
    identities = {f.identity_id for f in faces}
    infos = {i: source.identity(i) for i in sorted(identities)}
    target.upsert_identities((i, info.name, info.metadata or None) for i, info in infos.items())
    target.add_faces(
        FaceRows(
            vector_ids=np.asarray([f.vector_id for f in faces], dtype=np.int64),
            identity_ids=[f.identity_id for f in faces],
            embeddings=source.embeddings_by_ids([f.vector_id for f in faces]),
            sources=[f.source for f in faces],
            boxes=np.asarray([f.box if f.box is not None else (np.nan,) * 4 for f in faces], dtype=np.float64),
            det_scores=_floats([f.det_score for f in faces]),
            face_sizes=_floats([f.face_size for f in faces]),
            blurs=_floats([f.blur for f in faces]),
            metadata=[f.metadata or None for f in faces],
        )
    )
    target.commit()
    log.info("carried %d live-enrolled faces of %d identities over from %s", len(faces), len(infos), source.path)
    return len(faces)


def _floats(values: list[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def apply_snapshot(store: IdentityStore, snap: JournalSnapshot) -> int:
    """Apply the journal's changes to ``store`` (deletions first) and record its position; returns
    the identities deleted."""
    gone = [i.identity_id for i in snap.identities if i.deleted]
    present = sorted(store.existing_identities(gone))
    if present:
        store.remove_identities(present)
    store.remove_faces([t.vector_id for t in snap.tombstones])
    alive = [i for i in snap.identities if not i.deleted]
    if alive:
        store.upsert_identities((i.identity_id, i.name, i.metadata or None) for i in alive)
    if snap.faces:
        names = {i.identity_id: i.name for i in alive}
        store.add_faces(
            FaceRows(
                vector_ids=np.asarray([f.vector_id for f in snap.faces], dtype=np.int64),
                identity_ids=[f.identity_id for f in snap.faces],
                embeddings=np.ascontiguousarray(snap.embeddings, dtype=np.float32),
                names=[names.get(f.identity_id) for f in snap.faces],
                sources=[f.source for f in snap.faces],
                boxes=np.asarray([f.box if f.box is not None else (np.nan,) * 4 for f in snap.faces], dtype=np.float64),
                det_scores=_floats([f.det_score for f in snap.faces]),
                face_sizes=_floats([f.face_size for f in snap.faces]),
                blurs=_floats([f.blur for f in snap.faces]),
            )
        )
    Absorbed(snap.journal_id, snap.high_water).write(store)
    store.commit()
    return len(present)
