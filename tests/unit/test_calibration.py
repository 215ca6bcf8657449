"""Calibration: thresholds that keep their false-match promise, and FPIR that accounts for N."""

from __future__ import annotations

import numpy as np
import pytest

from facesearch.errors import InvalidInputError
from facesearch.evaluation.calibrate import calibrate
from facesearch.scoring.calibration import Calibration
from facesearch.scoring.decision import fmr_for_fpir


def _faces(identities: int, per: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, 32))
    x = np.repeat(centres, per, axis=0) + 0.6 * rng.normal(size=(identities * per, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(identities), per)


def test_thresholds_keep_the_promised_fmr_on_fresh_data() -> None:
    x, y = _faces(300, 4)
    cal = calibrate(x, y, source="synthetic", default_fmr=1e-3)
    assert [p.fmr for p in cal.points] == sorted((p.fmr for p in cal.points), reverse=True)
    assert all(a.threshold <= b.threshold for a, b in zip(cal.points, cal.points[1:], strict=False))
    fresh, labels = _faces(300, 4, seed=1)
    scores = fresh @ fresh.T
    iu = np.triu_indices(len(fresh), 1)
    impostor = scores[iu][labels[iu[0]] != labels[iu[1]]]
    for fmr in (1e-2, 1e-3):
        achieved = float(np.mean(impostor > cal.threshold_for_fmr(fmr)))
        assert fmr / 2 <= achieved <= fmr * 2, (fmr, achieved)
    assert cal.min_similarity == pytest.approx(cal.threshold_for_fmr(1e-3))


def test_round_trip_and_capping() -> None:
    x, y = _faces(100, 3)
    cal = calibrate(x, y, source="synthetic")
    again = Calibration.from_dict(__import__("json").loads(cal.to_json()))
    assert again == cal
    # below what the data supports, the strictest measured threshold is used (never extrapolated)
    assert cal.threshold_for_fmr(1e-12) == cal.points[-1].threshold
    with pytest.raises(InvalidInputError):
        cal.threshold_for_fmr(0.0)


def test_fpir_needs_smaller_fmr_as_gallery_grows() -> None:
    assert fmr_for_fpir(0.01, 1) == pytest.approx(0.01)
    assert fmr_for_fpir(0.01, 1000) == pytest.approx(1.005e-5, rel=1e-3)
    assert fmr_for_fpir(0.01, 10_000_000) < fmr_for_fpir(0.01, 1000)
    with pytest.raises(InvalidInputError):
        fmr_for_fpir(1.5, 10)


def test_needs_two_identities() -> None:
    x, _ = _faces(1, 5)
    with pytest.raises(InvalidInputError, match="two identities"):
        calibrate(x, np.zeros(5), source="one person")
