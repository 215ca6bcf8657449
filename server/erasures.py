"""The server's side of the erasure ledger (``facesearch.store.erasure_ledger``).

* ``DeleteIdentity`` and ``DeleteFaces`` record the erasure (the identity's or the faces' vector
  ids, and digests of their sources) durably in ``ROOT/erasures.sqlite`` before the live journal's
  tombstone is written and before the call is acknowledged (:func:`record_identity_erasure`,
  :func:`record_face_erasure`, under the gallery's write lock). The ledger comes first: a crash
  between the two leaves the subject erased (hidden on the next load, refused on enroll) rather
  than deleted in the journal but not erased.
* ``Enroll`` of an erased identity is refused (FAILED_PRECONDITION, ``IDENTITY_ERASED``) until
  ``facesearch-index unerase ROOT ID`` permits it (:func:`refuse_erased`: the service checks before
  the photos are analysed, the gallery again under its write lock, so a deletion that lands
  between the two is not undone).
* A published version that still holds erased subjects (written before the erasure, and rolled
  back to) is served with them hidden: ``server.base_index``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from facesearch.errors import PreconditionError, Reason
from facesearch.store.erasure_ledger import ErasedFace, ErasureKind, ErasureLedger

if TYPE_CHECKING:
    from server.gallery import GalleryState


def record_face_erasure(
    ledger: ErasureLedger | None,
    state: GalleryState,
    vector_ids: Sequence[int],
    owners: Sequence[str],
    *,
    principal: str | None = None,
) -> None:
    """Record the erasure of the faces ``vector_ids`` (of the identities ``owners``, aligned); durable on return."""
    if ledger is None:
        return
    sources = _sources(state, vector_ids)
    by_identity: dict[str, list[ErasedFace]] = {}
    for vid, owner in zip(vector_ids, owners, strict=True):
        by_identity.setdefault(owner, []).append(ErasedFace(int(vid), sources.get(int(vid))))
    for identity_id, faces in by_identity.items():
        ledger.record(ErasureKind.FACES, identity_id, faces, via="DeleteFaces", principal=principal)


def record_identity_erasure(
    ledger: ErasureLedger | None,
    state: GalleryState,
    identity_id: str,
    vector_ids: Sequence[int],
    *,
    principal: str | None = None,
) -> None:
    """Record the erasure of ``identity_id`` and its faces ``vector_ids`` (even none); durable on return."""
    if ledger is None:
        return
    sources = _sources(state, vector_ids)
    faces = [ErasedFace(int(v), sources.get(int(v))) for v in vector_ids]
    ledger.record(ErasureKind.IDENTITY, identity_id, faces, via="DeleteIdentity", principal=principal)


def refuse_erased(ledger: ErasureLedger | None, identity_id: str) -> None:
    """Raise FAILED_PRECONDITION (``IDENTITY_ERASED``) when ``identity_id`` is erased."""
    if ledger is not None and ledger.is_erased(identity_id):
        raise PreconditionError(
            f"identity {identity_id!r} was erased; enrolling it again must be permitted first "
            "(`facesearch-index unerase ROOT ID`, logged)",
            reason=Reason.IDENTITY_ERASED,
        )


def _sources(state: GalleryState, vector_ids: Sequence[int]) -> dict[int, str | None]:
    """The source each face was enrolled from (live faces from the live state, published ones from the store)."""
    out: dict[int, str | None] = {}
    published = []
    for vid in (int(v) for v in vector_ids):
        live = state.live.faces.get(vid)
        if live is not None:
            out[vid] = live.source
        else:
            published.append(vid)
    if published and state.base is not None:
        for face in state.base.store.faces(published):
            if face is not None:
                out[face.vector_id] = face.source
    return out
