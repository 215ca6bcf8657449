"""The threshold a request gets: which score, which source, what it stands for, and the refusals."""

from __future__ import annotations

import pytest

from facesearch.errors import InvalidInputError, PreconditionError
from facesearch.scoring.calibration import Calibration, CalibrationPoint
from facesearch.scoring.open_set_calibration import FpirCurve, FpirPoint, OpenSetCalibration
from facesearch.scoring.thresholds import ThresholdPolicy, ThresholdRequest, fmr_at


def raw() -> Calibration:
    points = tuple(
        CalibrationPoint(fmr=f, threshold=t, tar=0.9)
        for f, t in [(1e-1, 0.80), (1e-2, 0.85), (1e-3, 0.88), (1e-4, 0.90), (1e-5, 0.92), (1e-6, 0.94)]
    )
    return Calibration(points, 10**7, 1000, 500, "test", 1e-4, 0.90)


def open_set() -> OpenSetCalibration:
    def curve(n: int, shift: float) -> FpirCurve:
        return FpirCurve(
            n, 20_000, (FpirPoint(1e-1, 0.01 + shift), FpirPoint(1e-2, 0.03 + shift), FpirPoint(1e-3, 0.05 + shift))
        )

    return OpenSetCalibration(
        score="margin-v1",
        k=4,
        template="both",
        identities=1000,
        source="test",
        default_fpir=0.01,
        normalise_from=128,
        curves=(curve(64, 0.02), curve(512, 0.0)),
    )


def test_rates_on_a_large_gallery_use_the_normalised_score() -> None:
    policy = ThresholdPolicy(raw(), open_set())
    t = policy.identify(ThresholdRequest(max_fpir=0.01), 512)
    assert (t.kind, t.score_kind, t.gallery_size) == ("max_fpir", "normalised", 512)
    assert t.value == pytest.approx(0.03) and t.fpir == pytest.approx(0.01) and not t.capped
    assert t.fmr is not None and t.fmr < 0.01 / 500  # the per-comparison equivalent
    assert "FPIR 1% at gallery size 512" in t.reason
    default = policy.identify(ThresholdRequest(), 512)
    assert (default.kind, default.score_kind) == ("default", "normalised") and default.value == pytest.approx(0.03)
    # statistics unavailable: the same promise on raw cosine
    fallback = policy.identify(ThresholdRequest(max_fpir=0.01), 512, normalised=False)
    assert fallback.score_kind == "raw" and fallback.value > 0.9


def test_small_galleries_decide_on_raw_cosine_and_the_threshold_rises_with_n() -> None:
    policy = ThresholdPolicy(raw(), open_set())
    one, hundred = (policy.identify(ThresholdRequest(max_fpir=0.01), n) for n in (1, 100))
    assert one.score_kind == hundred.score_kind == "raw"
    assert one.value == pytest.approx(0.85)  # one identity: FMR = FPIR
    assert hundred.value > one.value and "below the normalised calibration's 128" in hundred.reason


def test_the_stricter_rate_wins_and_is_named() -> None:
    policy = ThresholdPolicy(raw(), open_set())
    t = policy.identify(ThresholdRequest(max_fpir=0.1, max_fmr=1e-6), 512)  # 1e-6 at N=512: FPIR ~0.05%
    assert t.kind == "max_fmr" and t.fpir == pytest.approx(1 - (1 - 1e-6) ** 512, rel=1e-3)
    assert policy.identify(ThresholdRequest(max_fpir=0.001, max_fmr=1e-3), 512).kind == "max_fpir"
    capped = policy.identify(ThresholdRequest(max_fpir=1e-5), 512)
    assert capped.capped and "not guaranteed" in capped.reason


def test_min_similarity_is_raw_and_says_what_it_stands_for() -> None:
    policy = ThresholdPolicy(raw(), open_set())
    t = policy.identify(ThresholdRequest(min_similarity=0.88), 1000)
    assert (t.kind, t.score_kind, t.value) == ("min_similarity", "raw", 0.88)
    assert t.fmr == pytest.approx(1e-3) and t.fpir == pytest.approx(1 - (1 - 1e-3) ** 1000)
    assert fmr_at(raw(), 0.89) == pytest.approx(10**-3.5, rel=1e-6)
    assert fmr_at(raw(), 0.5) is None  # outside the measured range: unknown, not extrapolated


def test_server_defaults() -> None:
    by_fpir = ThresholdPolicy(raw(), open_set(), max_fpir=0.001)
    t = by_fpir.identify(ThresholdRequest(), 512)
    assert t.kind == "default" and t.reason.startswith("FACESEARCH_MAX_FPIR") and t.value == pytest.approx(0.05)
    fixed = ThresholdPolicy(raw(), open_set(), min_similarity=0.91).identify(ThresholdRequest(), 512)
    assert (fixed.kind, fixed.score_kind, fixed.value) == ("default", "raw", 0.91)
    bare = ThresholdPolicy(None, None).identify(ThresholdRequest(), 10)
    assert bare.score_kind == "raw" and bare.value == pytest.approx(0.82) and bare.fmr is None
    with pytest.raises(InvalidInputError):
        ThresholdPolicy(raw(), None, min_similarity=0.9, max_fpir=0.01)
    with pytest.raises(PreconditionError):
        ThresholdPolicy(None, open_set(), max_fpir=0.01)  # small galleries would have no calibration


def test_refusals() -> None:
    uncalibrated = ThresholdPolicy(None, None)
    for req in (ThresholdRequest(max_fpir=0.01), ThresholdRequest(max_fmr=1e-4)):
        with pytest.raises(PreconditionError) as err:
            uncalibrated.identify(req, 10)
        assert err.value.reason == "NO_CALIBRATION"
    with pytest.raises(PreconditionError) as err:  # only an open-set calibration, and a small gallery
        ThresholdPolicy(None, open_set()).identify(ThresholdRequest(max_fpir=0.01), 20)
    assert err.value.reason == "NO_CALIBRATION"
    policy = ThresholdPolicy(raw(), open_set())
    cases = [
        (ThresholdRequest(min_similarity=0.9, max_fpir=0.01), "BAD_THRESHOLD"),
        (ThresholdRequest(max_fpir=1.5), "BAD_FPIR"),
        (ThresholdRequest(max_fmr=0.0), "BAD_FMR"),
        (ThresholdRequest(max_fpir=float("nan")), "BAD_FPIR"),
        (ThresholdRequest(min_similarity=1.5), "BAD_MIN_SIMILARITY"),
    ]
    for req, reason in cases:
        with pytest.raises(InvalidInputError) as bad:
            policy.identify(req, 100)
        assert bad.value.reason == reason


def test_verify_is_raw_one_to_one() -> None:
    policy = ThresholdPolicy(raw(), open_set())
    t = policy.verify(None, 1e-5)
    assert (t.kind, t.score_kind, t.gallery_size, t.value) == ("max_fmr", "raw", 1, pytest.approx(0.92))
    d = policy.verify(None, None)
    assert d.kind == "default" and d.value == pytest.approx(0.90) and d.fmr == pytest.approx(1e-4)
    with pytest.raises(InvalidInputError):
        policy.verify(0.9, 1e-4)
    with pytest.raises(PreconditionError):
        ThresholdPolicy(None, None).verify(None, 1e-4)
