"""A gallery's open-set statistics: identity templates and the cohort, built in bulk and saved.

What the normalised score (:mod:`facesearch.scoring.normalise`) needs from the gallery, for every
enrolled identity:

- its **template**: the L2-normalised mean of its faces' embeddings (:mod:`facesearch.scoring.templates`);
  with the ``both`` rule an identity scores ``(best face cosine + template cosine) / 2``;
- its **cohort** buffer (:class:`~facesearch.scoring.cohort.GalleryCohort`): its ``depth`` most
  similar other identities under the same rule, whose first ``k`` give its cohort mean.

:func:`build_open_set` computes both from all faces at once (the index-build path);
:func:`build_open_set_for_store` does it from a published version's identity store, and the
result is saved beside it as :data:`OPEN_SET_FILE` (``GalleryOpenSet.save``). The server loads
that file with the version and keeps it current on enroll and delete.

Cost of the bulk build (n faces, L identities, d = 128):

- up to :data:`EXACT_FACES` faces it is exact: every pair of faces is compared, O(n^2 d)
  (10k faces: ~1.3e10 multiply-adds, about 3 s on 2 cores);
- above, each identity's neighbours are shortlisted by exact template cosine (all pairs of
  templates, O(L^2 d); measured: 25k identities / 100k faces in ~20 s on 2 shared cores,
  read from the identity store included; 100k identities would take a few minutes), the best
  :data:`SHORTLIST` are re-scored exactly under the rule, and the top ``depth`` kept. An
  identity whose true neighbour is outside its template shortlist gets a slightly lower
  cohort mean. Measured on the synthetic face model (4,000 identities, 16,000 faces): 99.9% of
  cohort means identical to the exact build, the largest difference 5e-4 (normalised
  thresholds are ~0.03); the build took 1.6 s against 6.7 s for the exact one.
- memory (:func:`build_open_set_for_store`, the indexer's and the server's path): the store is
  read in chunks and its faces regrouped by identity, held in memory up to a byte limit and
  otherwise in a float32 scratch file read through the page cache (512 MB at 1M faces, 5 GB at
  10M); resident are the L x d templates, the cohort and 32 bytes a face of ids
  (:func:`open_set_build_bytes`). The compute is unchanged: O(L^2 d) for the template
  shortlist, which is what limits it beyond a few hundred thousand identities.

``facesearch-index`` writes :data:`OPEN_SET_FILE` into every version it publishes, with the
sha256 of the identity store it was computed from (:attr:`GalleryOpenSet.store_sha256`), so
the server can tell it belongs to the version before using it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from facesearch.errors import IndexFormatError, InvalidInputError, Reason
from facesearch.scoring.cohort import GalleryCohort
from facesearch.scoring.normalise import DEFAULT_K
from facesearch.scoring.templates import DEFAULT_TEMPLATE, TemplateRule, mean_templates, template_rule

OPEN_SET_FILE = "open_set.npz"
FORMAT_VERSION = 1
#: Up to this many faces the bulk build compares every pair of faces (exact).
EXACT_FACES = 10_000
#: Above it, neighbours per identity re-scored exactly after a template-cosine shortlist.
SHORTLIST = 64
BLOCK_ELEMENTS = 1 << 24  # scores held at once by the bulk build (64 MB of float32)
#: Above this many identities the template shortlist comes from an HNSW graph, not a full scan.
ANN_IDENTITIES = 50_000
_ANN_BLOCK = 1024  # identities re-scored at once
_HNSW_M = 32  # graph degree of the template shortlist graph
_HNSW_EF_SLACK = 64  # search breadth beyond the shortlist length


def combine(best: np.ndarray, template: np.ndarray, rule: str) -> np.ndarray:
    """Identity scores under a template rule from best-face and template cosines."""
    parsed = template_rule(rule)
    if parsed is TemplateRule.BEST:
        return np.asarray(best)
    if parsed is TemplateRule.MEAN:
        return np.asarray(template)
    return 0.5 * (np.asarray(best) + np.asarray(template))


def unit(x: np.ndarray) -> np.ndarray:
    """``x`` (a vector, or rows) scaled to unit length, float32."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


class TemplateTable:
    """Identity id -> template (unit vector). Rows are reused after removals; not thread-safe."""

    def __init__(self, d: int) -> None:
        self.d = d
        self._row: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._vec = np.zeros((0, d), np.float32)
        self._alive = np.zeros(0, bool)

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, identity_id: object) -> bool:
        return identity_id in self._row

    @property
    def identity_ids(self) -> list[str]:
        return list(self._row)

    @property
    def capacity(self) -> int:
        """Rows allocated (row numbers are below it)."""
        return len(self._vec)

    def row(self, identity_id: str) -> int | None:
        return self._row.get(identity_id)

    @classmethod
    def from_rows(cls, identity_ids: Sequence[str], templates: np.ndarray) -> TemplateTable:
        table = cls(int(templates.shape[1]))
        n = len(identity_ids)
        table._vec = np.array(templates, np.float32).reshape(n, table.d)
        table._alive = np.ones(n, bool)
        table._ids = list(identity_ids)
        table._row = {identity: i for i, identity in enumerate(identity_ids)}
        if len(table._row) != n:
            raise InvalidInputError("duplicate identity ids in a template table", reason=Reason.BAD_GALLERY)
        return table

    def set(self, identity_id: str, template: np.ndarray) -> None:
        row = self._row.get(identity_id)
        if row is None:
            if self._free:
                row = self._free.pop()
            else:
                row = len(self._ids)
                self._ids.append(None)
                if row >= len(self._vec):
                    cap = max(16, 2 * len(self._vec))
                    self._vec = np.vstack([self._vec, np.zeros((cap - len(self._vec), self.d), np.float32)])
                    self._alive = np.concatenate([self._alive, np.zeros(cap - len(self._alive), bool)])
            self._row[identity_id] = row
            self._ids[row] = identity_id
        self._vec[row] = template
        self._alive[row] = True

    def remove(self, identity_id: str) -> None:
        row = self._row.pop(identity_id, None)
        if row is not None:
            self._ids[row] = None
            self._vec[row] = 0.0
            self._alive[row] = False
            self._free.append(row)

    def get(self, identity_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(templates (m, d), known (m,))``; zero rows for unknown identities."""
        rows = np.array([self._row.get(i, -1) for i in identity_ids], np.int64)
        known = rows >= 0
        out = self._vec[np.maximum(rows, 0)] if len(self._vec) else np.zeros((len(rows), self.d), np.float32)
        out = out.copy()
        out[~known] = 0.0
        return out, known

    def scan(self, query: np.ndarray, exclude: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Template cosine of ``query`` against every identity (but ``exclude``): ``(rows, scores)``."""
        alive = self._alive.copy()
        if exclude is not None and exclude in self._row:
            alive[self._row[exclude]] = False
        rows = np.flatnonzero(alive)
        if len(rows) == 0:
            return rows, np.zeros(0, np.float32)
        return rows, (self._vec @ np.asarray(query, np.float32))[rows]  # one pass over the table, no gather

    def cosines(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Template cosine of each query row against every table row: ``(alive (capacity,), scores
        (len(queries), capacity))``; scores of rows that are not alive mean nothing."""
        scores = np.atleast_2d(np.asarray(queries, np.float32)) @ self._vec.T
        return self._alive.copy(), scores

    def ids_at(self, rows: np.ndarray) -> list[str]:
        """Identity ids of table rows (from :meth:`scan`)."""
        return [str(self._ids[int(r)]) for r in rows]

    def rows_of(self, identity_ids: Iterable[str]) -> np.ndarray:
        """Table rows of the given identities that are in the table."""
        return np.array([r for i in identity_ids if (r := self._row.get(i)) is not None], np.int64)


class GalleryOpenSet:
    """Templates and cohort of one gallery, under one template rule, holding the same identities.

    Change it through :meth:`add`, :meth:`remove` and :meth:`refresh` (not thread-safe: its
    owner serialises them), which keep each template row paired with the identity's cohort row.
    """

    def __init__(self, templates: TemplateTable, cohort: GalleryCohort, rule: str) -> None:
        template_rule(rule)  # refuses an unknown rule
        if len(templates) != len(cohort) or any(i not in templates for i in cohort.identity_ids):
            raise InvalidInputError("templates and cohort hold different identities", reason=Reason.BAD_SCORES)
        self.templates = templates
        self.cohort = cohort
        self.rule = rule
        #: sha256 of the identity store the statistics were computed from (saved with them), if known
        self.store_sha256: str | None = None
        self._cohort_row = np.full(templates.capacity, -1, np.int64)  # template row -> cohort row
        for identity in templates.identity_ids:
            self._cohort_row[templates.row(identity)] = cohort.row_of(identity)

    def add(
        self, identity_id: str, template: np.ndarray, neighbour_ids: Sequence[str], neighbour_scores: np.ndarray
    ) -> None:
        """Enroll an identity (see :meth:`GalleryCohort.enroll` for what the neighbours must cover)."""
        self.add_many([(identity_id, template, neighbour_ids, neighbour_scores)])

    def add_many(self, entries: Sequence[tuple[str, np.ndarray, Sequence[str], np.ndarray]]) -> None:
        """Enroll several identities: ``(id, template, neighbour ids, scores)`` each, the scores covering
        what :meth:`GalleryCohort.enroll_many` needs."""
        self.cohort.enroll_many([(identity_id, ids, scores) for identity_id, _, ids, scores in entries])
        for identity_id, template, _, _ in entries:
            self.templates.set(identity_id, template)
            row = self.templates.row(identity_id)
            assert row is not None
            if row >= len(self._cohort_row):
                grown = np.full(self.templates.capacity, -1, np.int64)
                grown[: len(self._cohort_row)] = self._cohort_row
                self._cohort_row = grown
            self._cohort_row[row] = self.cohort.row_of(identity_id)

    def remove(self, identity_id: str) -> list[str]:
        """Remove an identity if present; returns the identities its removal left stale."""
        row = self.templates.row(identity_id)
        if row is None:
            return []
        self._cohort_row[row] = -1
        self.templates.remove(identity_id)
        return [str(i) for i in self.cohort.delete(identity_id)]

    def remove_many(self, identity_ids: Iterable[str]) -> None:
        """Remove the identities that are present (:meth:`GalleryCohort.delete_many`)."""
        present = []
        for identity_id in dict.fromkeys(identity_ids):
            row = self.templates.row(identity_id)
            if row is not None:
                self._cohort_row[row] = -1
                self.templates.remove(identity_id)
                present.append(identity_id)
        self.cohort.delete_many(present)

    def refresh(self, identity_id: str, neighbour_ids: Sequence[str], neighbour_scores: np.ndarray) -> None:
        self.cohort.refresh(identity_id, neighbour_ids, neighbour_scores)

    def floors_at(self, template_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`GalleryCohort.floors` of identities given by template rows (vectorised)."""
        return self.cohort.floors_at(self._cohort_row[np.asarray(template_rows, np.int64)])

    @classmethod
    def empty(
        cls, d: int, k: int = DEFAULT_K, rule: str = DEFAULT_TEMPLATE, depth: int | None = None
    ) -> GalleryOpenSet:
        return cls(TemplateTable(d), GalleryCohort(k, depth), rule)

    @property
    def k(self) -> int:
        return self.cohort.k

    @property
    def depth(self) -> int:
        return self.cohort.depth

    def __len__(self) -> int:
        return len(self.cohort)

    def save(self, path: Path) -> None:
        """One npz (no pickles): ids as a UTF-8 blob with offsets, templates and cohort arrays aligned."""
        ids = self.cohort.identity_ids
        templates, known = self.templates.get([str(i) for i in ids])
        if not known.all() or len(self.templates) != len(ids):
            raise InvalidInputError("templates and cohort hold different identities", reason=Reason.BAD_SCORES)
        encoded = [str(i).encode() for i in ids]
        offsets = np.cumsum([0, *map(len, encoded)]).astype(np.int64)
        tmp = path.with_name(path.name + ".tmp.npz")
        payload: dict[str, Any] = {
            "format_version": np.int64(FORMAT_VERSION),
            "rule": np.asarray(self.rule),
            "k": np.int64(self.k),
            "depth": np.int64(self.depth),
            "d": np.int64(self.templates.d),
            "id_blob": np.frombuffer(b"".join(encoded), np.uint8),
            "id_offsets": offsets,
            "templates": templates,
            "store_sha256": np.asarray(self.store_sha256 or ""),
            **self.cohort.export(ids),
        }
        np.savez(tmp, **payload)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> GalleryOpenSet:
        try:
            with np.load(path) as data:
                if int(data["format_version"]) != FORMAT_VERSION:
                    raise IndexFormatError(
                        f"{path}: open-set format {int(data['format_version'])}, this facesearch reads {FORMAT_VERSION}"
                    )
                blob, offsets = data["id_blob"].tobytes(), data["id_offsets"]
                ids = [blob[a:b].decode() for a, b in itertools.pairwise(offsets.tolist())]
                arrays = {key: data[key] for key in ("neighbours", "scores", "counts", "complete")}
                cohort = GalleryCohort.restore(ids, arrays, int(data["k"]), int(data["depth"]))
                templates = TemplateTable.from_rows(ids, data["templates"].reshape(len(ids), int(data["d"])))
                result = cls(templates, cohort, str(data["rule"]))
                result.store_sha256 = str(data["store_sha256"]) or None if "store_sha256" in data.files else None
                return result
        except (OSError, KeyError, ValueError, UnicodeDecodeError, InvalidInputError) as err:
            raise IndexFormatError(f"{path}: unreadable open-set statistics: {err}") from err


def saved_params(path: Path) -> tuple[int, str, int]:
    """``(k, rule, depth)`` of a saved :data:`OPEN_SET_FILE`, without reading its arrays."""
    try:
        with np.load(path) as data:
            return int(data["k"]), str(data["rule"]), int(data["depth"])
    except (OSError, KeyError, ValueError) as err:
        raise IndexFormatError(f"{path}: unreadable open-set statistics: {err}") from err


def file_fingerprint(path: Path) -> str:
    """A short content hash of a small file (to key caches on)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# -- the bulk build --------------------------------------------------------------------
def build_open_set(
    identity_ids: Sequence[str],
    face_identity: np.ndarray,
    embeddings: np.ndarray,
    *,
    k: int = DEFAULT_K,
    rule: str = DEFAULT_TEMPLATE,
    depth: int | None = None,
    exact_faces: int = EXACT_FACES,
    shortlist: int = SHORTLIST,
) -> GalleryOpenSet:
    """Templates and cohort of a gallery from all its faces.

    ``embeddings`` (n, d) L2-normalised; ``face_identity`` (n,) the row of each face's identity
    in ``identity_ids``. Every identity must have at least one face.
    """
    faces = np.asarray(embeddings, np.float32)
    owner = np.asarray(face_identity, np.int64)
    n_ids = len(identity_ids)
    if faces.ndim != 2 or len(owner) != len(faces):
        raise InvalidInputError("embeddings must be (n, d) with one identity row per face", reason=Reason.BAD_GALLERY)
    counts = np.bincount(owner, minlength=n_ids) if len(owner) else np.zeros(n_ids, np.int64)
    if len(counts) != n_ids or (counts == 0).any():
        raise InvalidInputError(
            "every identity needs at least one face, and rows must be < len(identity_ids)", reason=Reason.BAD_GALLERY
        )
    if n_ids == 0:
        return GalleryOpenSet.empty(faces.shape[1], k, rule, depth)
    order = np.argsort(owner, kind="stable")
    faces = faces[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    templates = mean_templates(faces, owner[order], n_ids)
    return from_grouped(
        [str(i) for i in identity_ids],
        Grouped(faces, starts, counts, templates),
        k=k,
        rule=rule,
        depth=depth,
        exact_faces=exact_faces,
        shortlist=shortlist,
    )


def from_grouped(
    ids: list[str],
    grouped: Grouped,
    *,
    k: int,
    rule: str,
    depth: int | None,
    exact_faces: int = EXACT_FACES,
    shortlist: int = SHORTLIST,
    progress: bool = False,
) -> GalleryOpenSet:
    result = GalleryOpenSet.empty(grouped.faces.shape[1], k, rule, depth)
    n_ids = len(ids)
    if n_ids == 0:
        return result
    keep = min(result.depth, n_ids - 1)
    nbr = np.full((n_ids, max(keep, 1)), -1, np.int64)
    scores = np.full((n_ids, max(keep, 1)), -np.inf, np.float32)
    if keep > 0:
        with tqdm(total=n_ids, desc="open-set cohort", unit="id", disable=not progress, dynamic_ncols=True) as bar:
            if len(grouped.faces) <= exact_faces or n_ids <= shortlist + 1:
                exact_neighbours(grouped, rule, keep, nbr, scores, bar)
            else:
                shortlist_neighbours(grouped, rule, keep, shortlist, nbr, scores, bar)
    cohort = GalleryCohort.from_neighbours(ids, nbr, scores, k, result.depth)
    return GalleryOpenSet(TemplateTable.from_rows(ids, grouped.templates), cohort, rule)


def _top(block: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns and values of the ``keep`` largest entries per row, best first (ties: lower column)."""
    part = (
        np.argpartition(-block, keep - 1, axis=1)[:, :keep]
        if keep < block.shape[1]
        else np.tile(np.arange(block.shape[1]), (len(block), 1))
    )
    vals = np.take_along_axis(block, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


@dataclass(frozen=True, slots=True)
class Grouped:
    """Faces sorted by identity: identity i owns ``faces[starts[i] : starts[i] + counts[i]]``."""

    faces: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    templates: np.ndarray


def exact_neighbours(  # noqa: PLR0917
    g: Grouped,
    rule: str,
    keep: int,
    nbr: np.ndarray,
    out: np.ndarray,
    bar: Any,
) -> None:
    faces, starts, counts, templates = g.faces, g.starts, g.counts, g.templates
    n_ids = len(starts)
    per_block = max(1, BLOCK_ELEMENTS // max(len(faces), 1))
    lo = 0
    while lo < n_ids:
        hi = lo + 1
        while hi < n_ids and starts[hi] + counts[hi] - starts[lo] <= per_block:
            hi += 1
        f_lo, f_hi = starts[lo], starts[hi - 1] + counts[hi - 1]
        sims = faces[f_lo:f_hi] @ faces.T  # (block faces, n)
        best = np.maximum.reduceat(sims, starts, axis=1)  # (block faces, L)
        best = np.maximum.reduceat(best, starts[lo:hi] - f_lo, axis=0)  # (block identities, L)
        block = combine(best, templates[lo:hi] @ templates.T, rule).astype(np.float32)
        block[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf
        nbr[lo:hi, :keep], out[lo:hi, :keep] = _top(block, keep)
        bar.update(hi - lo)
        lo = hi


def shortlist_neighbours(  # noqa: PLR0917
    g: Grouped,
    rule: str,
    keep: int,
    shortlist: int,
    nbr: np.ndarray,
    out: np.ndarray,
    bar: Any,
    *,
    ann_identities: int = ANN_IDENTITIES,
) -> None:
    """Per identity: the ``shortlist`` nearest other templates, re-scored exactly under ``rule``.

    Up to ``ann_identities`` identities the shortlist is a full template scan (L^2 d); above, it
    comes from an HNSW graph over the templates (about L log L), so a 10M-face gallery with a
    million identities builds in minutes, not hours. Re-scoring (best face pair of the two
    identities) lays out a block of identities' candidate faces at once.
    """
    templates = g.templates
    n_ids = len(templates)
    graph = _template_graph(templates, shortlist) if n_ids > ann_identities else None
    per_block = max(1, min(_ANN_BLOCK, BLOCK_ELEMENTS // n_ids)) if graph is None else _ANN_BLOCK
    for lo in range(0, n_ids, per_block):
        hi = min(n_ids, lo + per_block)
        if graph is None:
            tt = templates[lo:hi] @ templates.T
            tt[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf
            cand, cand_tt = _top(tt, shortlist)
        else:
            cand, cand_tt = _graph_candidates(graph, templates, lo, hi, shortlist)
        both = cand_tt if rule == TemplateRule.MEAN else combine(_best_pairs(g, np.arange(lo, hi), cand), cand_tt, rule)
        both = np.where(cand >= 0, both, -np.inf).astype(np.float32)
        top_cols, top_vals = _top(both, keep)
        nbr[lo:hi, :keep] = np.take_along_axis(cand, top_cols, axis=1)
        out[lo:hi, :keep] = top_vals
        bar.update(hi - lo)


def _template_graph(templates: np.ndarray, shortlist: int) -> Any:
    import faiss  # noqa: PLC0415 - only large galleries need it

    graph = faiss.IndexHNSWFlat(templates.shape[1], _HNSW_M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = 80
    graph.hnsw.efSearch = shortlist + 1 + _HNSW_EF_SLACK
    graph.add(np.ascontiguousarray(templates, dtype=np.float32))
    return graph


def _graph_candidates(
    graph: Any, templates: np.ndarray, lo: int, hi: int, shortlist: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``shortlist`` nearest other templates of rows ``lo:hi`` (-1 where the graph found fewer)."""
    scores, rows = graph.search(np.ascontiguousarray(templates[lo:hi]), shortlist + 1)
    own = rows == np.arange(lo, hi)[:, None]
    own[~own.any(axis=1), -1] = True  # self not returned: drop the weakest instead
    keep = ~own
    cand = rows[keep].reshape(hi - lo, shortlist)
    vals = scores[keep].reshape(hi - lo, shortlist).astype(np.float32)
    return cand, np.where(cand >= 0, vals, -np.inf).astype(np.float32)


def _best_pairs(g: Grouped, ids: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """(len(ids), S): the best cosine between any face of ``ids[i]`` and any face of ``cand[i, j]``.

    The candidates' face rows are laid out for the whole block at once; each identity then costs
    one gather and one (own faces x candidate faces) product, with no padding.
    """
    out = np.full(cand.shape, -np.inf, np.float32)
    valid = cand >= 0
    lengths = np.where(valid, g.counts[np.where(valid, cand, 0)], 0)  # (B, S) faces of each candidate
    flat = lengths.ravel()
    total = int(flat.sum())
    if total == 0:
        return out
    first = np.concatenate([[0], np.cumsum(flat)[:-1]])  # where each candidate's faces begin
    rows = np.repeat(g.starts[np.where(valid, cand, 0)].ravel() - first, flat) + np.arange(total)
    per_id = lengths.sum(axis=1)
    id_first = np.concatenate([[0], np.cumsum(per_id)[:-1]])
    for i, identity in enumerate(ids):
        cols = np.flatnonzero(valid[i])
        if not len(cols):
            continue
        own = g.faces[g.starts[identity] : g.starts[identity] + g.counts[identity]]
        theirs = g.faces[rows[id_first[i] : id_first[i] + per_id[i]]]
        best = (own @ theirs.T).max(axis=0)
        seg = np.concatenate([[0], np.cumsum(lengths[i, cols])[:-1]])
        out[i, cols] = np.maximum.reduceat(best, seg)
    return out


def open_set_params(bundle_root: Path) -> tuple[int, str]:
    """``(k, template rule)`` the bundle's open-set calibration was measured with (defaults without one)."""
    from facesearch.scoring.open_set_calibration import load_open_set_calibration  # noqa: PLC0415

    cal = load_open_set_calibration(bundle_root)
    return (cal.k, cal.template) if cal is not None else (DEFAULT_K, DEFAULT_TEMPLATE)
