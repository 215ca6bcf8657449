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

One request: :func:`normalise_candidates` scores the identities a search returned (the
server's path, template scores and all), :func:`score_candidates` wraps it into ranked
:class:`~facesearch.scoring.decision.ScoredCandidate` s; deciding on them is
:mod:`facesearch.scoring.decision`. Whole galleries (evaluation): :func:`normalise_matrix`.

Everything here is pure numpy over small arrays: per request the cost is O(k) per
candidate, nothing that grows with the gallery.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facesearch.errors import InvalidInputError, Reason
from facesearch.scoring.decision import ScoredCandidate, ScoreKind, rank

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
        raise InvalidInputError(f"scores must be (probes, candidates), got shape {s.shape}", reason=Reason.BAD_SCORES)
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
def normalise_candidates(
    identity_scores: Sequence[float] | np.ndarray, gallery_mean: Sequence[float] | np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """One probe's candidates: ``(normalised scores, probe-side means)``, parallel to the input.

    ``identity_scores``: the raw (template-rule) scores of the identities a search returned (ask
    for at least ``k + 1``); ``gallery_mean``: those identities' top-k means (nan where unknown:
    that side is left out). The probe mean is nan where the probe has no other candidate.
    """
    s = np.asarray(identity_scores, np.float64)
    probe_mean = probe_topk_mean(s[None, :], k)[0]
    return margin(s, probe_mean, np.asarray(gallery_mean, np.float64)), probe_mean


def score_candidates(
    identity_ids: Sequence[str],
    similarities: Sequence[float] | np.ndarray,
    gallery_mean: Sequence[float] | np.ndarray,
    k: int,
) -> tuple[ScoredCandidate, ...]:
    """Normalise one probe's search results and rank them by normalised score.

    ``identity_ids``/``similarities``: the identities the search returned (ask for at least
    ``k + 1``) with their raw scores; ``gallery_mean``: those identities' top-k means, e.g.
    ``GalleryCohort.means(identity_ids)`` (nan where unknown: that side is left out). Decide
    with :func:`facesearch.scoring.decision.decide`.
    """
    raw = np.asarray(similarities, np.float64)
    if raw.ndim != 1 or len(raw) != len(identity_ids) or np.shape(gallery_mean) != raw.shape:
        raise InvalidInputError(
            "identity_ids, similarities and gallery_mean must be parallel 1-d", reason=Reason.BAD_SCORES
        )
    if len(raw) == 0:
        return ()
    z, probe_mean = normalise_candidates(raw, gallery_mean, k)
    means = np.asarray(gallery_mean, np.float64)
    scored = [
        ScoredCandidate(
            identity_ids[i],
            float(raw[i]),
            float(raw[i]),
            float(z[i]),
            finite_or_none(probe_mean[i]),
            finite_or_none(means[i]),
        )
        for i in range(len(raw))
    ]
    return rank(scored, ScoreKind.NORMALISED)


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, None where it is nan or infinite (a side that is unknown)."""
    return float(value) if np.isfinite(value) else None
