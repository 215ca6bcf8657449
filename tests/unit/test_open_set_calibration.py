"""Calibrating the normalised score: promises kept on fresh data, thresholds that explain themselves."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import BundleError, InvalidInputError
from facesearch.evaluation.calibrate import calibrate, calibrate_open_set, gallery_ladder
from facesearch.evaluation.ident import fpir_at
from facesearch.evaluation.ident_scoring import score_split
from facesearch.scoring.decision import fmr_for_fpir, fpir_for_fmr
from facesearch.scoring.open_set_calibration import (
    OPEN_SET_CALIBRATION_FILE,
    OpenSetCalibration,
    load_open_set_calibration,
    resolve_threshold,
)


def _faces(identities: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Identities as clusters; some identities are 'hubs' close to a shared centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, 32))
    centres[: identities // 5] = 0.5 * centres[: identities // 5] + rng.normal(size=32)  # a crowded region
    x = np.repeat(centres, per, axis=0) + 0.7 * rng.normal(size=(identities * per, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(identities), per).astype(str)


@pytest.fixture(scope="module")
def calibration() -> OpenSetCalibration:
    x, y = _faces(400, 3, seed=0)
    return calibrate_open_set(x, y, source="synthetic", k=4, normalise_from=16)


def test_table_shape(calibration: OpenSetCalibration) -> None:
    sizes = [c.gallery_size for c in calibration.curves]
    assert sizes == gallery_ladder(400, 8) == [8, 16, 32, 64, 128, 200]
    for curve in calibration.curves:
        assert [p.fpir for p in curve.points] == sorted((p.fpir for p in curve.points), reverse=True)
        assert all(a.threshold <= b.threshold for a, b in zip(curve.points, curve.points[1:], strict=False))
        assert curve.points[-1].fpir * curve.searches >= 10


def test_promised_fpir_holds_on_fresh_identities(calibration: OpenSetCalibration) -> None:
    x, y = _faces(400, 3, seed=1)  # other identities, same kind of data
    enrolled = np.unique(y)[:150]
    first = np.r_[[np.flatnonzero(y == e)[0] for e in enrolled]]
    probes = np.setdiff1d(np.arange(len(y)), first)
    split = score_split(x[first], y[first], x[probes], y[probes], np.ones(len(probes), bool), k=4)
    assert split.gallery_size == 150
    for fpir in (0.1, 0.03, 0.01):
        th = resolve_threshold(calibration, None, gallery_size=150, max_fpir=fpir)
        achieved = fpir_at(split.normalised, th.score)
        assert fpir / 2 <= achieved <= fpir * 2, (fpir, achieved)


def test_interpolation_in_gallery_size_and_holding_beyond(calibration: OpenSetCalibration) -> None:
    t64, _, _ = calibration.threshold_for(0.01, 64)
    t128, _, _ = calibration.threshold_for(0.01, 128)
    t90, _, note = calibration.threshold_for(0.01, 90)
    assert min(t64, t128) <= t90 <= max(t64, t128) and note == ""
    t_big, _, note = calibration.threshold_for(0.01, 10_000_000)
    assert t_big == calibration.threshold_for(0.01, 200)[0]
    assert "held at the largest calibrated gallery (200)" in note
    _, capped, _ = calibration.threshold_for(1e-9, 200)
    assert capped


def test_resolve_explains_itself(calibration: OpenSetCalibration) -> None:
    th = resolve_threshold(calibration, None, gallery_size=150, max_fpir=0.01)
    assert th.kind == "normalised" and not th.capped
    assert th.reason.startswith("FPIR 1% at gallery size 150 -> normalised threshold")
    assert th.fmr == pytest.approx(1 - 0.99 ** (1 / 150))
    # a per-comparison FMR becomes the FPIR it implies at this size; the stricter request wins
    both = resolve_threshold(calibration, None, gallery_size=150, max_fpir=0.01, max_fmr=1e-6)
    assert both.fpir == pytest.approx(1 - (1 - 1e-6) ** 150)
    assert both.score >= th.score and "FMR 1e-06 at gallery size 150" in both.reason
    assert both.capped and "not guaranteed" in both.reason
    default = resolve_threshold(calibration, None, gallery_size=150)
    assert default.fpir == calibration.default_fpir and "default FPIR" in default.reason
    with pytest.raises(InvalidInputError):
        resolve_threshold(calibration, None, gallery_size=150, max_fpir=1.5)


def test_small_galleries_fall_back_to_cosine(calibration: OpenSetCalibration) -> None:
    x, y = _faces(60, 3, seed=2)
    raw = calibrate(x, y, source="synthetic")
    small = resolve_threshold(calibration, raw, gallery_size=10, max_fpir=0.01)
    assert small.kind == "cosine" and "below the normalised calibration's 16" in small.reason
    assert small.fmr == pytest.approx(1 - 0.99 ** (1 / 10))
    bigger = resolve_threshold(None, raw, gallery_size=1000, max_fpir=0.01)
    assert bigger.kind == "cosine" and bigger.score > small.score  # FPIR needs a stricter FMR as N grows
    nothing = resolve_threshold(None, None, gallery_size=10, max_fpir=0.01)
    assert nothing.kind == "cosine" and "no calibration" in nothing.reason


def test_the_default_fpir_holds_below_the_normalised_range(calibration: OpenSetCalibration) -> None:
    x, y = _faces(60, 3, seed=2)
    raw = calibrate(x, y, source="synthetic")
    for n in (1, 3, 10, 150):
        th = resolve_threshold(calibration, raw, gallery_size=n)
        assert th.fpir == calibration.default_fpir and th.reason.startswith(f"default FPIR 1% at gallery size {n}")
        assert th.kind == ("cosine" if n < calibration.min_gallery else "normalised")
    small = resolve_threshold(calibration, raw, gallery_size=3)
    assert small.fmr == pytest.approx(fmr_for_fpir(0.01, 3)) and small.score == raw.threshold_for_fmr(small.fmr)
    # normalised scores unavailable: the same promise on raw cosine
    fallback = resolve_threshold(calibration, raw, gallery_size=150, normalised=False)
    assert fallback.kind == "cosine" and fallback.fpir == 0.01 and "below the normalised" not in fallback.reason
    # no open-set calibration: the raw calibration's default FMR per comparison
    raw_only = resolve_threshold(None, raw, gallery_size=3)
    assert raw_only.fmr == raw.default_fmr and raw_only.fpir == pytest.approx(fpir_for_fmr(raw.default_fmr, 3))


def test_file_round_trip(calibration: OpenSetCalibration, tmp_path: Path) -> None:
    assert load_open_set_calibration(tmp_path) is None
    calibration.write(tmp_path / OPEN_SET_CALIBRATION_FILE)
    assert load_open_set_calibration(tmp_path) == calibration
    data = json.loads((tmp_path / OPEN_SET_CALIBRATION_FILE).read_text())
    data["score"] = "something-else"
    (tmp_path / OPEN_SET_CALIBRATION_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="score kind"):
        load_open_set_calibration(tmp_path)
    (tmp_path / OPEN_SET_CALIBRATION_FILE).write_text("{}")
    with pytest.raises(BundleError, match="unreadable"):
        load_open_set_calibration(tmp_path)


def test_too_few_identities() -> None:
    x, y = _faces(6, 2, seed=3)
    with pytest.raises(InvalidInputError, match="needs at least"):
        calibrate_open_set(x, y, source="tiny", k=4)


def test_deterministic() -> None:
    x, y = _faces(60, 2, seed=4)
    first = calibrate_open_set(x, y, source="synthetic", k=4, seed=7)
    assert calibrate_open_set(x, y, source="synthetic", k=4, seed=7) == first
    assert dataclasses.replace(first, source="other") != first
