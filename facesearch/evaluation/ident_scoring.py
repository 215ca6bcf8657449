"""Scoring an identification split both ways: raw cosine and facesearch's normalised decision score.

Given gallery faces (grouped into identities by label) and probe faces, every probe is
searched against every identity (exact, brute force: evaluation galleries are small).
A probe whose label is enrolled is a mated search; any other probe is a non-mated one.
With ``leave_one_out`` (automatic when a split has no non-mated probes), each mated probe
is also searched against the gallery *without* its own identity, with the gallery cohort
means recomputed for that smaller gallery: exactly a non-mated search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facesearch.evaluation.ident import Searches, searches_from_scores
from facesearch.scoring.normalise import normalise_matrix, topk_mean
from facesearch.scoring.templates import DEFAULT_TEMPLATE, build_gallery, gallery_scores, identity_scores


@dataclass(frozen=True, slots=True)
class ScoredSplit:
    raw: Searches  # cosine, best face per identity (dlib-equivalent)
    normalised: Searches  # normalised template scores: facesearch's decision score
    gallery_size: int
    nonmated_source: str  # "probes", "leave-one-out" or "probes + leave-one-out"


@dataclass(frozen=True, slots=True)
class GalleryMeans:
    """Top-k means of every identity, and what removing one identity does to them."""

    scores: np.ndarray  # (L, L) identity-vs-identity, -inf diagonal
    top: np.ndarray  # (L, k+1) columns of each identity's k+1 best others
    means: np.ndarray  # (L,) top-k means
    k: int

    @classmethod
    def of(cls, scores: np.ndarray, k: int) -> GalleryMeans:
        s = np.array(scores, np.float64)
        np.fill_diagonal(s, -np.inf)
        top = np.argsort(-s, axis=1, kind="stable")[:, : k + 1]
        return cls(scores=s, top=top, means=topk_mean(np.take_along_axis(s, top, axis=1), k), k=k)

    def without(self, column: int) -> np.ndarray:
        """The means of the gallery without identity ``column`` (its own entry becomes nan)."""
        out = self.means.copy()
        rows = np.flatnonzero((self.top[:, : self.k] == column).any(axis=1))
        for j in rows:
            others = [c for c in self.top[j] if c != column][: self.k]
            out[j] = topk_mean(self.scores[j, others][None, :], self.k)[0]
        out[column] = np.nan
        return out


def score_split(
    gallery_faces: np.ndarray,
    gallery_labels: np.ndarray,
    probes: np.ndarray,
    probe_labels: np.ndarray,
    probe_found: np.ndarray,
    *,
    k: int,
    template: str = DEFAULT_TEMPLATE,
    weights: np.ndarray | None = None,
    groups: Sequence[str] | None = None,
    leave_one_out: bool | None = None,
) -> ScoredSplit:
    """Searches of every probe, scored raw and normalised.

    ``gallery_faces`` are found faces only; ``probes`` hold a row per probe photo, with
    ``probe_found`` False where no face was found (a miss, never a false positive).
    ``weights``: per gallery face quality weights for the mean template (or None).
    ``groups``: a group label per probe, for the per-group table.
    """
    gallery = build_gallery(gallery_faces, gallery_labels, weights)
    column = {label: i for i, label in enumerate(gallery.identities.tolist())}
    mate = np.array([column.get(label, -1) for label in np.asarray(probe_labels).tolist()], np.int64)
    found = np.asarray(probe_found, bool)
    raw = identity_scores(probes, gallery, "best").astype(np.float64)
    decision_raw = raw if template == "best" else identity_scores(probes, gallery, template).astype(np.float64)
    cohort = GalleryMeans.of(gallery_scores(gallery, template), k)
    z = normalise_matrix(decision_raw, cohort.means, k)
    group = None if groups is None else np.asarray(groups, dtype=str)
    has_nonmated = bool((mate < 0).any())
    loo = (not has_nonmated) if leave_one_out is None else leave_one_out
    source = "probes"
    if loo:
        source = "probes + leave-one-out" if has_nonmated else "leave-one-out"
        rows = np.flatnonzero(mate >= 0)
        raw_loo, dec_loo = raw[rows].copy(), decision_raw[rows].copy()
        at = (np.arange(len(rows)), mate[rows])
        raw_loo[at] = -np.inf
        dec_loo[at] = -np.inf
        z_loo = np.empty_like(dec_loo)
        for m in np.unique(mate[rows]):
            sel = mate[rows] == m
            means = cohort.without(int(m))
            z_loo[sel] = normalise_matrix(dec_loo[sel], np.nan_to_num(means, nan=0.0), k)
        raw, z = np.vstack([raw, raw_loo]), np.vstack([z, z_loo])
        mate = np.r_[mate, np.full(len(rows), -1)]
        found = np.r_[found, found[rows]]
        group = None if group is None else np.r_[group, group[rows]]
    return ScoredSplit(
        raw=searches_from_scores(raw, mate, found, group),
        normalised=searches_from_scores(z, mate, found, group),
        gallery_size=len(gallery.identities),
        nonmated_source=source,
    )
