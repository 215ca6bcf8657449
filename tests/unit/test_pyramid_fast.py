"""The fast pyramid of a scaled copy: dlib's layout and geometry, levels within about a grey level."""

from __future__ import annotations

import numpy as np

from facesearch.vision.pyramid import build_pyramid_tensor, tiled_pyramid_layout

AVG = (122.782, 117.001, 104.298)


def test_the_fast_pyramid_matches_the_exact_one_within_a_grey_level() -> None:
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:301, 0:402]
    smooth = (np.stack([x, y, x + y]) * (255 / 703)).astype(np.uint8)  # (3, H, W)
    planes = np.stack([smooth, rng.integers(0, 256, size=smooth.shape, dtype=np.uint8)])
    layout = tiled_pyramid_layout(301, 402, 6, 10, 11)
    exact = build_pyramid_tensor(planes, AVG, layout)
    fast = build_pyramid_tensor(planes, AVG, layout, exact=False)
    assert fast.shape == exact.shape and fast.dtype == np.float32
    first = layout.rects[0]
    level0 = (slice(None), slice(None), slice(first.top, first.bottom + 1), slice(first.left, first.right + 1))
    np.testing.assert_array_equal(fast[level0], exact[level0])  # the first level is the image itself
    assert np.abs(fast[0] - exact[0]).max() < 1.5 / 256  # a smooth image: within ~a grey level everywhere
    assert np.abs(fast[1] - exact[1]).mean() < 1.0 / 256  # noise: close on average
    padding = np.ones(exact.shape[2:], bool)
    for r in layout.rects:
        padding[r.top : r.bottom + 1, r.left : r.right + 1] = False
    assert not fast[:, :, padding].any()
