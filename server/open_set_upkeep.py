"""Keeping the open-set statistics exact through enroll and delete (the gallery writer's side).

When an identity's faces change (enrolled, deleted, some faces deleted) it leaves the cohort
and, if it still has faces, re-enters it with a fresh template and its scores against the
rest of the gallery (:meth:`OpenSetUpkeep.changed`); identities left with a thin buffer are
refreshed by a fresh search. :class:`~facesearch.scoring.cohort.GalleryCohort` needs, for the
identity X entering it, its scores against (a) its ``depth`` best identities and (b) every
identity whose buffer X enters. :meth:`OpenSetUpkeep.neighbours` finds both without scanning
every face:

1. the template cosine of X with *every* identity, exactly (one matrix-vector product over
   the template table: O(L d), ~5 ms at 100k identities);
2. the best-face shortlist A: X's faces searched in the gallery index for their ``M + 1``
   best identities (M = 2 x depth to start). An identity outside A has a best-face score of at
   most ``b``, the worst score of a full list, so its rule score is at most
   ``ub = combine(b, template cosine)``;
3. exact rule scores for A (from the faces' embeddings), and exact scores for every identity
   outside A whose upper bound could still matter: ``ub`` at least X's depth-th best score in
   A, or ``ub`` above the identity's own buffer floor (:meth:`GalleryCohort.floors`). If that
   set is large the shortlist is too short: M grows fourfold and it starts again.

So updates are exact whenever the index's scores are (flat indices, the live delta); with an
approximate published index they are as good as its recall. Cost per changed identity: one
template scan, one index search of its faces, and the embeddings of a few dozen identities
read from the stores; plus, now and then, a refresh search for an identity whose buffer a
deletion emptied below k.

Published versions: :func:`load_base_open_set` reads the version's ``open_set.npz`` (written
by the indexer, ``facesearch-index build|add|remove|compact``) when its ``k``, template rule and
identity store (sha256 recorded inside, checked against the manifest's) are this server's and
the version's; else a copy this server computed before (``LIVE_DIR/open_set/``); else it builds
it from the version's identity store (:func:`facesearch.scoring.gallery_stats.build_open_set_for_store`:
seconds for 10k faces; about a minute per 100k identities; versions published before the
indexer wrote the file) and saves that copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from facesearch.errors import FaceSearchError
from facesearch.scoring.gallery_stats import (
    OPEN_SET_FILE,
    GalleryOpenSet,
    combine,
    file_fingerprint,
    unit,
)
from facesearch.scoring.normalise import DEFAULT_K
from facesearch.scoring.templates import DEFAULT_TEMPLATE
from facesearch.store.index_artifact import MANIFEST, STORE_FILE, read_manifest
from facesearch.store.open_set_build import build_open_set_for_store
from server.open_set_state import OpenSetState
from server.search import Candidate

log = logging.getLogger(f"facesearch.{__name__}")

MAX_EXACT = 512  # identities outside the shortlist scored exactly before the shortlist is lengthened


@dataclass(frozen=True, slots=True)
class OpenSetParams:
    """How the gallery's statistics are made: cohort size, template rule, buffer depth (None: k + slack)."""

    k: int = DEFAULT_K
    rule: str = DEFAULT_TEMPLATE
    depth: int | None = None
    cache_dir: Path | None = None  # where computed statistics of published versions are kept

    def empty(self, d: int) -> GalleryOpenSet:
        return GalleryOpenSet.empty(d, self.k, self.rule, self.depth)

    def fits(self, data: GalleryOpenSet) -> bool:
        return data.k == self.k and data.rule == self.rule and (self.depth is None or data.depth == self.depth)


class GalleryReader(Protocol):
    """What the upkeep needs from a gallery state."""

    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]: ...

    def embeddings_of_many(self, identity_ids: Sequence[str]) -> dict[str, np.ndarray]: ...


class OpenSetUpkeep:
    """The writer's side of one :class:`OpenSetState`; call only under the gallery's write lock."""

    def __init__(self, gallery: GalleryReader, state: OpenSetState) -> None:
        self.gallery = gallery
        self.state = state

    @property
    def data(self) -> GalleryOpenSet:
        return self.state.data

    def changed(self, identity_ids: Iterable[str]) -> None:
        """Re-derive the statistics of identities whose faces changed; never raises (a failure disables them)."""
        if not self.state.ready:
            return
        try:
            self._changed(sorted(set(identity_ids)))
        except Exception as err:  # the change itself is durable; only the statistics are lost
            log.exception("open-set statistics update failed")
            self.state.fail(f"update failed: {err!r}")

    def _changed(self, ids: list[str]) -> None:
        data = self.data
        with self.state.lock:
            for identity in ids:
                data.remove(identity)
        faces = self.gallery.embeddings_of_many(ids)
        for identity in ids:
            own = faces.get(identity)
            if own is None or len(own) == 0:
                continue
            template = unit(own.astype(np.float64).sum(axis=0))
            nb_ids, nb_scores = self.neighbours(identity, own, template, reverse=True)
            with self.state.lock:
                data.add(identity, template, nb_ids, nb_scores)
        self._refresh_stale()

    def _refresh_stale(self) -> None:
        data = self.data
        stale = [str(i) for i in data.cohort.stale()]
        if not stale:
            return
        faces = self.gallery.embeddings_of_many(stale)
        for identity in stale:
            template, _ = data.templates.get([identity])
            own = faces.get(identity)
            if own is None or len(own) == 0:  # cannot happen: members have faces; leave it stale
                continue
            nb_ids, nb_scores = self.neighbours(identity, own, template[0], reverse=False)
            with self.state.lock:
                data.refresh(identity, nb_ids, nb_scores)

    # -- neighbours of one identity --------------------------------------------------------
    def neighbours(
        self, identity: str, faces: np.ndarray, template: np.ndarray, *, reverse: bool
    ) -> tuple[list[str], np.ndarray]:
        """Rule scores of ``identity`` against every cohort member it may matter to (module notes)."""
        data, cohort = self.data, self.data.cohort
        rows, tt32 = data.templates.scan(template, exclude=identity)
        tt = tt32.astype(np.float64)
        if len(rows) == 0:
            return [], np.zeros(0)
        depth = cohort.depth
        if data.rule == "mean":  # the template cosine is the score: exact for everyone, no search
            wanted = _top_mask(tt, depth) | (self._takers(rows, tt) if reverse else False)
            return data.templates.ids_at(rows[wanted]), tt[wanted]
        m = max(2 * depth, 16)
        while True:
            lists = self.gallery.search(faces[None, :] if faces.ndim == 1 else faces, m + 1)
            full = [lst for lst in lists if len(lst) >= m + 1]
            bound = max((lst[-1].similarity for lst in full), default=-np.inf)
            in_a = np.isin(rows, data.templates.rows_of({c.identity_id for lst in lists for c in lst}))
            a_ids = data.templates.ids_at(rows[in_a])
            a_scores = combine(self._best(faces, a_ids), tt[in_a], data.rule)
            tau = np.sort(a_scores)[-depth] if len(a_scores) >= depth else -np.inf
            ub = combine(np.full(len(rows), bound), tt, data.rule)
            need = ~in_a & (ub >= tau)
            if reverse:
                need |= ~in_a & self._takers(rows, ub)
            if int(need.sum()) <= MAX_EXACT or not full or m >= len(rows):
                break
            m *= 4
        e_ids = data.templates.ids_at(rows[need])
        e_scores = combine(self._best(faces, e_ids), tt[need], data.rule) if e_ids else np.zeros(0)
        return a_ids + e_ids, np.concatenate([np.asarray(a_scores, np.float64), np.asarray(e_scores, np.float64)])

    def _takers(self, rows: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Which identities (template rows) could take a newcomer scoring up to ``upper`` into their buffer."""
        takes, floor = self.data.floors_at(rows)
        return takes & (upper > floor)

    def _best(self, faces: np.ndarray, identity_ids: list[str]) -> np.ndarray:
        """Exact best-face cosine of ``faces`` against each identity's current faces."""
        if not identity_ids:
            return np.zeros(0)
        theirs = self.gallery.embeddings_of_many(identity_ids)
        own = np.atleast_2d(faces)
        return np.array([float((own @ theirs[i].T).max()) if len(theirs.get(i, ())) else -np.inf for i in identity_ids])


def _top_mask(scores: np.ndarray, count: int) -> np.ndarray:
    out = np.zeros(len(scores), bool)
    if count >= len(scores):
        out[:] = True
    else:
        out[np.argpartition(-scores, count - 1)[:count]] = True
    return out


# -- published versions ------------------------------------------------------------------
def load_base_open_set(version_dir: Path, params: OpenSetParams) -> GalleryOpenSet:
    """The open-set statistics of a published version: its own file, our cached copy, or built now.

    The version's own file (written by the indexer) is used when it was made with this
    server's ``k`` and template rule and from the version's identity store (the store sha256
    it records equals the manifest's); otherwise it is recomputed, with a warning saying why.
    """
    own = version_dir / OPEN_SET_FILE
    if own.is_file():
        try:
            data = GalleryOpenSet.load(own)
            why = _mismatch(data, params, _store_sha256(version_dir))
            if why is None:
                log.info(
                    "open-set statistics of %s loaded from the version's %s (%d identities, k=%d, rule %s): "
                    "not recomputed",
                    version_dir.name,
                    own.name,
                    len(data),
                    data.k,
                    data.rule,
                )
                return data
            log.warning("%s: %s: recomputing", own, why)
        except FaceSearchError as err:
            log.warning("%s: %s; recomputing", own, err)
    cached = _cache_path(version_dir, params)
    if cached is not None and cached.is_file():
        try:
            data = GalleryOpenSet.load(cached)
            if params.fits(data):
                log.info("open-set statistics of %s from %s (%d identities)", version_dir.name, cached, len(data))
                return data
        except FaceSearchError as err:
            log.warning("%s: %s; recomputing", cached, err)
    t0 = time.perf_counter()
    data = build_open_set_for_store(version_dir / STORE_FILE, k=params.k, rule=params.rule, depth=params.depth)
    log.info(
        "computed the open-set statistics of %s: %d identities in %.1fs",
        version_dir.name,
        len(data),
        time.perf_counter() - t0,
    )
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            for old in cached.parent.glob("*.npz"):
                old.unlink(missing_ok=True)  # one version is served at a time
            data.save(cached)
        except OSError as err:
            log.warning("cannot keep the open-set statistics in %s: %s", cached.parent, err)
    return data


def _store_sha256(version_dir: Path) -> str | None:
    """The identity store's sha256 as the version's manifest lists it (None: not listed)."""
    try:
        entry = read_manifest(version_dir).files.get(STORE_FILE)
    except FaceSearchError:
        return None
    return entry.sha256 if entry is not None else None


def _mismatch(data: GalleryOpenSet, params: OpenSetParams, store_sha256: str | None) -> str | None:
    """Why a version's saved statistics cannot be used by this server (None: they can)."""
    if not params.fits(data):
        return (
            f"made with k={data.k} rule={data.rule} depth={data.depth}, the server uses k={params.k} "
            f"rule={params.rule}" + (f" depth={params.depth}" if params.depth is not None else "")
        )
    if store_sha256 is None or data.store_sha256 is None:
        return "cannot tell which identity store it was computed from"
    if data.store_sha256 != store_sha256:
        return "computed from another identity store than the version's"
    return None


def _cache_path(version_dir: Path, params: OpenSetParams) -> Path | None:
    if params.cache_dir is None or not (version_dir / MANIFEST).is_file():
        return None
    fingerprint = file_fingerprint(version_dir / MANIFEST)
    return params.cache_dir / f"{version_dir.name}-{fingerprint}-k{params.k}-{params.rule}.npz"
