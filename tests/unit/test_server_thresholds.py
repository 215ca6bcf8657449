"""The threshold a request gets: which score, which source, what it stands for, and the refusals."""

from __future__ import annotations

import pytest

from facesearch.errors import InvalidInputError, PreconditionError
from facesearch.scoring.calibration import Calibration, CalibrationPoint
from facesearch.scoring.decision import fmr_for_fpir
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


SIZES = (1, 3, 50, 127, 128, 1000)


def test_the_default_holds_one_fpir_at_every_gallery_size() -> None:
    """Raw cosine at FMR 1 - (1 - FPIR)^(1/N) below the normalised range, the normalised table from it."""
    policy = ThresholdPolicy(raw(), open_set())
    assert policy.default_fpir == 0.01
    previous = None
    for n in SIZES:
        t = policy.identify(ThresholdRequest(), n)
        assert (t.kind, t.gallery_size, t.fpir, t.capped) == ("default", n, pytest.approx(0.01), False), n
        assert t.reason.startswith(f"default FPIR 1% at gallery size {n} ->"), t.reason
        if n < 128:
            assert t.score_kind == "raw" and t.fmr == pytest.approx(fmr_for_fpir(0.01, n))
            assert t.value == pytest.approx(raw().threshold_for_fmr(fmr_for_fpir(0.01, n)))
            assert previous is None or t.value > previous  # stricter per comparison as N grows
            previous = t.value
        else:
            assert t.score_kind == "normalised" and t.value == pytest.approx(open_set().threshold_for(0.01, n)[0])
    assert policy.identify(ThresholdRequest(), 1).value == pytest.approx(0.85)  # FMR = FPIR = 1% at N = 1
    assert policy.identify(ThresholdRequest(), 0).gallery_size == 1  # an empty gallery counts as one
    # normalised scores unavailable: the same FPIR on raw cosine, and honest where the table runs out
    big = policy.identify(ThresholdRequest(), 1000, normalised=False)
    assert (big.score_kind, big.fpir, big.capped) == ("raw", pytest.approx(0.01), False)
    huge = policy.identify(ThresholdRequest(), 100_000, normalised=False)  # FMR 1e-7, measured down to 1e-6
    assert huge.capped and huge.fpir == pytest.approx(0.01) and "rate not guaranteed" in huge.reason
    assert "FPIR 0.01 at every gallery size" in policy.note and "Verify: false-match rate 0.0001" in policy.note


def test_overrides_win_over_the_default_promise() -> None:
    by_fpir = ThresholdPolicy(raw(), open_set(), max_fpir=0.001)
    assert by_fpir.default_fpir == 0.001 and "FPIR 0.001 at every gallery size (FACESEARCH_MAX_FPIR)" in by_fpir.note
    for n in SIZES:
        t = by_fpir.identify(ThresholdRequest(), n)
        assert t.fpir == pytest.approx(0.001) and t.reason.startswith("FACESEARCH_MAX_FPIR: FPIR 0.1%"), n
        assert t.score_kind == ("raw" if n < 128 else "normalised")
    fixed = ThresholdPolicy(raw(), open_set(), min_similarity=0.91)
    assert fixed.default_fpir is None and "FACESEARCH_MIN_SIMILARITY=0.91" in fixed.note
    assert {fixed.identify(ThresholdRequest(), n).value for n in SIZES} == {0.91}
    policy = ThresholdPolicy(raw(), open_set())
    for n in (3, 1000):  # a request's own threshold or rate beats the default at any size
        assert policy.identify(ThresholdRequest(min_similarity=0.5), n).value == 0.5
        assert policy.identify(ThresholdRequest(max_fpir=0.1), n).fpir == pytest.approx(0.1)
        assert policy.identify(ThresholdRequest(max_fmr=1e-5), n).fmr == pytest.approx(1e-5, rel=1e-3)


def test_what_bundles_without_an_open_set_calibration_promise() -> None:
    raw_only = ThresholdPolicy(raw(), None)
    assert raw_only.default_fpir is None and "at every gallery size" in raw_only.note
    for n in (3, 1000):  # the default FMR per comparison; the FPIR it stands for grows with N
        t = raw_only.identify(ThresholdRequest(), n)
        assert (t.score_kind, t.value, t.fmr) == ("raw", pytest.approx(0.90), pytest.approx(1e-4))
        assert t.fpir == pytest.approx(1 - (1 - 1e-4) ** n) and "default FMR 0.0001 per comparison" in t.reason
    held = ThresholdPolicy(raw(), None, max_fpir=0.01)  # FACESEARCH_MAX_FPIR: raw cosine at every size
    assert held.default_fpir == 0.01 and "rate not guaranteed above 10050 identities" in held.note
    assert held.identify(ThresholdRequest(), 20_000).capped
    open_only = ThresholdPolicy(None, open_set())  # small galleries are uncalibrated: no promise at every size
    assert open_only.default_fpir is None and "FPIR 0.01 on galleries of 128+" in open_only.note
    assert open_only.identify(ThresholdRequest(), 3).value == pytest.approx(0.82)
    assert open_only.identify(ThresholdRequest(), 512).fpir == pytest.approx(0.01)
    bare = ThresholdPolicy(None, None)
    assert bare.default_fpir is None and bare.identify(ThresholdRequest(), 3).value == pytest.approx(0.82)


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
