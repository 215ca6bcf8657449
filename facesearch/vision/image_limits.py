"""Size limits a photo must meet before its pixels are decoded.

The checks here run on the byte length and on the dimensions read from the image
header, so an oversized upload or a decompression bomb (a few KiB claiming
100000x100000 pixels) is refused before any pixel buffer is allocated.

Work bombs too: a progressive JPEG's decode costs one pass over the whole image per scan, and
a scan that refines nothing takes a few bytes, so 10,000 repeated scans (164 KB) made a 4 Mpx
JPEG take 24 s to decode (0.03 s without them). ``max_jpeg_scans`` bounds the scans counted from the
markers before decoding; a real progressive JPEG has about 10 (libjpeg's default script) and
rarely more than 20 (mozjpeg's optimised scripts).
"""

from __future__ import annotations

from dataclasses import dataclass

from facesearch.errors import ImageDecodeError, ImageTooLargeError, Reason


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What :func:`facesearch.vision.decode.decode_image` accepts.

    ``max_pixels`` is the decompression-bomb guard (width * height, checked from the
    header before decoding); ``max_bytes`` bounds the encoded size; ``min_side`` is the
    smallest width or height accepted, since a smaller image holds no detectable face;
    ``max_jpeg_scans`` bounds the scans of a JPEG (each is a pass over every pixel).
    """

    max_pixels: int = 40_000_000
    max_bytes: int = 32 * 1024 * 1024
    min_side: int = 16
    max_jpeg_scans: int = 64

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_bytes", "min_side", "max_jpeg_scans"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DecodeLimits.{name} must be a positive integer, got {value!r}")
        if self.min_side * self.min_side > self.max_pixels:
            raise ValueError(
                f"DecodeLimits.min_side={self.min_side} admits no image under max_pixels={self.max_pixels}"
            )


def check_byte_size(size: int, limits: DecodeLimits, *, what: str = "image") -> None:
    """Refuse an encoded image of ``size`` bytes over ``limits.max_bytes``."""
    if size > limits.max_bytes:
        raise ImageTooLargeError(
            f"{what} is {size} bytes, over the limit of {limits.max_bytes} bytes",
            reason=Reason.IMAGE_TOO_LARGE,
        )


def check_dimensions(width: int, height: int, limits: DecodeLimits) -> None:
    """Refuse an image whose header claims too many pixels or a side below ``min_side``."""
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels} pixels",
            reason=Reason.IMAGE_TOO_LARGE,
        )
    if min(width, height) < limits.min_side:
        raise ImageDecodeError(
            f"image is {width}x{height} pixels; each side must be at least {limits.min_side} "
            "pixels to hold a detectable face",
            reason=Reason.IMAGE_TOO_SMALL,
        )


def check_jpeg_scans(scans: int, limits: DecodeLimits) -> None:
    """Refuse a JPEG with more than ``limits.max_jpeg_scans`` scans (a work bomb, see the module docstring)."""
    if scans > limits.max_jpeg_scans:
        raise ImageTooLargeError(
            f"JPEG image has {scans} or more scans, over the limit of {limits.max_jpeg_scans} (each scan is a pass "
            "over the whole image; a progressive JPEG has about 10)",
            reason=Reason.IMAGE_TOO_LARGE,
        )
