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

Identities change in bulk (:meth:`OpenSetUpkeep.changed`: one at a time for a write, thousands
when a journal is replayed): they all leave the cohort, then re-enter it together, each scored
against the gallery as it is afterwards (:meth:`GalleryOpenSet.add_many`), in blocks sharing one
template product, one batched gallery search and one read of the candidates' embeddings; the result
equals one-at-a-time updates and a recomputation.

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
    build_open_set,
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
#: A change touching at least this many identities, and at least as many as it leaves untouched, is
#: recomputed in bulk (:meth:`OpenSetUpkeep._bulk`) instead of replayed identity by identity.
BULK_MIN = 2_000


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

    def __init__(self, gallery: GalleryReader, state: OpenSetState, *, bulk_min: int = BULK_MIN) -> None:
        self.gallery = gallery
        self.state = state
        self.bulk_min = bulk_min

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
        """All of ``ids`` leave the cohort, then those with faces re-enter it together, each scored
        against the gallery as it is afterwards (:meth:`GalleryOpenSet.add_many`)."""
        if self._bulk(ids):
            return
        data = self.data
        with self.state.lock:
            data.remove_many(ids)
        faces = self.gallery.embeddings_of_many(ids)
        entering = [i for i in ids if len(faces.get(i, ()))]
        if entering:
            templates = unit(np.stack([faces[i].astype(np.float64).sum(axis=0) for i in entering]))
            found = self._find(entering, faces, templates, entering=True)
            with self.state.lock:
                data.add_many([(i, t, n, sc) for i, t, (n, sc) in zip(entering, templates, found, strict=True)])
        self._refresh_stale()

    def _bulk(self, ids: list[str]) -> bool:
        """Recompute the whole statistics from the gallery's faces (:func:`build_open_set`, the indexer's
        bulk build) when ``ids`` are most of the gallery: a replica's or a restart's replay of a long log
        tail (issue 14: 100k faces). Replayed one identity at a time, each entering identity is searched
        against the gallery as it grows (O(touched x gallery faces): minutes at 100k faces); the bulk
        build is O(identities^2 d) with a template shortlist. It is exact up to
        :data:`~facesearch.scoring.gallery_stats.EXACT_FACES` faces and as close as the shortlist beyond
        (measured: 99.9% of cohort means identical, the largest difference 5e-4). False: not taken."""
        if len(ids) < self.bulk_min:
            return False
        touched = set(ids)
        others = [i for i in self.data.templates.identity_ids if i not in touched]
        if len(ids) < len(others):
            return False
        t0 = time.perf_counter()
        everyone = sorted(touched.union(others))
        faces = self.gallery.embeddings_of_many(everyone)
        held = [i for i in everyone if len(faces.get(i, ()))]
        data = self.data
        if held:
            rows = np.repeat(np.arange(len(held)), [len(faces[i]) for i in held])
            embeddings = np.concatenate([np.asarray(faces[i], np.float32) for i in held])
            built = build_open_set(held, rows, embeddings, k=data.k, rule=data.rule, depth=data.depth)
        else:
            built = GalleryOpenSet.empty(data.templates.d, data.k, data.rule, data.depth)
        with self.state.lock:
            self.state.data = built
        log.info(
            "open-set statistics recomputed in bulk: %d identities changed of %d (%d faces) in %.2fs",
            len(ids),
            len(held),
            sum(len(faces[i]) for i in held),
            time.perf_counter() - t0,
        )
        return True

    def _refresh_stale(self) -> None:
        data = self.data
        stale = [str(i) for i in data.cohort.stale()]
        if not stale:
            return
        faces = self.gallery.embeddings_of_many(stale)
        stale = [i for i in stale if len(faces.get(i, ()))]  # members have faces; else leave it stale
        templates, _ = data.templates.get(stale)
        found = self._find(stale, faces, templates, entering=False)
        with self.state.lock:
            for identity, (nb_ids, nb_scores) in zip(stale, found, strict=True):
                data.refresh(identity, nb_ids, nb_scores)

    # -- neighbours ------------------------------------------------------------------------
    def neighbours(
        self, identity: str, faces: np.ndarray, template: np.ndarray, *, reverse: bool
    ) -> tuple[list[str], np.ndarray]:
        """Rule scores of one identity against every cohort member it may matter to (module notes);
        ``reverse``: it is entering (not a member yet), so members whose buffer it enters count too."""
        return self._find([identity], {identity: np.atleast_2d(faces)}, np.atleast_2d(template), entering=reverse)[0]

    def _find(
        self, who: list[str], faces: dict[str, np.ndarray], templates: np.ndarray, *, entering: bool
    ) -> list[tuple[list[str], np.ndarray]]:
        """:meth:`neighbours` of several identities at once, in blocks: one template product, one
        gallery search and one read of candidates' embeddings per block.

        ``entering``: ``who`` are not members; each is scored against the members *and* the others
        of ``who`` (the gallery as it will be once they are all in), and members whose buffer it
        would enter are included. Otherwise ``who`` are members being refreshed.
        """
        space = _Space(self.data, who if entering else [], templates if entering else None)
        out: list[tuple[list[str], np.ndarray]] = []
        block = max(1, min(_MAX_BLOCK, _BLOCK_ELEMENTS // max(space.width, 1)))
        embeddings = _Embeddings(self.gallery, faces)
        for lo in range(0, len(who), block):
            hi = min(len(who), lo + block)
            out.extend(
                self._find_block(space, embeddings, who[lo:hi], templates[lo:hi], entering, m=max(2 * space.depth, 16))
            )
        return out

    def _find_block(  # noqa: PLR0917
        self,
        space: _Space,
        embeddings: _Embeddings,
        who: list[str],
        templates: np.ndarray,
        entering: bool,
        m: int,
    ) -> list[tuple[list[str], np.ndarray]]:
        data = self.data
        tt = space.cosines(templates).astype(np.float64)  # (B, width)
        valid = np.broadcast_to(space.alive, tt.shape).copy()
        valid[np.arange(len(who)), space.columns_of(who)] = False  # never one's own neighbour
        takers = space.takes if entering else None
        if data.rule == "mean":  # the template cosine is the score: exact for everyone, no search
            by_template: list[tuple[list[str], np.ndarray]] = []
            for b in range(len(who)):
                wanted = valid[b] & _top_mask(np.where(valid[b], tt[b], -np.inf), space.depth)
                if takers is not None:
                    wanted |= valid[b] & takers & (tt[b] > space.floor)
                cols = np.flatnonzero(wanted)
                by_template.append((space.ids_at(cols), tt[b, cols]))
            return by_template
        own = [np.atleast_2d(embeddings.own(i)) for i in who]
        lists = self.gallery.search(np.concatenate(own), m + 1)
        starts = np.cumsum([0] + [len(f) for f in own])
        in_a = np.zeros(tt.shape, bool)
        bounds = np.full(len(who), -np.inf)
        full_any = np.zeros(len(who), bool)
        for b in range(len(who)):
            mine = lists[starts[b] : starts[b + 1]]
            full = [lst for lst in mine if len(lst) >= m + 1]
            full_any[b] = bool(full)
            bounds[b] = max((lst[-1].similarity for lst in full), default=-np.inf)
            in_a[b, space.columns_of([c.identity_id for lst in mine for c in lst], known=True)] = True
        in_a &= valid
        embeddings.fetch({i for b in range(len(who)) for i in space.ids_at(np.flatnonzero(in_a[b]))})
        shortlisted: list[tuple[list[str], np.ndarray, np.ndarray]] = []  # (A ids, A scores, exact columns)
        retry: list[int] = []
        for b in range(len(who)):
            a_cols = np.flatnonzero(in_a[b])
            a_ids = space.ids_at(a_cols)
            a_scores = combine(embeddings.best(own[b], a_ids), tt[b, a_cols], data.rule)
            tau = np.sort(a_scores)[-space.depth] if len(a_scores) >= space.depth else -np.inf
            ub = combine(np.full(tt.shape[1], bounds[b]), tt[b], data.rule)
            need = valid[b] & ~in_a[b] & (ub >= tau)
            if takers is not None:
                need |= valid[b] & ~in_a[b] & takers & (ub > space.floor)
            if int(need.sum()) > MAX_EXACT and full_any[b] and m < int(valid[b].sum()):
                retry.append(b)  # the shortlist is too short: lengthen it (below)
            shortlisted.append((a_ids, np.asarray(a_scores, np.float64), np.flatnonzero(need)))
        exact_ids = [space.ids_at(cols) for _, _, cols in shortlisted]
        retried = set(retry)
        embeddings.fetch({i for b, ids in enumerate(exact_ids) if b not in retried for i in ids})
        out: list[tuple[list[str], np.ndarray]] = []
        for b, ((a_ids, a_scores, e_cols), e_ids) in enumerate(zip(shortlisted, exact_ids, strict=True)):
            if b in retried:
                out.append(([], np.zeros(0)))
                continue
            e_scores = combine(embeddings.best(own[b], e_ids), tt[b, e_cols], data.rule) if e_ids else np.zeros(0)
            out.append((a_ids + e_ids, np.concatenate([a_scores, np.asarray(e_scores, np.float64)])))
        if retry:
            again = self._find_block(space, embeddings, [who[b] for b in retry], templates[retry], entering, m * 4)
            for b, result in zip(retry, again, strict=True):
                out[b] = result
        return out


_BLOCK_ELEMENTS = 1 << 22  # template cosines held at once (identities x candidates)
_MAX_BLOCK = 256


class _Space:
    """The candidates of one :meth:`OpenSetUpkeep._find`: the template table's rows, then the
    identities entering with it (columns ``capacity + i``), with their template cosines and floors."""

    def __init__(self, data: GalleryOpenSet, entering: list[str], templates: np.ndarray | None) -> None:
        self.data = data
        self.table = data.templates
        self.capacity = data.templates.capacity
        self.entering = entering
        self.entering_templates = templates if templates is not None else np.zeros((0, data.templates.d), np.float32)
        self.col_of_entering = {identity: self.capacity + i for i, identity in enumerate(entering)}
        alive, _ = self.table.cosines(np.zeros((0, self.table.d), np.float32))
        self.alive = np.concatenate([alive, np.ones(len(entering), bool)])
        takes, floor = data.floors_at(np.arange(self.capacity))
        self.takes = np.concatenate([takes, np.zeros(len(entering), bool)])  # newcomers take nobody yet
        self.floor = np.concatenate([floor, np.full(len(entering), np.inf)])
        self.depth = data.cohort.depth

    @property
    def width(self) -> int:
        return self.capacity + len(self.entering)

    def cosines(self, queries: np.ndarray) -> np.ndarray:
        _, table = self.table.cosines(queries)
        if not self.entering:
            return table
        return np.concatenate([table, np.atleast_2d(queries).astype(np.float32) @ self.entering_templates.T], axis=1)

    def columns_of(self, identity_ids: Sequence[str], *, known: bool = False) -> np.ndarray:
        """Columns of identities (``known``: leave out those that are not candidates; else -1)."""
        cols = []
        for identity in identity_ids:
            col = self.col_of_entering.get(identity)
            if col is None:
                row = self.table.row(identity)
                col = -1 if row is None else row
            if col >= 0 or not known:
                cols.append(col)
        return np.asarray(cols, np.int64)

    def ids_at(self, cols: np.ndarray) -> list[str]:
        cols = np.asarray(cols, np.int64)
        if not len(cols) or cols.max() < self.capacity:
            return self.table.ids_at(cols)
        table = iter(self.table.ids_at(cols[cols < self.capacity]))
        return [self.entering[c - self.capacity] if c >= self.capacity else next(table) for c in cols.tolist()]


class _Embeddings:
    """Faces of candidate identities, read from the gallery once per :meth:`OpenSetUpkeep._find`."""

    def __init__(self, gallery: GalleryReader, known: dict[str, np.ndarray]) -> None:
        self.gallery = gallery
        self.faces = dict(known)

    def own(self, identity: str) -> np.ndarray:
        return self.faces[identity]

    def fetch(self, identity_ids: Iterable[str]) -> None:
        missing = [i for i in identity_ids if i not in self.faces]
        if missing:
            got = self.gallery.embeddings_of_many(missing)
            for identity in missing:
                self.faces[identity] = got.get(identity, np.zeros((0, 0), np.float32))

    def best(self, own: np.ndarray, identity_ids: list[str]) -> np.ndarray:
        """Exact best-face cosine of ``own`` faces against each identity's current faces."""
        if not identity_ids:
            return np.zeros(0)
        theirs = [self.faces[i] for i in identity_ids]
        sizes = np.array([len(t) for t in theirs])
        out = np.full(len(identity_ids), -np.inf)
        has = sizes > 0
        if has.any():
            stacked = np.concatenate([t for t, h in zip(theirs, has, strict=True) if h])
            per_face = (np.atleast_2d(own) @ stacked.T).max(axis=0)
            starts = np.concatenate([[0], np.cumsum(sizes[has])[:-1]])
            out[has] = np.maximum.reduceat(per_face, starts)
        return out


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
