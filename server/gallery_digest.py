"""A digest of what one gallery state serves, for comparing servers (``GetStats`` with
``include_gallery_digest``; issue 14: every replica of a store must serve the same faces with the same
open-set statistics, to 1e-6).

:func:`gallery_digest` walks the identities in id order a page at a time (:meth:`GalleryState.list_page`),
takes each one's current face ids (:meth:`GalleryState.face_vector_ids`), and reads the open-set
statistics of each page's identities under the statistics' lock (:meth:`OpenSetState.lookup`): its
stored cohort mean and its template's projection on a fixed unit vector. Cost: one pass over the
gallery (a read-lane call); it is not a monitoring figure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from server.gallery import GalleryState

PAGE = 1000
PROBE_SEED = 0  # the projection vector: unit, drawn from numpy's default_rng(PROBE_SEED)


@dataclass(frozen=True, slots=True)
class GalleryDigest:
    faces: int
    identities: int
    faces_sha256: str  # of "identity_id\tface id,face id,...\n" per identity, in id order
    open_set_identities: int
    open_set_failure: str
    identity_ids: tuple[str, ...]
    cohort_means: tuple[float, ...]  # NaN: none stored (being refreshed, or no cohort)
    template_projections: tuple[float, ...]  # NaN: no template


def probe_vector(d: int) -> np.ndarray:
    v = np.random.default_rng(PROBE_SEED).standard_normal(d)
    return (v / np.linalg.norm(v)).astype(np.float64)


def gallery_digest(state: GalleryState) -> GalleryDigest:
    """The digest of ``state`` (see the module notes)."""
    sha = hashlib.sha256()
    probe = probe_vector(state.live.d)
    ids: list[str] = []
    means: list[float] = []
    projections: list[float] = []
    faces = 0
    after = ""
    while True:
        page, more = state.list_page(after, PAGE)
        held: list[str] = []
        for view in page:
            base_ids, live_ids = state.face_vector_ids(view.identity_id)
            vids = np.sort(np.concatenate([base_ids, live_ids]))
            if not len(vids):
                continue
            faces += len(vids)
            held.append(view.identity_id)
            sha.update(f"{view.identity_id}\t{','.join(str(int(v)) for v in vids)}\n".encode())
        if held:
            templates, known, cohort = state.open_set.lookup(held)
            proj = np.where(known, np.asarray(templates, np.float64) @ probe, np.nan)
            ids.extend(held)
            means.extend(float(m) for m in np.asarray(cohort, np.float64))
            projections.extend(float(p) for p in proj)
        if not more or not page:
            break
        after = page[-1].identity_id
    return GalleryDigest(
        faces,
        len(ids),
        sha.hexdigest(),
        state.open_set.gallery_size,
        state.open_set.failure or "",
        tuple(ids),
        tuple(means),
        tuple(projections),
    )
