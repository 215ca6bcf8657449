"""Thresholds from a promised false-positive identification rate grow with the gallery."""

from __future__ import annotations

import pytest

from facesearch.calibration import Calibration, CalibrationPoint
from facesearch.errors import InvalidInputError, PreconditionError
from server.service import Thresholds


def calibration() -> Calibration:
    points = tuple(CalibrationPoint(fmr=f, threshold=t, tar=0.9) for f, t in
                   [(1e-1, 0.80), (1e-2, 0.85), (1e-3, 0.88), (1e-4, 0.90), (1e-5, 0.92), (1e-6, 0.94)])
    return Calibration(points, 10**7, 1000, 500, "test", 1e-4, 0.90)


def test_threshold_rises_with_gallery_size() -> None:
    t = Thresholds(0.9, "calibrated", 50, 25, calibration())
    small, large = t.for_fpir(0.01, 1), t.for_fpir(0.01, 10_000)
    assert small == pytest.approx(0.85)  # one identity: FMR = FPIR
    assert large > small  # 10k chances to be wrongly matched: stricter
    assert large == pytest.approx(0.94, abs=1e-3)  # FMR ~1.005e-6 at N=10k, FPIR 1%


def test_needs_calibration_and_a_rate() -> None:
    with pytest.raises(PreconditionError) as err:
        Thresholds(0.82, "uncalibrated", 50, 25, None).for_fpir(0.01, 10)
    assert err.value.reason == "NO_CALIBRATION"
    with pytest.raises(InvalidInputError):
        Thresholds(0.9, "x", 50, 25, calibration()).for_fpir(1.5, 10)
