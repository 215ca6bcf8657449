"""Calibration of the normalised score, and turning error-rate promises into thresholds.

The decision thresholds the normalised score, so its calibration is measured on that
score; the raw cosine table of ``calibration.json`` does not apply to it. And because the
normalised score is relative to the gallery (it is a margin over each face's nearest
competitors), the false-positive identification rate at a fixed threshold depends on the
gallery size N in its own way: measured on lfw-dev it *falls* as N grows (the top
competitors crowd closer), where a raw cosine's FPIR rises roughly like 1 - (1 - FMR)^N.
So the calibration measures FPIR directly, as a function of the threshold, at a ladder of
gallery sizes:

- gallery: one face (the first) of each of a random subset of N labelled identities;
- non-mated searches: every face of every identity outside the subset, normalised with
  the subset as cohort exactly as the server does; FPIR(t, N) is the fraction whose best
  normalised score matches t (is at or above it: :func:`facesearch.scoring.decision.matches`);
- N doubles from 8 up to half the identities, each size resampled until about 20,000
  searches are pooled (at most 16 galleries per size). An FPIR level is kept only where
  at least 10 false positives were observed.

The calibration gallery holds one face per identity; with the ``both`` template rule and
one face, the identity score is the plain cosine.

Below :data:`NORMALISE_FROM` identities the decision falls back to raw cosine and the
bundle's FMR calibration (measured: the normalised score only wins from ~150 identities).

**One promise at every gallery size.** The default decision holds the open-set calibration's
``default_fpir`` whatever the gallery size N: on the normalised score within its range, and on raw
cosine below it (or wherever normalised scores are unavailable) at the per-comparison
FMR = 1 - (1 - FPIR)^(1/N) (:func:`facesearch.scoring.decision.fmr_for_fpir`) read off
``calibration.json``, so a 3-identity gallery is not held to a stricter rate than a 1,000-identity
one. Where that FMR is below what ``calibration.json`` measured, its strictest threshold is used
and the reason says the rate is not guaranteed. A bundle with only ``calibration.json`` holds its
``default_fmr`` per comparison at every size (its FPIR, 1 - (1 - FMR)^N, grows with N: there is
no FPIR default to hold); one with no calibration uses dlib's customary distance 0.6.

A request's FPIR at the current gallery size is read off the table, interpolated in log
FPIR and in log N. Above the largest calibrated size the threshold of the largest size is
kept: FPIR at a fixed threshold only falls as N grows, so the promise still holds
(conservatively), and the reason says so. A per-comparison ``max_fmr`` is turned into the
FPIR it implies at N, 1 - (1 - FMR)^N (:func:`facesearch.scoring.decision.fpir_for_fmr`).
The table is stored as ``open_set_calibration.json`` beside the models with the ``k`` and
template rule it was measured with.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from facesearch.errors import BundleError, InvalidInputError, Reason
from facesearch.scoring.calibration import DLIB_TOLERANCE_COSINE, Calibration
from facesearch.scoring.decision import CalibratedThreshold, ThresholdScale, fmr_for_fpir, fpir_for_fmr
from facesearch.util.fs import write_atomic

OPEN_SET_CALIBRATION_FILE = "open_set_calibration.json"
SCORE_KIND = "margin-v1"
FPIR_LEVELS = (3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
MIN_EVENTS = 10
#: Smallest gallery the normalised decision is used for. Measured on lfw-dev (FNIR at FPIR 1%,
#: bench/results/open_set.md): below ~120 identities the top-k cohort is too thin and raw
#: cosine with the FMR calibration decides better; from ~150 up the normalised score wins.
NORMALISE_FROM = 128


@dataclass(frozen=True, slots=True)
class FpirPoint:
    fpir: float
    threshold: float  # normalised score; a score at or above it is a match


@dataclass(frozen=True, slots=True)
class FpirCurve:
    gallery_size: int
    searches: int  # non-mated searches pooled at this size
    points: tuple[FpirPoint, ...]  # decreasing FPIR, increasing threshold

    def threshold_for(self, fpir: float) -> tuple[float, bool]:
        """Threshold at ``fpir`` (interpolated in log FPIR) and whether it was capped."""
        pts = self.points
        if fpir >= pts[0].fpir:
            return pts[0].threshold, False
        for hi, lo in itertools.pairwise(pts):
            if lo.fpir <= fpir <= hi.fpir:
                t = (math.log(hi.fpir) - math.log(fpir)) / (math.log(hi.fpir) - math.log(lo.fpir))
                return hi.threshold + t * (lo.threshold - hi.threshold), False
        return pts[-1].threshold, True


@dataclass(frozen=True, slots=True)
class OpenSetCalibration:
    score: str  # SCORE_KIND
    k: int  # cohort size the scores were normalised with
    template: str  # template rule of identity scores
    identities: int
    source: str
    default_fpir: float
    normalise_from: int  # smallest gallery the normalised decision is used for
    curves: tuple[FpirCurve, ...]  # increasing gallery size

    @property
    def min_gallery(self) -> int:
        """Smallest gallery size this calibration decides for (smaller ones use raw cosine)."""
        return max(self.curves[0].gallery_size, self.normalise_from)

    @property
    def max_gallery(self) -> int:
        return self.curves[-1].gallery_size

    def threshold_for(self, fpir: float, gallery_size: int) -> tuple[float, bool, str]:
        """(threshold, capped, note) for ``fpir`` at ``gallery_size`` (>= :attr:`min_gallery`)."""
        if not 0 < fpir < 1:
            raise InvalidInputError(f"FPIR must be in (0, 1), got {fpir}", reason=Reason.BAD_FPIR)
        if gallery_size < self.curves[0].gallery_size:
            raise InvalidInputError(
                f"gallery size {gallery_size} is below the calibrated {self.curves[0].gallery_size}",
                reason=Reason.GALLERY_TOO_SMALL,
            )
        if gallery_size >= self.max_gallery:
            value, capped = self.curves[-1].threshold_for(fpir)
            note = (
                ""
                if gallery_size == self.max_gallery
                else (
                    f"held at the largest calibrated gallery ({self.max_gallery}): conservative, FPIR at a fixed "
                    "normalised threshold falls as the gallery grows"
                )
            )
            return value, capped, note
        for lo, hi in itertools.pairwise(self.curves):
            if lo.gallery_size <= gallery_size <= hi.gallery_size:
                t_lo, c_lo = lo.threshold_for(fpir)
                t_hi, c_hi = hi.threshold_for(fpir)
                w = math.log(gallery_size / lo.gallery_size) / math.log(hi.gallery_size / lo.gallery_size)
                return t_lo + w * (t_hi - t_lo), c_lo or c_hi, ""
        raise AssertionError("unreachable: curves are sorted by gallery size")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenSetCalibration:
        try:
            curves = tuple(
                FpirCurve(int(c["gallery_size"]), int(c["searches"]), tuple(FpirPoint(**p) for p in c["points"]))
                for c in data["curves"]
            )
            cal = cls(
                score=str(data["score"]),
                k=int(data["k"]),
                template=str(data["template"]),
                identities=int(data["identities"]),
                source=str(data["source"]),
                default_fpir=float(data["default_fpir"]),
                normalise_from=int(data["normalise_from"]),
                curves=curves,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInputError(f"malformed open-set calibration: {err}", reason=Reason.BAD_CALIBRATION) from err
        if not curves or any(not c.points for c in curves):
            raise InvalidInputError("open-set calibration has an empty curve", reason=Reason.BAD_CALIBRATION)
        return cal

    def write(self, path: Path) -> None:
        write_atomic(path, self.to_json())


def load_open_set_calibration(bundle_root: Path) -> OpenSetCalibration | None:
    """The bundle's ``open_set_calibration.json``, or None when it has none."""
    path = Path(bundle_root) / OPEN_SET_CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise InvalidInputError("not a JSON object", reason=Reason.BAD_CALIBRATION)
        cal = OpenSetCalibration.from_dict(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, InvalidInputError) as err:
        raise BundleError(f"{path}: unreadable open-set calibration: {err}") from err
    if cal.score != SCORE_KIND:
        raise BundleError(
            f"{path}: score kind {cal.score!r}, this facesearch reads {SCORE_KIND!r} "
            "(recalibrate with `facesearch eval calibrate`)"
        )
    return cal


# -- applying --------------------------------------------------------------------------
def _pct(rate: float) -> str:
    return f"{rate * 100:.3g}%"


def resolve_threshold(
    calibration: OpenSetCalibration | None,
    raw: Calibration | None,
    *,
    gallery_size: int,
    max_fpir: float | None = None,
    max_fmr: float | None = None,
    normalised: bool = True,
) -> CalibratedThreshold:
    """The threshold for one request, and the reason, from the error rates it asks for.

    With both ``max_fpir`` and ``max_fmr`` the stricter wins; with neither, the open-set
    calibration's default FPIR at every gallery size (or, with no open-set calibration, the raw
    calibration's default FMR per comparison). The normalised score is used when an open-set
    calibration exists, ``normalised`` scores are available and the gallery is at least its
    smallest calibrated size; otherwise the raw cosine calibration (FMR per comparison, with
    FPIR = 1 - (1 - FMR)^N), otherwise dlib's customary 0.6 distance.
    """
    n = max(1, gallery_size)
    wanted: list[tuple[float, str]] = []  # (FPIR at this N, how it was asked for)
    if max_fpir is not None:
        if not 0 < max_fpir < 1:
            raise InvalidInputError(f"FPIR must be in (0, 1), got {max_fpir}", reason=Reason.BAD_FPIR)
        wanted.append((max_fpir, f"FPIR {_pct(max_fpir)} at gallery size {n}"))
    if max_fmr is not None:
        if not 0 < max_fmr < 1:
            raise InvalidInputError(f"false-match rate must be in (0, 1), got {max_fmr}", reason=Reason.BAD_FMR)
        implied = fpir_for_fmr(max_fmr, n)
        wanted.append((implied, f"FMR {max_fmr:.2g} at gallery size {n} -> FPIR {_pct(implied)}"))
    if not wanted and calibration is not None:  # the default: one FPIR at every gallery size
        wanted.append((calibration.default_fpir, f"default FPIR {_pct(calibration.default_fpir)} at gallery size {n}"))
    if calibration is not None and normalised and n >= calibration.min_gallery:
        fpir, why = min(wanted)
        fpir = min(fpir, 1 - 1e-12)
        value, capped, note = calibration.threshold_for(fpir, n)
        where = f"normalised threshold {value:.4f} (k={calibration.k})"
        if capped:
            lowest = min(p.fpir for c in calibration.curves for p in c.points)
            where += f", capped: the calibration measured FPIR down to about {_pct(lowest)}; rate not guaranteed"
        if note:
            where += f"; {note}"
        return CalibratedThreshold(
            score=value,
            kind=ThresholdScale.NORMALISED,
            fpir=fpir,
            fmr=fmr_for_fpir(fpir, n),
            gallery_size=n,
            capped=capped,
            reason=f"{why} -> {where}",
        )
    small = (
        f" (gallery below the normalised calibration's {calibration.min_gallery})"
        if calibration is not None and n < calibration.min_gallery
        else ""
    )
    if raw is None:
        return CalibratedThreshold(
            score=DLIB_TOLERANCE_COSINE,
            kind=ThresholdScale.COSINE,
            fpir=None,
            fmr=None,
            gallery_size=n,
            capped=False,
            reason=f"no calibration{small}: dlib's customary distance 0.6 (cosine {DLIB_TOLERANCE_COSINE})",
        )
    if wanted:
        fpir, why = min(wanted)
        fmr = fmr_for_fpir(min(fpir, 1 - 1e-12), n)
        why += f" -> FMR {fmr:.2g}"
    else:
        fmr, why = raw.default_fmr, f"default FMR {raw.default_fmr:.2g} per comparison"
        fpir = fpir_for_fmr(fmr, n)
    value = raw.threshold_for_fmr(fmr)
    capped = fmr < raw.min_supported_fmr
    where = f"cosine threshold {value:.4f}{small}"
    if capped:
        where += f", capped at the calibrated FMR {raw.min_supported_fmr:.0e}: rate not guaranteed"
    return CalibratedThreshold(
        score=value,
        kind=ThresholdScale.COSINE,
        fpir=fpir,
        fmr=fmr,
        gallery_size=n,
        capped=capped,
        reason=f"{why} -> {where}",
    )
