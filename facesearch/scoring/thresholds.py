"""Which decision threshold a request gets, on which score, and why.

Sources, in order:

1. the request's ``min_similarity``: raw cosine, as given;
2. the request's error rates, ``max_false_match_rate`` (FMR, per comparison) and/or
   ``max_false_positive_identification_rate`` (FPIR: a stranger wrongly matched to anyone),
   the stricter winning: :func:`facesearch.scoring.open_set_calibration.resolve_threshold` turns them
   into a threshold for the current gallery size N, on the normalised score when the gallery
   has at least the open-set calibration's smallest size (and the statistics are healthy),
   else on raw cosine with the FMR calibration (``calibration.json``, FPIR = 1 - (1 - FMR)^N);
3. the server's default: ``FACESEARCH_MAX_FPIR`` (as 2), else ``FACESEARCH_MIN_SIMILARITY``
   (as 1), else the bundle's calibrated defaults (default FPIR normalised, default FMR raw),
   else dlib's customary distance 0.6 as a cosine.

An error-rate promise the bundle cannot keep (no calibration for this gallery size) is
FAILED_PRECONDITION (NO_CALIBRATION), never a silent fallback. Every threshold says what it
stands for (FMR and FPIR at this N, when a calibration knows) and why, in words.

Raw decisions compare the best-face ``similarity``; normalised ones the ``normalised_score``;
a match needs a score at or above the value (the one rule: :mod:`facesearch.scoring.decision`,
which also holds :class:`~facesearch.scoring.decision.DecisionThreshold` and the FPIR/FMR
conversion).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from facesearch.errors import InvalidInputError, PreconditionError
from facesearch.scoring.calibration import DLIB_TOLERANCE_COSINE, Calibration
from facesearch.scoring.decision import (
    CalibratedThreshold,
    DecisionThreshold,
    ScoreKind,
    ThresholdKind,
    ThresholdScale,
    fpir_for_fmr,
)
from facesearch.scoring.open_set_calibration import OpenSetCalibration, resolve_threshold


@dataclass(frozen=True, slots=True)
class ThresholdRequest:
    min_similarity: float | None = None
    max_fmr: float | None = None
    max_fpir: float | None = None


def fmr_at(calibration: Calibration, threshold: float) -> float | None:
    """Per-comparison FMR of a raw cosine threshold (log-interpolated), None outside the measured range."""
    pts = calibration.points
    for hi, lo in itertools.pairwise(pts):
        if hi.threshold <= threshold <= lo.threshold:
            span = lo.threshold - hi.threshold
            t = 0.0 if span <= 0 else (threshold - hi.threshold) / span
            return float(math.exp(math.log(hi.fmr) + t * (math.log(lo.fmr) - math.log(hi.fmr))))
    if len(pts) == 1 and pts[0].threshold == threshold:
        return pts[0].fmr
    return None


def _rate(value: float | None, name: str, reason: str) -> float | None:
    if value is not None and (not math.isfinite(value) or not 0.0 < value < 1.0):
        raise InvalidInputError(f"{name} must be in (0, 1), got {value}", reason=reason)
    return value


class ThresholdPolicy:
    def __init__(
        self,
        raw: Calibration | None,
        open_set: OpenSetCalibration | None,
        *,
        min_similarity: float | None = None,
        max_fpir: float | None = None,
    ) -> None:
        if min_similarity is not None and max_fpir is not None:
            raise InvalidInputError(
                "set FACESEARCH_MIN_SIMILARITY or FACESEARCH_MAX_FPIR, not both", reason="BAD_CONFIG"
            )
        if max_fpir is not None and raw is None:  # small galleries decide on raw cosine: calibration.json
            raise PreconditionError(
                "FACESEARCH_MAX_FPIR needs a calibrated model bundle (calibration.json: "
                "facesearch eval calibrate --bundle ...)",
                reason="NO_CALIBRATION",
            )
        self.raw = raw
        self.open_set = open_set
        self.default_min_similarity_override = min_similarity
        self.default_max_fpir = max_fpir

    # -- the raw default (Verify, and Identify decisions on raw cosine with no rate) ----------
    @property
    def default_min_similarity(self) -> float:
        if self.default_min_similarity_override is not None:
            return self.default_min_similarity_override
        return self.raw.min_similarity if self.raw is not None else DLIB_TOLERANCE_COSINE

    @property
    def note(self) -> str:
        if self.default_max_fpir is not None:
            return f"FACESEARCH_MAX_FPIR={self.default_max_fpir:g}: FPIR held at every gallery size"
        if self.default_min_similarity_override is not None:
            return "set by FACESEARCH_MIN_SIMILARITY"
        if self.raw is not None:
            tar = next((p.tar for p in self.raw.points if p.fmr == self.raw.default_fmr), None)
            note = (
                f"calibrated on {self.raw.source}: false-match rate {self.raw.default_fmr:g} per comparison "
                f"({self.raw.impostor_pairs} impostor pairs, {self.raw.identities} identities"
                + (f", true-accept rate {tar:.3f})" if tar is not None else ")")
            )
            if self.open_set is not None:
                note += (
                    f"; galleries of {self.open_set.min_gallery}+ identities: normalised score at "
                    f"FPIR {self.open_set.default_fpir:g}"
                )
            return note
        return (
            f"uncalibrated default {DLIB_TOLERANCE_COSINE}: dlib's Euclidean tolerance 0.6 as a cosine; "
            "calibrate the bundle to state a false-match rate"
        )

    # -- Identify ------------------------------------------------------------------------
    def identify(self, req: ThresholdRequest, gallery_size: int, *, normalised: bool = True) -> DecisionThreshold:
        """The threshold of one Identify call at ``gallery_size`` identities.

        ``normalised``: whether normalised scores are available (healthy open-set statistics).
        """
        n = max(1, gallery_size)
        max_fmr = _rate(req.max_fmr, "max_false_match_rate", "BAD_FMR")
        max_fpir = _rate(req.max_fpir, "max_false_positive_identification_rate", "BAD_FPIR")
        if req.min_similarity is not None:
            if max_fmr is not None or max_fpir is not None:
                raise InvalidInputError(
                    "set min_similarity or an error rate (max_false_match_rate, "
                    "max_false_positive_identification_rate), not both",
                    reason="BAD_THRESHOLD",
                )
            return self._raw(
                ThresholdKind.MIN_SIMILARITY, _cosine(req.min_similarity), n, "min_similarity set by the request"
            )
        if max_fmr is not None or max_fpir is not None:
            kind = ThresholdKind.MAX_FPIR
            if max_fmr is not None and (max_fpir is None or fpir_for_fmr(max_fmr, n) <= max_fpir):
                kind = ThresholdKind.MAX_FMR
            return self._rates(kind, n, max_fpir=max_fpir, max_fmr=max_fmr, normalised=normalised, prefix="")
        if self.default_max_fpir is not None:
            return self._rates(
                ThresholdKind.DEFAULT,
                n,
                max_fpir=self.default_max_fpir,
                max_fmr=None,
                normalised=normalised,
                prefix="FACESEARCH_MAX_FPIR: ",
            )
        if self.default_min_similarity_override is not None:
            return self._raw(
                ThresholdKind.DEFAULT, self.default_min_similarity_override, n, "FACESEARCH_MIN_SIMILARITY"
            )
        t = resolve_threshold(self.open_set if normalised else None, self.raw, gallery_size=n)
        return _from(t, ThresholdKind.DEFAULT, "")

    def _rates(
        self,
        kind: ThresholdKind,
        n: int,
        *,
        max_fpir: float | None,
        max_fmr: float | None,
        normalised: bool,
        prefix: str,
    ) -> DecisionThreshold:
        if self.raw is None and self.open_set is None:
            raise PreconditionError(
                "the model bundle has no calibration: an error rate cannot be promised; "
                "use min_similarity, or calibrate the bundle (facesearch eval calibrate)",
                reason="NO_CALIBRATION",
            )
        t = resolve_threshold(
            self.open_set if normalised else None, self.raw, gallery_size=n, max_fpir=max_fpir, max_fmr=max_fmr
        )
        if t.kind is ThresholdScale.COSINE and t.fmr is None:
            raise PreconditionError(
                f"no false-match calibration (calibration.json) for a gallery of {n}: the "
                f"bundle's open-set calibration starts at {self._min_gallery()} identities",
                reason="NO_CALIBRATION",
            )
        return _from(t, kind, prefix)

    def _min_gallery(self) -> str:
        return str(self.open_set.min_gallery) if self.open_set is not None else "?"

    def _raw(self, kind: ThresholdKind, value: float, n: int, why: str) -> DecisionThreshold:
        fmr = fmr_at(self.raw, value) if self.raw is not None else None
        fpir = fpir_for_fmr(fmr, n) if fmr is not None else None
        stands = (
            f" (FMR {fmr:.2g}, FPIR {fpir * 100:.3g}% at gallery size {n})"
            if fmr is not None and fpir is not None
            else ""
        )
        return DecisionThreshold(
            kind, value, ScoreKind.RAW, n, fmr, fpir, False, f"{why}: cosine threshold {value:.4f}{stands}"
        )

    # -- Verify --------------------------------------------------------------------------
    def verify(self, min_similarity: float | None, max_fmr: float | None) -> DecisionThreshold:
        """1:1 decisions are on raw cosine: a given threshold, an FMR, or the raw default."""
        max_fmr = _rate(max_fmr, "max_false_match_rate", "BAD_FMR")
        if min_similarity is not None and max_fmr is not None:
            raise InvalidInputError("set min_similarity or max_false_match_rate, not both", reason="BAD_THRESHOLD")
        if min_similarity is not None:
            return self._raw(
                ThresholdKind.MIN_SIMILARITY, _cosine(min_similarity), 1, "min_similarity set by the request"
            )
        if max_fmr is not None:
            if self.raw is None:
                raise PreconditionError(
                    "the model bundle has no false-match calibration (calibration.json); use min_similarity",
                    reason="NO_CALIBRATION",
                )
            value = self.raw.threshold_for_fmr(max_fmr)
            capped = max_fmr < self.raw.min_supported_fmr
            why = f"FMR {max_fmr:.2g} -> cosine threshold {value:.4f}"
            if capped:
                why += f", capped at the calibrated FMR {self.raw.min_supported_fmr:.0e}: rate not guaranteed"
            return DecisionThreshold(ThresholdKind.MAX_FMR, value, ScoreKind.RAW, 1, max_fmr, max_fmr, capped, why)
        if self.default_min_similarity_override is None and self.raw is not None:
            fmr = self.raw.default_fmr
            return DecisionThreshold(
                ThresholdKind.DEFAULT,
                self.raw.min_similarity,
                ScoreKind.RAW,
                1,
                fmr,
                fmr,
                False,
                f"default FMR {fmr:.2g} -> cosine threshold {self.raw.min_similarity:.4f}",
            )
        why = (
            "FACESEARCH_MIN_SIMILARITY"
            if self.default_min_similarity_override is not None
            else "no calibration: dlib's customary distance 0.6"
        )
        return self._raw(ThresholdKind.DEFAULT, self.default_min_similarity, 1, why)


def _cosine(value: float) -> float:
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise InvalidInputError(f"min_similarity must be a cosine in [-1, 1], got {value}", reason="BAD_MIN_SIMILARITY")
    return float(value)


def _from(t: CalibratedThreshold, kind: ThresholdKind, prefix: str) -> DecisionThreshold:
    return DecisionThreshold(
        kind,
        float(t.score),
        t.score_kind,
        t.gallery_size,
        t.fmr,
        t.fpir,
        t.capped,
        prefix + t.reason,
    )
