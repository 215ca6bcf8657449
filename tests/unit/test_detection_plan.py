"""Detection under a budget: which scan a photo gets, the smallest face it can find, and its cost."""

from __future__ import annotations

import math

import pytest

from facesearch.errors import InvalidInputError
from facesearch.vision.detection_plan import MIN_FACE_FLOOR, plan_detection, work_bytes, worst_work_bytes
from facesearch.vision.pipeline import DEFAULT_DETECT_PIXELS, PipelineConfig

WINDOW = 80


def plan(width: int, height: int, min_face: int = 40, budget: int | None = DEFAULT_DETECT_PIXELS, **kw: object):
    return plan_detection(width, height, min_face=min_face, window=WINDOW, budget=budget, **kw)  # type: ignore[arg-type]


def test_small_photos_are_scanned_exactly_as_dlib_scans_them() -> None:
    p = plan(250, 250)
    assert p.exact and p.upsample == 1 and not p.limited
    assert (p.scan_width, p.scan_height) == (502, 501)  # dlib's pyramid_up size
    assert p.min_face_px == 40
    assert plan(250, 250, min_face=80).upsample == 0
    assert plan(640, 480).exact  # 0.3 MP at 2x fits the default budget


def test_no_budget_is_dlibs_scan_at_any_size() -> None:
    p = plan(4032, 3024, budget=None)
    assert p.exact and p.upsample == 1 and p.pyramid_pixels > 40_000_000


def test_a_large_photo_is_scanned_within_the_budget_and_says_what_it_can_find() -> None:
    p = plan(4032, 3024)
    assert not p.exact and p.upsample == 0 and p.limited
    assert p.pyramid_pixels <= DEFAULT_DETECT_PIXELS
    assert p.scan_width / p.scan_height == pytest.approx(4032 / 3024, rel=1e-3)
    # the smallest face is the window over the scale, in the photo's pixels: a fraction of the short side
    assert p.min_face == pytest.approx(WINDOW * 4032 / p.scan_width, rel=1e-3)
    assert p.min_face == pytest.approx(WINDOW * math.sqrt(4 / 3 / DEFAULT_DETECT_PIXELS) * 3024, rel=0.01)


def test_the_budget_buys_the_same_fraction_of_the_short_side_at_any_resolution() -> None:
    fractions = [plan(w, h).min_face / h for w, h in ((2048, 1536), (3264, 2448), (4032, 3024), (8000, 6000))]
    assert max(fractions) - min(fractions) < 0.002


def test_a_requested_min_face_is_a_promise_up_to_the_maximum() -> None:
    p = plan(4032, 3024, min_face=100, max_pixels=9_000_000, requested=True)
    assert p.min_face <= 100 and not p.limited and p.pyramid_pixels > DEFAULT_DETECT_PIXELS
    with pytest.raises(InvalidInputError) as err:
        plan(4032, 3024, min_face=60, max_pixels=9_000_000, requested=True)
    assert err.value.reason == "MIN_FACE_TOO_SMALL"
    smallest = math.ceil(WINDOW / math.sqrt(9_000_000 / (4032 * 3024)))
    assert f"the smallest face it can search in this photo is {smallest} px" in err.value.message
    # what the message offers is accepted
    assert plan(4032, 3024, min_face=smallest, max_pixels=9_000_000, requested=True).min_face <= smallest


def test_a_larger_requested_face_costs_less() -> None:
    assert plan(4032, 3024, min_face=400, requested=True).pyramid_pixels < plan(4032, 3024).pyramid_pixels


def test_faces_under_the_floor_are_refused() -> None:
    with pytest.raises(InvalidInputError) as err:
        plan(250, 250, min_face=MIN_FACE_FLOOR - 1, requested=True)
    assert err.value.reason == "MIN_FACE_TOO_SMALL"


def test_work_bytes_grow_with_the_scan_and_are_bounded_by_the_worst_case() -> None:
    small, large = work_bytes(plan(250, 250)), work_bytes(plan(4032, 3024))
    assert 0 < small < large <= worst_work_bytes(40_000_000, DEFAULT_DETECT_PIXELS)
    # the default budget bounds a 40 MP photo's cost well below what dlib's own scan would hold
    assert worst_work_bytes(40_000_000, DEFAULT_DETECT_PIXELS) < work_bytes(plan(4032, 3024, budget=None)) / 4


def test_pipeline_config_validates_the_budget() -> None:
    assert PipelineConfig(detect_pixels=None).detect_pixels is None
    with pytest.raises(InvalidInputError, match="detect_pixels"):
        PipelineConfig(detect_pixels=100)
