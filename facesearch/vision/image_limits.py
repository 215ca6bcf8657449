"""Size limits a photo must meet before its pixels are decoded.

The checks here run on the byte length and on the dimensions read from the image
header, so an oversized upload or a decompression bomb (a few KiB claiming
100000x100000 pixels) is refused before any pixel buffer is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from facesearch.errors import ImageDecodeError, ImageTooLargeError, Reason


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What :func:`facesearch.vision.decode.decode_image` accepts.

    ``max_pixels`` is the decompression-bomb guard (width * height, checked from the
    header before decoding); ``max_bytes`` bounds the encoded size; ``min_side`` is the
    smallest width or height accepted, since a smaller image holds no detectable face.
    """

    max_pixels: int = 40_000_000
    max_bytes: int = 32 * 1024 * 1024
    min_side: int = 16

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_bytes", "min_side"):
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
