"""The 1:N identification protocol: rank-k, FNIR at FPIR, DET curve, per-group error rates.

Vocabulary (ISO/IEC 19795-1, NIST FRVT 1:N):

- a *mated* search is a probe of an enrolled person; it succeeds at threshold ``t`` when
  the person is the rank-1 candidate and the decision score matches ``t``; FNIR is the
  fraction that fail. A mated probe where no face was found fails at every threshold and
  at every rank.
- a *non-mated* search is a probe of someone not enrolled; it is a false positive when the
  rank-1 decision score matches ``t``; FPIR is the fraction that are. A non-mated probe
  with no face found (score -inf) is never a false positive: thresholds here are finite.
- FNIR at FPIR x uses the lowest threshold that at most a fraction x of the non-mated
  searches match (empirical: the threshold is set on the same non-mated searches;
  calibrated thresholds are checked separately).

"Matches" is the server's rule, :func:`facesearch.scoring.decision.matches`: a score at or
above the threshold. An empirical threshold is therefore placed just above the highest
non-mated score that must not match (the next float up), so that the searches it was chosen
on are decided by the server exactly as they are counted here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facesearch.errors import InvalidInputError, Reason
from facesearch.scoring.decision import just_above, matches

FPIR_LEVELS = (0.01, 0.001)


@dataclass(frozen=True, slots=True)
class Searches:
    """One row per search."""

    mated: np.ndarray  # (q,) bool: the probe's identity is enrolled
    mate_rank: np.ndarray  # (q,) int: 1-based rank of the mate, 0 where none (non-mated, no face)
    top_score: np.ndarray  # (q,) float64: decision score of the rank-1 candidate, -inf where no face
    group: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))  # (q,) labels, or empty

    def __post_init__(self) -> None:
        n = len(self.mated)
        if len(self.mate_rank) != n or len(self.top_score) != n or (len(self.group) not in (0, n)):
            raise InvalidInputError("search arrays must be parallel", reason=Reason.BAD_SEARCHES)

    @property
    def hit(self) -> np.ndarray:
        return self.mated & (self.mate_rank == 1)


def searches_from_scores(
    scores: np.ndarray,
    mate_column: np.ndarray,
    found: np.ndarray | None = None,
    group: Sequence[str] | np.ndarray | None = None,
) -> Searches:
    """Searches from a full score matrix (q, L) of probes against gallery identities.

    ``mate_column``: the gallery column of each probe's identity, -1 for non-mated probes.
    ``found``: False where no face was found in the probe (its row of ``scores`` is ignored).
    The mate's rank counts the identities scoring strictly higher (ties favour the mate).
    """
    s = np.asarray(scores, np.float64)
    mate_column = np.asarray(mate_column, np.int64)
    q = len(s)
    found = np.ones(q, bool) if found is None else np.asarray(found, bool)
    mated = mate_column >= 0
    top = np.where(found, s.max(axis=1) if s.shape[1] else -np.inf, -np.inf)
    rank = np.zeros(q, np.int64)
    rows = np.flatnonzero(mated & found)
    if len(rows):
        mate_scores = s[rows, mate_column[rows]]
        rank[rows] = 1 + (s[rows] > mate_scores[:, None]).sum(axis=1)
    labels = np.asarray(group, dtype=str) if group is not None else np.zeros(0, dtype=str)
    return Searches(mated=mated, mate_rank=rank, top_score=top, group=labels)


def threshold_at_fpir(nonmated_top: np.ndarray, fpir: float) -> float:
    """The lowest threshold that at most a fraction ``fpir`` of non-mated searches match.

    That is the next float above the highest non-mated score that must not match, so every
    search scoring at or below it is rejected; always finite (faceless searches never match).
    """
    scores = np.sort(np.asarray(nonmated_top, np.float64))[::-1]
    if len(scores) == 0:
        raise InvalidInputError("no non-mated searches: FPIR cannot be measured", reason=Reason.NO_NONMATED)
    allowed = math.floor(fpir * len(scores))
    return just_above(float(scores[allowed]) if allowed < len(scores) else -np.inf)


def fnir_at(searches: Searches, threshold: float) -> float:
    m = searches.mated
    if not m.any():
        return float("nan")
    return float(1.0 - np.mean(searches.hit[m] & matches(searches.top_score[m], threshold)))


def fpir_at(searches: Searches, threshold: float) -> float:
    n = ~searches.mated
    return float(np.mean(matches(searches.top_score[n], threshold))) if n.any() else float("nan")


def rank_rate(searches: Searches, rank: int) -> float:
    m = searches.mated
    r = searches.mate_rank[m]
    return float(np.mean((r >= 1) & (r <= rank))) if m.any() else float("nan")


def det_curve(searches: Searches, points: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FPIR, FNIR): one point per distinct non-mated score, thinned to ``points``.

    Each point's threshold is just above its non-mated score (``decision.just_above``): the
    operating point where that score and every lower one are rejected.
    """
    nonmated = np.sort(searches.top_score[~searches.mated & np.isfinite(searches.top_score)])[::-1]
    if len(nonmated) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    thresholds = np.unique(nonmated)[::-1]
    if len(thresholds) > points:
        thresholds = thresholds[np.unique(np.geomspace(1, len(thresholds), points).astype(int) - 1)]
    thresholds = np.array([just_above(float(t)) for t in thresholds])
    fpir = np.array([fpir_at(searches, t) for t in thresholds])
    fnir = np.array([fnir_at(searches, t) for t in thresholds])
    return thresholds, fpir, fnir


def wilson_interval(events: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate."""
    if trials == 0:
        return float("nan"), float("nan")
    p = events / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class GroupRates:
    group: str
    mated: int
    nonmated: int
    fnir: float
    fpir: float


def group_rates(searches: Searches, threshold: float) -> tuple[GroupRates, ...]:
    """Per-group FNIR (over the group's mated searches) and FPIR (its non-mated ones) at one threshold."""
    if len(searches.group) == 0:
        return ()
    out = []
    for label in np.unique(searches.group):
        sel = searches.group == label
        sub = Searches(searches.mated[sel], searches.mate_rank[sel], searches.top_score[sel])
        out.append(
            GroupRates(
                str(label),
                int(sub.mated.sum()),
                int((~sub.mated).sum()),
                fnir_at(sub, threshold),
                fpir_at(sub, threshold),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class IdentReport:
    scoring: str
    gallery_size: int
    mated: int
    nonmated: int
    mated_without_face: int
    nonmated_without_face: int
    rank1: float
    rank5: float
    thresholds_at_fpir: dict[str, float]
    fnir_at_fpir: dict[str, float]
    det: dict[str, list[float]]
    groups: tuple[GroupRates, ...] = ()
    group_threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "groups"}
        out["groups"] = [{f: getattr(g, f) for f in g.__dataclass_fields__} for g in self.groups]
        return out


def evaluate(
    searches: Searches,
    *,
    scoring: str,
    gallery_size: int,
    found: np.ndarray | None = None,
    fpir_levels: Sequence[float] = FPIR_LEVELS,
    group_threshold: float | None = None,
) -> IdentReport:
    """The identification report of one scoring of the same searches.

    ``group_threshold``: the one threshold for the per-group table (default: the threshold
    at the first FPIR level).
    """
    nonmated_top = searches.top_score[~searches.mated]
    thresholds = {f"{f:g}": threshold_at_fpir(nonmated_top, f) for f in fpir_levels}
    fnir = {key: fnir_at(searches, t) for key, t in thresholds.items()}
    t_det, fpir_curve, fnir_curve = det_curve(searches)
    no_face = ~np.isfinite(searches.top_score) if found is None else ~np.asarray(found, bool)
    gt = group_threshold if group_threshold is not None else thresholds[f"{fpir_levels[0]:g}"]
    return IdentReport(
        scoring=scoring,
        gallery_size=gallery_size,
        mated=int(searches.mated.sum()),
        nonmated=int((~searches.mated).sum()),
        mated_without_face=int((no_face & searches.mated).sum()),
        nonmated_without_face=int((no_face & ~searches.mated).sum()),
        rank1=rank_rate(searches, 1),
        rank5=rank_rate(searches, 5),
        thresholds_at_fpir=thresholds,
        fnir_at_fpir=fnir,
        det={"threshold": t_det.tolist(), "fpir": fpir_curve.tolist(), "fnir": fnir_curve.tolist()},
        groups=group_rates(searches, gt),
        group_threshold=gt if len(searches.group) else None,
    )
