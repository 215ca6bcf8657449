"""Turning error-rate promises into similarity thresholds.

Operators can reason about "one false match in ten thousand comparisons", not about
a cosine of 0.87. A calibration is the impostor (different-person) score
distribution measured on labelled faces, stored as a table of false-match rate
(FMR, per comparison) against threshold. For identification against a gallery of
N identities, the false-positive identification rate of a stranger is
FPIR = 1 - (1 - FMR)^N (each identity is one more chance to be wrongly matched:
:func:`facesearch.scoring.decision.fmr_for_fpir` and ``fpir_for_fmr``), so the
per-comparison FMR needed for a promised FPIR shrinks as the gallery grows: the
threshold rises with N and the promise stays true. A score at or above a threshold is
a match (:func:`facesearch.scoring.decision.matches`); the table counts impostor
scores the same way.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from facesearch.errors import InvalidInputError, Reason
from facesearch.util.fs import write_atomic

#: FMR levels recorded in the table (those the impostor count supports).
FMR_LEVELS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7)
DEFAULT_FMR = 1e-4


@dataclass(frozen=True, slots=True)
class CalibrationPoint:
    fmr: float  # false-match rate per comparison at this threshold
    threshold: float  # cosine similarity; a score at or above it is a match
    tar: float  # true-accept rate of genuine (same-person) pairs at this threshold


@dataclass(frozen=True, slots=True)
class Calibration:
    points: tuple[CalibrationPoint, ...]  # decreasing FMR, increasing threshold
    impostor_pairs: int
    genuine_pairs: int
    identities: int
    source: str
    default_fmr: float
    min_similarity: float  # the threshold at default_fmr: the bundle's default decision

    def threshold_for_fmr(self, fmr: float) -> float:
        """Threshold whose measured FMR is ``fmr``, interpolated in log(FMR).

        Below the smallest FMR the data can support we do not extrapolate optimistically:
        we return the strictest measured threshold and callers report that it is capped.
        """
        if not 0 < fmr < 1:
            raise InvalidInputError(f"false-match rate must be in (0, 1), got {fmr}", reason=Reason.BAD_FMR)
        pts = self.points
        if fmr >= pts[0].fmr:
            return pts[0].threshold
        for hi, lo in itertools.pairwise(pts):
            if lo.fmr <= fmr <= hi.fmr:
                t = (math.log(hi.fmr) - math.log(fmr)) / (math.log(hi.fmr) - math.log(lo.fmr))
                return hi.threshold + t * (lo.threshold - hi.threshold)
        return pts[-1].threshold

    @property
    def min_supported_fmr(self) -> float:
        return self.points[-1].fmr

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        try:
            points = tuple(CalibrationPoint(**p) for p in data["points"])
            fields = {
                k: data[k]
                for k in ("impostor_pairs", "genuine_pairs", "identities", "source", "default_fmr", "min_similarity")
            }
        except (KeyError, TypeError) as err:
            raise InvalidInputError(f"malformed calibration: {err}", reason=Reason.BAD_CALIBRATION) from err
        if not points:
            raise InvalidInputError("calibration has no points", reason=Reason.BAD_CALIBRATION)
        return cls(points=points, **fields)

    def write(self, path: Path) -> None:
        write_atomic(path, self.to_json())


#: dlib's customary Euclidean tolerance 0.6 between raw descriptors (norms ~1), as a cosine:
#: 1 - 0.6^2 / 2. Used only when a bundle carries no calibrated threshold.
DLIB_TOLERANCE_COSINE = 0.82
