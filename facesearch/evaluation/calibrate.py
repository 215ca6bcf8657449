"""Measuring decision calibrations from labelled faces: the raw-cosine FMR table
(:func:`calibrate`) and the normalised-score FPIR table by gallery size
(:func:`calibrate_open_set`). The tables themselves, their files and how a request's error
rate is turned into a threshold live in :mod:`facesearch.scoring.calibration` and
:mod:`facesearch.scoring.open_set_calibration`; this module only measures them.
"""

from __future__ import annotations

import math

import numpy as np

from facesearch.errors import InvalidInputError, Reason
from facesearch.evaluation.ident import threshold_at_fpir
from facesearch.scoring.calibration import DEFAULT_FMR, FMR_LEVELS, Calibration, CalibrationPoint
from facesearch.scoring.normalise import DEFAULT_K, gallery_topk_mean, normalise_matrix
from facesearch.scoring.open_set_calibration import (
    FPIR_LEVELS,
    MIN_EVENTS,
    NORMALISE_FROM,
    SCORE_KIND,
    FpirCurve,
    FpirPoint,
    OpenSetCalibration,
)
from facesearch.scoring.templates import DEFAULT_TEMPLATE, build_gallery, gallery_scores, identity_scores


def calibrate(
    embeddings: np.ndarray, labels: np.ndarray, *, source: str, default_fmr: float = DEFAULT_FMR, chunk: int = 2048
) -> Calibration:
    """All-pairs calibration: every cross-identity pair is an impostor comparison.

    ``embeddings`` are L2-normalised (n, d); ``labels`` one identity per row. Memory stays
    bounded: scores are accumulated into a fine histogram in chunks, never all at once.
    """
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    n = len(embeddings)
    if n < 3 or len(np.unique(labels)) < 2:
        raise InvalidInputError("calibration needs faces of at least two identities", reason=Reason.BAD_CALIBRATION)
    edges = np.linspace(-1.0, 1.0, 200_001)  # 1e-5 cosine resolution
    imp_hist = np.zeros(len(edges) - 1, np.int64)
    gen_hist = np.zeros(len(edges) - 1, np.int64)
    for start in range(0, n, chunk):
        block = embeddings[start : start + chunk] @ embeddings.T
        rows = np.arange(start, min(start + chunk, n))
        upper = np.arange(n)[None, :] > rows[:, None]  # each unordered pair once
        same = labels[rows][:, None] == labels[None, :]
        imp_hist += np.histogram(block[upper & ~same], bins=edges)[0]
        gen_hist += np.histogram(block[upper & same], bins=edges)[0]
    n_imp, n_gen = int(imp_hist.sum()), int(gen_hist.sum())
    imp_above = np.cumsum(imp_hist[::-1])[::-1]  # impostors scoring >= each bin's lower edge
    gen_above = np.cumsum(gen_hist[::-1])[::-1]
    points = []
    for fmr in FMR_LEVELS:
        if fmr * n_imp < 10:  # fewer than 10 false matches would be measured: not supported
            break
        allowed = fmr * n_imp
        idx = int(np.argmax(imp_above <= allowed))  # first bin edge with at most `allowed` above it
        threshold = float(edges[idx])
        tar = float(gen_above[idx] / n_gen) if n_gen else float("nan")
        points.append(CalibrationPoint(fmr=fmr, threshold=threshold, tar=tar))
    if not points:
        raise InvalidInputError(f"only {n_imp} impostor pairs: too few to calibrate", reason=Reason.BAD_CALIBRATION)
    provisional = Calibration(tuple(points), n_imp, n_gen, len(np.unique(labels)), source, default_fmr, 0.0)
    return Calibration(
        tuple(points),
        n_imp,
        n_gen,
        provisional.identities,
        source,
        default_fmr,
        provisional.threshold_for_fmr(default_fmr),
    )


# -- measuring -------------------------------------------------------------------------
def gallery_ladder(identities: int, start: int = 8) -> list[int]:
    """Gallery sizes to calibrate at: doubling from ``start`` up to half the identities."""
    top = identities // 2
    sizes = []
    n = start
    while n < top:
        sizes.append(n)
        n *= 2
    if top >= start:
        sizes.append(top)
    return sizes


def nonmated_top_scores(
    embeddings: np.ndarray,
    labels: np.ndarray,
    gallery_size: int,
    *,
    k: int,
    template: str,
    rng: np.random.Generator,
    min_searches: int = 20_000,
    max_repeats: int = 16,
    chunk: int = 1024,
) -> np.ndarray:
    """Best normalised score of non-mated searches against random galleries of ``gallery_size``."""
    names, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    outside_per_gallery = max(1, int(len(labels) * (1 - gallery_size / len(names))))
    repeats = int(min(max_repeats, max(1, math.ceil(min_searches / outside_per_gallery))))
    tops = []
    for _ in range(repeats):
        chosen = np.sort(rng.choice(len(names), gallery_size, replace=False))
        gallery = build_gallery(embeddings[first[chosen]], names[chosen])
        means = gallery_topk_mean(gallery_scores(gallery, template), k)
        probes = np.flatnonzero(~np.isin(inverse, chosen))
        for lo in range(0, len(probes), chunk):
            raw = identity_scores(embeddings[probes[lo : lo + chunk]], gallery, template)
            tops.append(normalise_matrix(raw, means, k).max(axis=1))
    return np.concatenate(tops) if tops else np.zeros(0)


def fpir_curve(top_scores: np.ndarray, gallery_size: int) -> FpirCurve | None:
    points = [FpirPoint(f, threshold_at_fpir(top_scores, f)) for f in FPIR_LEVELS if f * len(top_scores) >= MIN_EVENTS]
    return FpirCurve(gallery_size, len(top_scores), tuple(points)) if points else None


def calibrate_open_set(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    source: str,
    k: int = DEFAULT_K,
    template: str = DEFAULT_TEMPLATE,
    default_fpir: float = 0.01,
    seed: int = 0,
    sizes: list[int] | None = None,
    normalise_from: int = NORMALISE_FROM,
) -> OpenSetCalibration:
    """The normalised-score calibration from labelled faces (L2-normalised embeddings, one label each).

    Deterministic for a given ``seed``. Needs at least 2 * (k + 2) identities.
    """
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    identities = len(np.unique(labels))
    ladder = sizes or gallery_ladder(identities, start=max(8, k + 2))
    if not ladder or min(ladder) < k + 2:
        raise InvalidInputError(
            f"{identities} identities: calibrating with k={k} needs at least {2 * (k + 2)}",
            reason=Reason.BAD_CALIBRATION,
        )
    rng = np.random.default_rng(seed)
    curves = []
    for size in ladder:
        curve = fpir_curve(nonmated_top_scores(embeddings, labels, size, k=k, template=template, rng=rng), size)
        if curve is not None:
            curves.append(curve)
    if not curves:
        raise InvalidInputError("too few non-mated searches to calibrate", reason=Reason.BAD_CALIBRATION)
    return OpenSetCalibration(
        score=SCORE_KIND,
        k=k,
        template=template,
        identities=identities,
        source=source,
        default_fpir=default_fpir,
        normalise_from=normalise_from,
        curves=tuple(curves),
    )
