"""Reduced decoding for the detector's copy of a large photo: DCT-scaled JPEGs, upright, within the limits."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from facesearch.errors import ImageTooLargeError
from facesearch.vision.decode import DecodeLimits, decode_image, read_header


def _photo(width: int, height: int) -> np.ndarray:
    """A smooth image (gradients and a disc), so that a reduced decode and a resized one agree closely."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - width / 3) ** 2 + (y - height / 2) ** 2 < (height / 4) ** 2) * 90.0
    rgb = np.stack([x / width * 200 + disc, y / height * 200, (x + y) / (width + height) * 255 - disc / 2], axis=2)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _encode(rgb: np.ndarray, fmt: str, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    Image.fromarray(rgb).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [None, 6])
def test_a_jpeg_decodes_reduced_but_never_below_the_size_asked(orientation: int | None) -> None:
    stored = _photo(1600, 1200)
    data = _encode(stored, "JPEG", orientation)
    full = decode_image(data)
    header = read_header(data)
    assert (header.width, header.height) == (full.shape[1], full.shape[0]) and header.reducible
    want = (header.width // 5, header.height // 5)  # 1/4 is the DCT scale that keeps at least 1/5
    small = decode_image(data, reduce_to=want)
    assert small.shape == (full.shape[0] // 4, full.shape[1] // 4, 3)  # upright, as the full decode
    expected = cv2.resize(full, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - expected.astype(int)).mean() < 2.0


def test_reduction_stops_where_the_photo_is_already_small_enough() -> None:
    data = _encode(_photo(400, 300), "JPEG")
    assert decode_image(data, reduce_to=(300, 200)).shape == (300, 400, 3)


def test_other_formats_decode_in_full() -> None:
    data = _encode(_photo(400, 300), "PNG")
    assert not read_header(data).reducible
    assert decode_image(data, reduce_to=(100, 75)).shape == (300, 400, 3)


def test_limits_apply_to_the_full_size() -> None:
    data = _encode(_photo(1600, 1200), "JPEG")
    limits = DecodeLimits(max_pixels=1_000_000)
    for read in (lambda: read_header(data, limits), lambda: decode_image(data, limits, reduce_to=(100, 75))):
        with pytest.raises(ImageTooLargeError) as err:
            read()
        assert err.value.reason == "IMAGE_TOO_LARGE"
