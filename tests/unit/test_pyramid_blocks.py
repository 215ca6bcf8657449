"""The exact resize works a block of output rows at a time (small float levels in one piece) and may
write into a view: none of it changes a bit of its result (facesearch.vision.pyramid)."""

from __future__ import annotations

import numpy as np
import pytest

from facesearch.vision import pyramid


@pytest.mark.parametrize(("in_h", "in_w", "out_h", "out_w"), [(61, 47, 50, 39), (20, 33, 41, 68), (9, 200, 7, 166)])
def test_block_size_does_not_change_the_result(
    monkeypatch: pytest.MonkeyPatch, in_h: int, in_w: int, out_h: int, out_w: int
) -> None:
    rng = np.random.default_rng(in_h * in_w)
    u8 = rng.integers(0, 256, (2, 3, in_h, in_w), dtype=np.uint8)
    f32 = (u8.astype(np.float32) - 117.0) / 256.0
    whole = pyramid.resize_u8_planes(u8, out_h, out_w), pyramid.resize_float_planes(f32, out_h, out_w)
    monkeypatch.setattr(pyramid, "_SMALL_FLOAT_VALUES", 0)  # the float resize in blocks too
    for block in (1, 7 * 3 * out_w):  # one row per block, and blocks of a few rows
        monkeypatch.setattr(pyramid, "_BLOCK_VALUES", block)
        np.testing.assert_array_equal(pyramid.resize_u8_planes(u8, out_h, out_w), whole[0])
        got = pyramid.resize_float_planes(f32, out_h, out_w)
        np.testing.assert_array_equal(got.view(np.int32), whole[1].view(np.int32))


def test_resize_into_a_view_of_a_larger_array() -> None:
    rng = np.random.default_rng(3)
    src = rng.standard_normal((1, 3, 40, 52)).astype(np.float32)
    expected = pyramid.resize_float_planes(src, 33, 43)  # in one piece (small)
    canvas = np.full((1, 3, 60, 70), 7.0, np.float32)
    view = canvas[:, :, 5:38, 9:52]
    assert pyramid.resize_float_planes(src, 33, 43, out=view) is view
    np.testing.assert_array_equal(view.view(np.int32), expected.view(np.int32))
    outside = np.ones(canvas.shape, bool)
    outside[:, :, 5:38, 9:52] = False
    assert np.all(canvas[outside] == 7.0)  # nothing written outside the view


def test_fast_upsampling_has_dlibs_size_and_is_within_one_grey_level() -> None:
    rng = np.random.default_rng(5)
    planes = rng.integers(0, 256, (2, 3, 37, 52), dtype=np.uint8)
    exact, fast = pyramid.pyramid_up_planes(planes), pyramid.pyramid_up_planes_fast(planes)
    assert fast.shape == exact.shape == (2, 3, *pyramid.pyramid_up_size(37, 52)) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - exact.astype(int)).max() <= 1
    np.testing.assert_array_equal(fast[1], pyramid.pyramid_up_planes_fast(planes[1:2])[0])  # per image
