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
   (as 1), else the bundle's promise: the open-set calibration's default FPIR, held at every
   gallery size (normalised score within its range, raw cosine at FMR = 1 - (1 - FPIR)^(1/N)
   below it); with only ``calibration.json``, its default FMR per comparison; with no
   calibration, dlib's customary distance 0.6 as a cosine.

:attr:`ThresholdPolicy.default_fpir` is that FPIR where the default holds one at every size
(GetStats' ``default_fpir``), and :attr:`ThresholdPolicy.note` says the promise in words
(GetStats' ``threshold_note``, logged at startup). Verify is 1:1: the raw default FMR.

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

from facesearch.errors import InvalidInputError, PreconditionError, Reason
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


def _rate(value: float | None, name: str, reason: Reason) -> float | None:
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
                "set FACESEARCH_MIN_SIMILARITY or FACESEARCH_MAX_FPIR, not both", reason=Reason.BAD_CONFIG
            )
        if max_fpir is not None and raw is None:  # small galleries decide on raw cosine: calibration.json
            raise PreconditionError(
                "FACESEARCH_MAX_FPIR needs a calibrated model bundle (calibration.json: "
                "facesearch eval calibrate --bundle ...)",
                reason=Reason.NO_CALIBRATION,
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
    def default_fpir(self) -> float | None:
        """The FPIR the default Identify decision holds at every gallery size; None where it holds none.

        ``FACESEARCH_MAX_FPIR``, else the open-set calibration's default FPIR when ``calibration.json``
        covers the galleries below its range. None under ``FACESEARCH_MIN_SIMILARITY`` (a fixed
        cosine), with only ``calibration.json`` (a fixed FMR per comparison: FPIR grows with N), with
        only the open-set calibration (small galleries uncalibrated) and with no calibration.
        """
        if self.default_min_similarity_override is not None:
            return None
        if self.default_max_fpir is not None:
            return self.default_max_fpir
        if self.open_set is not None and self.raw is not None:
            return self.open_set.default_fpir
        return None

    @property
    def note(self) -> str:
        """What the default decisions promise, in words (GetStats' ``threshold_note``)."""
        if self.default_min_similarity_override is not None:
            return (
                f"FACESEARCH_MIN_SIMILARITY={self.default_min_similarity_override:g}: Identify and Verify at a "
                "fixed cosine; a stranger's FPIR grows with the gallery (each reply's threshold says it at its size)"
            )
        fpir = self.default_fpir
        if fpir is not None and self.raw is not None:
            source = (
                "FACESEARCH_MAX_FPIR"
                if self.default_max_fpir is not None or self.open_set is None
                else f"the bundle's default, open-set calibration on {self.open_set.source}"
            )
            return (
                f"Identify: FPIR {fpir:g} at every gallery size ({source}): {self._fpir_scales(fpir, self.raw)}; "
                + (f"Verify: {self._raw_note(self.raw)}")
            )
        if self.raw is not None:
            return (
                f"Identify and Verify: {self._raw_note(self.raw)} at every gallery size; no open-set calibration, "
                "so a stranger's FPIR grows with the gallery, 1 - (1 - FMR)^N"
            )
        uncalibrated = f"dlib's Euclidean tolerance 0.6 as a cosine ({DLIB_TOLERANCE_COSINE})"
        if self.open_set is not None:
            return (
                f"Identify: FPIR {self.open_set.default_fpir:g} on galleries of {self.open_set.min_gallery}+ "
                f"identities (normalised score, open-set calibration on {self.open_set.source}); smaller "
                f"galleries and Verify: uncalibrated, {uncalibrated} (no calibration.json)"
            )
        return f"uncalibrated default: {uncalibrated}; calibrate the bundle to state an error rate"

    def _fpir_scales(self, fpir: float, raw: Calibration) -> str:
        """Which score holds ``fpir`` at which gallery sizes, and where the raw table runs out."""
        # the largest N whose per-comparison FMR, 1 - (1 - fpir)^(1/N), calibration.json measured
        guaranteed = math.floor(math.log1p(-fpir) / math.log1p(-raw.min_supported_fmr))
        if self.open_set is None:
            out = "raw cosine at FMR 1 - (1 - FPIR)^(1/N) (calibration.json)"
            return out + f"; rate not guaranteed above {guaranteed} identities"
        out = (
            f"normalised score (k={self.open_set.k}) from {self.open_set.min_gallery} identities, raw cosine at "
            f"FMR 1 - (1 - FPIR)^(1/N) below (calibration.json)"
        )
        if guaranteed < self.open_set.min_gallery - 1:
            out += f"; rate not guaranteed on raw cosine above {guaranteed} identities"
        return out

    @staticmethod
    def _raw_note(raw: Calibration) -> str:
        tar = next((p.tar for p in raw.points if p.fmr == raw.default_fmr), None)
        return (
            f"false-match rate {raw.default_fmr:g} per comparison (calibrated on {raw.source}: "
            f"{raw.impostor_pairs} impostor pairs, {raw.identities} identities"
            + (f", true-accept rate {tar:.3f})" if tar is not None else ")")
        )

    # -- Identify ------------------------------------------------------------------------
    def identify(self, req: ThresholdRequest, gallery_size: int, *, normalised: bool = True) -> DecisionThreshold:
        """The threshold of one Identify call at ``gallery_size`` identities.

        ``normalised``: whether normalised scores are available (healthy open-set statistics).
        """
        n = max(1, gallery_size)
        max_fmr = _rate(req.max_fmr, "max_false_match_rate", Reason.BAD_FMR)
        max_fpir = _rate(req.max_fpir, "max_false_positive_identification_rate", Reason.BAD_FPIR)
        if req.min_similarity is not None:
            if max_fmr is not None or max_fpir is not None:
                raise InvalidInputError(
                    "set min_similarity or an error rate (max_false_match_rate, "
                    "max_false_positive_identification_rate), not both",
                    reason=Reason.BAD_THRESHOLD,
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
        t = resolve_threshold(self.open_set, self.raw, gallery_size=n, normalised=normalised)
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
                reason=Reason.NO_CALIBRATION,
            )
        t = resolve_threshold(
            self.open_set, self.raw, gallery_size=n, max_fpir=max_fpir, max_fmr=max_fmr, normalised=normalised
        )
        if t.kind is ThresholdScale.COSINE and t.fmr is None:
            why = (
                f"the bundle's open-set calibration starts at {self.open_set.min_gallery} identities"
                if self.open_set is not None and n < self.open_set.min_gallery
                else "normalised scores are unavailable"
            )
            raise PreconditionError(
                f"no false-match calibration (calibration.json) for a gallery of {n}: {why}",
                reason=Reason.NO_CALIBRATION,
            )
        return _from(t, kind, prefix)

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
        max_fmr = _rate(max_fmr, "max_false_match_rate", Reason.BAD_FMR)
        if min_similarity is not None and max_fmr is not None:
            raise InvalidInputError("set min_similarity or max_false_match_rate, not both", reason=Reason.BAD_THRESHOLD)
        if min_similarity is not None:
            return self._raw(
                ThresholdKind.MIN_SIMILARITY, _cosine(min_similarity), 1, "min_similarity set by the request"
            )
        if max_fmr is not None:
            if self.raw is None:
                raise PreconditionError(
                    "the model bundle has no false-match calibration (calibration.json); use min_similarity",
                    reason=Reason.NO_CALIBRATION,
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
        raise InvalidInputError(
            f"min_similarity must be a cosine in [-1, 1], got {value}", reason=Reason.BAD_MIN_SIMILARITY
        )
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
