"""Open-set scores: adaptive symmetric normalisation with the gallery as cohort.

A raw cosine similarity means different things for different faces: some probes (harsh
light, a blurred photo) and some enrolled people ("hubs" with average features) are close
to many others, so strangers score high against them. The normalised score compares a
score with the scores the same two faces get against the *other* gallery identities:

    score = s - (mu_p + mu_g) / 2

``mu_p`` is the mean of the probe's top-``k`` raw scores against identities other than
the candidate (the search returns them anyway: ask the index for ``k + 1`` identities);
``mu_g`` the mean of the candidate's top-``k`` scores against the rest of the gallery
(kept current on enroll and delete by :mod:`facesearch.scoring.cohort`). The score is a
margin in cosine units: how far the pair stands above both faces' nearest competitors.

This is AS-norm (adaptive symmetric normalisation) with its per-side standard deviations
replaced by one constant scale. Measured on lfw-dev (bench/results/open_set.md): a top-k
standard deviation with the small k that gives the best adaptive means is too noisy to
divide by, and the full cohort's spread varies too little between faces to add anything.

Everything here is pure numpy over small arrays: per request the cost is O(k) per
candidate, nothing that grows with the gallery.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from facesearch.errors import InvalidInputError

#: Cohort size tuned on lfw-dev (bench/results/open_set.md).
DEFAULT_K = 4
SCORE_NAME = "adaptive symmetric margin"


def topk_mean(sorted_scores: np.ndarray, k: int) -> np.ndarray:
    """Mean of the first ``k`` finite entries of rows sorted in decreasing order (nan if none)."""
    block = np.asarray(sorted_scores, np.float64)[:, :k]
    ok = np.isfinite(block)
    count = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(ok, block, 0.0).sum(axis=1) / count, np.nan)


def gallery_topk_mean(identity_scores: np.ndarray, k: int) -> np.ndarray:
    """Per identity, the mean of its top-``k`` scores against the others, from an (L, L) matrix.

    The diagonal (an identity against itself) is ignored.
    """
    s = np.array(identity_scores, np.float64)
    np.fill_diagonal(s, -np.inf)
    return topk_mean(-np.sort(-s, axis=1), k)


def probe_topk_mean(scores: np.ndarray, k: int) -> np.ndarray:
    """Per candidate, the mean of the probe's top-``k`` scores over the *other* candidates.

    ``scores``: (q, m) raw scores of each probe against m identities, any order (the whole
    gallery, or the identities a search returned; -inf for "not a candidate"). For a
    candidate inside the probe's top ``k + 1`` the cohort is the top ``k + 1`` without it;
    for any other candidate it is the top ``k``. With fewer than ``k + 1`` candidates the
    cohort is all the others. Returns (q, m); nan where a probe has no other candidate.
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2:
        raise InvalidInputError(f"scores must be (probes, candidates), got shape {s.shape}", reason="BAD_SCORES")
    q, m = s.shape
    kk = min(k, m - 1)
    if kk < 1:
        return np.full((q, m), np.nan)
    part = -np.partition(-s, kk, axis=1)[:, : kk + 1]  # the top kk + 1, unordered
    finite = np.isfinite(part)
    kth1 = np.where(finite, part, np.inf).min(axis=1, keepdims=True)  # worst finite of the top kk + 1
    total = np.where(finite, part, 0.0).sum(axis=1, keepdims=True)
    count = finite.sum(axis=1, keepdims=True)
    inside = np.isfinite(s) & (s >= kth1)
    with np.errstate(invalid="ignore", divide="ignore"):
        full = count == kk + 1
        # inside: drop the candidate itself; outside: drop the (kk+1)-th if the top is full
        sums = np.where(inside, total - np.where(np.isfinite(s), s, 0.0), np.where(full, total - kth1, total))
        counts = np.where(inside, count - 1, np.where(full, count - 1, count))
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def margin(scores: np.ndarray, probe_mean: np.ndarray, gallery_mean: np.ndarray) -> np.ndarray:
    """The normalised score ``s - (mu_p + mu_g) / 2``; a missing side (nan) is left out."""
    s = np.asarray(scores, np.float64)
    p, g = np.broadcast_arrays(np.asarray(probe_mean, np.float64), np.asarray(gallery_mean, np.float64))
    both = np.where(np.isnan(p), g, np.where(np.isnan(g), p, 0.5 * (p + g)))
    return s - np.nan_to_num(both, nan=0.0)


def normalise_matrix(scores: np.ndarray, gallery_mean: np.ndarray, k: int) -> np.ndarray:
    """Normalised scores of probes (q, L) against a whole gallery with known identity means (L,)."""
    s = np.asarray(scores, np.float64)
    out = margin(s, probe_topk_mean(s, k), np.asarray(gallery_mean)[None, :])
    out[~np.isfinite(s)] = -np.inf
    return out


# -- one request -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    identity_id: Hashable
    similarity: float  # raw cosine (the identity's template score)
    score: float  # normalised score: what the decision thresholds


@dataclass(frozen=True, slots=True)
class Threshold:
    """The decision threshold applied to a request, and why."""

    score: float  # a match needs a score strictly above it
    kind: str  # "normalised", or "cosine" (raw similarity, when normalisation cannot apply)
    fpir: float | None  # false-positive identification rate it stands for at this gallery size
    fmr: float | None  # the per-comparison false-match rate equivalent, 1 - (1 - fpir)^(1/N)
    gallery_size: int
    capped: bool  # the request asked for less than the calibration measured: strictest threshold used
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    candidates: tuple[ScoredCandidate, ...]  # best first, by the score the threshold is on
    match: ScoredCandidate | None  # the best candidate if it clears the threshold, else None: "unknown"
    threshold: Threshold


def score_candidates(
    identity_ids: Sequence[Hashable],
    similarities: Sequence[float] | np.ndarray,
    gallery_mean: Sequence[float] | np.ndarray,
    k: int,
) -> tuple[ScoredCandidate, ...]:
    """Normalise one probe's search results and rank them by normalised score.

    ``identity_ids``/``similarities``: the identities the search returned (ask for at least
    ``k + 1``) with their raw scores; ``gallery_mean``: those identities' top-k means, e.g.
    ``GalleryCohort.means(identity_ids)`` (nan where unknown: that side is left out).
    """
    raw = np.asarray(similarities, np.float64)
    if raw.ndim != 1 or len(raw) != len(identity_ids) or np.shape(gallery_mean) != raw.shape:
        raise InvalidInputError("identity_ids, similarities and gallery_mean must be parallel 1-d", reason="BAD_SCORES")
    if len(raw) == 0:
        return ()
    z = margin(raw, probe_topk_mean(raw[None, :], k)[0], np.asarray(gallery_mean, np.float64))
    order = np.lexsort((-raw, -z))
    return tuple(ScoredCandidate(identity_ids[i], float(raw[i]), float(z[i])) for i in order)


def decide(candidates: tuple[ScoredCandidate, ...], threshold: Threshold) -> Decision:
    """Apply ``threshold`` to the best candidate by the score kind the threshold is on."""
    if threshold.kind == "cosine":
        candidates = tuple(sorted(candidates, key=lambda c: -c.similarity))
        best = candidates[0].similarity if candidates else None
    else:
        best = candidates[0].score if candidates else None
    match = candidates[0] if best is not None and best > threshold.score else None
    return Decision(candidates=candidates, match=match, threshold=threshold)
