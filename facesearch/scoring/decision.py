"""The one decision rule: when a score is a match, which candidate is the answer, and what an
error rate means at a gallery size. The server and the evaluation code both decide through it.

**The comparison.** A score matches a threshold when it is *at or above* it::

    score >= threshold                                            (matches)

This is the rule the server has always applied (Identify's match, Verify's SAME; the proto says
"similarity >= min_similarity"). The evaluation code counts false positives and misses with the
same comparison, and its empirical thresholds (``facesearch.evaluation.ident.threshold_at_fpir``,
the calibration tables measured from it) are chosen for it: the lowest threshold that at most the
allowed fraction of non-mated searches match, i.e. :func:`just_above` the highest non-mated
score that must not.

**Scores** (:class:`ScoreKind`, the names on the wire, in GetStats and in the CLI's JSON):

- ``raw``: cosine similarity with the identity's most similar face (``Candidate.similarity``);
- ``normalised``: the identity's template score minus the mean of its and the probe's nearest
  competitors (:mod:`facesearch.scoring.normalise`). Where a candidate has none (the gallery's
  statistics are unavailable) its raw similarity stands in.

**Thresholds.** :class:`DecisionThreshold` is what one request is decided with: its value, the
score it applies to, where it came from (:class:`ThresholdKind`) and what it stands for.
:class:`CalibratedThreshold` is what a calibration gives for an error rate
(:func:`facesearch.scoring.open_set_calibration.resolve_threshold`); it names its scale with
:class:`ThresholdScale`, whose raw member is ``"cosine"``: the name ``facesearch eval ident``
has always written into its report (``calibrated[].kind``), kept for that file.

**A request** (:func:`decide`): candidates are ranked best first by the score the threshold is on
(ties: raw similarity, then identity id), and the best is the match when its score matches;
otherwise the answer is "unknown". **Verify** (:func:`verify_decision`): ``SAME`` when the
similarity matches, else ``DIFFERENT``.

**Error rates.** FMR is a per-comparison false-match rate; FPIR the rate at which a stranger's
search against N identities returns any match. Treating the N comparisons as independent,
``FPIR = 1 - (1 - FMR)^N``: :func:`fpir_for_fmr` and :func:`fmr_for_fpir` compute it both ways
through ``expm1``/``log1p``, accurate for the tiny rates that matter. A gallery size below 1 counts
as 1 (Verify: one comparison).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, overload

import numpy as np

from facesearch.errors import InvalidInputError, Reason


class ScoreKind(StrEnum):
    """The score a threshold applies to."""

    RAW = "raw"  # best-face cosine similarity
    NORMALISED = "normalised"  # the open-set normalised score


class ThresholdKind(StrEnum):
    """Where a request's threshold came from."""

    MIN_SIMILARITY = "min_similarity"  # the request's min_similarity (raw cosine)
    MAX_FMR = "max_fmr"  # the request's per-comparison false-match rate
    MAX_FPIR = "max_fpir"  # the request's false-positive identification rate
    DEFAULT = "default"  # the request named none: the server's default


class ThresholdScale(StrEnum):
    """The scale of a calibrated threshold, as resolve_threshold and eval ident's report.json name it."""

    COSINE = "cosine"  # raw cosine: ScoreKind.RAW
    NORMALISED = "normalised"

    @property
    def score_kind(self) -> ScoreKind:
        return _SCORE_KIND_OF_SCALE[self]


_SCORE_KIND_OF_SCALE = {ThresholdScale.COSINE: ScoreKind.RAW, ThresholdScale.NORMALISED: ScoreKind.NORMALISED}


class VerifyDecision(StrEnum):
    """The outcome of a 1:1 comparison."""

    SAME = "SAME"  # the similarity matches the threshold
    DIFFERENT = "DIFFERENT"
    NO_FACE_IN_IMAGE = "NO_FACE_IN_IMAGE"  # nothing to compare: no face in the probe photo
    NO_FACE_IN_REFERENCE = "NO_FACE_IN_REFERENCE"  # nor in the reference (photo or identity)


# -- the comparison ----------------------------------------------------------------------
@overload
def matches(score: float, threshold: float) -> bool: ...
@overload
def matches(score: np.ndarray, threshold: float) -> np.ndarray: ...
def matches(score: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """Whether a score (or each of an array of scores) is a match: at or above ``threshold``."""
    return score >= threshold


def just_above(score: float) -> float:
    """The lowest threshold that ``score`` does not match (the next float64 up).

    Where a threshold must reject a score and everything below it (an empirical threshold at
    an error rate, a DET operating point), this is the threshold that does so and no more.
    """
    return float(np.nextafter(score, np.inf))


# -- error rates ---------------------------------------------------------------------------
def fpir_for_fmr(fmr: float, gallery_size: int) -> float:
    """The FPIR a per-comparison ``fmr`` amounts to against ``gallery_size`` identities: 1 - (1 - fmr)^N."""
    if not 0.0 <= fmr <= 1.0:
        raise InvalidInputError(f"false-match rate must be in [0, 1], got {fmr}", reason=Reason.BAD_FMR)
    if fmr == 1.0:
        return 1.0
    # numpy here, math below: each direction bit-identical with the numbers earlier versions reported
    return float(-np.expm1(max(1, gallery_size) * np.log1p(-fmr)))


def fmr_for_fpir(fpir: float, gallery_size: int) -> float:
    """Per-comparison FMR that keeps a stranger's FPIR at ``fpir`` over ``gallery_size`` identities."""
    if not 0 < fpir < 1:
        raise InvalidInputError(f"FPIR must be in (0, 1), got {fpir}", reason=Reason.BAD_FPIR)
    return float(-math.expm1(math.log1p(-fpir) / max(1, gallery_size)))  # 1 - (1 - fpir)^(1/n)


# -- thresholds ----------------------------------------------------------------------------
class AppliedThreshold(Protocol):
    """What deciding needs of a threshold: its value and the score it applies to."""

    @property
    def value(self) -> float: ...

    @property
    def score_kind(self) -> ScoreKind: ...


@dataclass(frozen=True, slots=True)
class DecisionThreshold:
    """The threshold one request is decided with, and what it stands for."""

    kind: ThresholdKind
    value: float  # a decision score matches when >= value
    score_kind: ScoreKind
    gallery_size: int  # identities searched (1 for Verify)
    fmr: float | None  # per-comparison false-match rate it stands for (None: unknown, uncalibrated)
    fpir: float | None  # false-positive identification rate it stands for at gallery_size
    capped: bool  # the rate asked for is below what the calibration measured: strictest threshold used
    reason: str


@dataclass(frozen=True, slots=True)
class CalibratedThreshold:
    """The threshold a calibration gives for an error rate at a gallery size, and why."""

    score: float  # a score matches when >= it
    kind: ThresholdScale
    fpir: float | None  # false-positive identification rate it stands for at this gallery size
    fmr: float | None  # the per-comparison false-match rate equivalent, 1 - (1 - fpir)^(1/N)
    gallery_size: int
    capped: bool  # the request asked for less than the calibration measured: strictest threshold used
    reason: str

    @property
    def value(self) -> float:
        return self.score

    @property
    def score_kind(self) -> ScoreKind:
        return ThresholdScale(self.kind).score_kind


# -- candidates and decisions -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    """An identity a search returned for one probe, with every score the decision may use."""

    identity_id: str
    similarity: float  # raw: cosine with the identity's most similar face
    identity_similarity: float  # the identity's score under the template rule
    normalised: float | None  # identity_similarity - (probe_mean + identity_mean) / 2; None: unavailable
    probe_mean: float | None = None  # the probe's mean over its top-k other candidates
    identity_mean: float | None = None  # the identity's cohort mean
    name: str = ""  # display name, where the search knows it
    face_id: str = ""  # the identity's most similar face, where the search knows it

    @property
    def score(self) -> float:
        """The open-set score: normalised, or the raw similarity where there is none."""
        return self.normalised if self.normalised is not None else self.similarity

    def decision_score(self, kind: ScoreKind) -> float:
        """The score a threshold on ``kind`` applies to."""
        return self.score if kind is ScoreKind.NORMALISED else self.similarity


@dataclass(frozen=True, slots=True)
class Decision:
    candidates: tuple[ScoredCandidate, ...]  # best first by the score the threshold is on
    match: ScoredCandidate | None  # the best candidate if its score matches, else None: "unknown"
    threshold: AppliedThreshold


def rank(candidates: Sequence[ScoredCandidate], kind: ScoreKind) -> tuple[ScoredCandidate, ...]:
    """Best first by the ``kind`` score, then raw similarity, then identity id (stable for equal scores)."""
    return tuple(sorted(candidates, key=lambda c: (-c.decision_score(kind), -c.similarity, c.identity_id)))


def decide(candidates: Sequence[ScoredCandidate], threshold: AppliedThreshold, *, limit: int | None = None) -> Decision:
    """Rank ``candidates`` by the score ``threshold`` is on (keeping the best ``limit``) and pick the match."""
    ranked = rank(candidates, threshold.score_kind)[:limit]
    best = ranked[0] if ranked else None
    match = best if best is not None and matches(best.decision_score(threshold.score_kind), threshold.value) else None
    return Decision(candidates=ranked, match=match, threshold=threshold)


def verify_decision(similarity: float, threshold: AppliedThreshold) -> VerifyDecision:
    """SAME when the compared faces' ``similarity`` matches ``threshold``, else DIFFERENT."""
    return VerifyDecision.SAME if matches(similarity, threshold.value) else VerifyDecision.DIFFERENT
