"""Decode any supported photo safely into a C-contiguous HxWx3 uint8 RGB array.

This is the first stage of every request, so it is both defensive and fast:

* Formats: JPEG (including multi-picture MPO: the primary image), PNG (APNG: the default
  image), WebP, GIF, BMP and TIFF. Multi-frame images (animated GIF/WebP/PNG, multi-page
  TIFF) give their **first frame**. Anything else, including formats Pillow could parse
  (EPS, PSD, ICO...), is refused with ``IMAGE_FORMAT_UNSUPPORTED``: a smaller attack surface.
* Limits (:class:`DecodeLimits`): the byte length, then the width and height read from the
  header by Pillow's lazy open, are checked *before* any pixel is decoded. Pillow's own
  global ``Image.MAX_IMAGE_PIXELS`` check in ``Image.open`` is bypassed (the format's
  opener is called directly, nothing global is mutated), so ``max_pixels`` is the limit
  that applies. A few decoders (TIFF, GIF, MPO) repeat Pillow's global check while
  loading; that can only matter when ``max_pixels`` is set above it (~89 Mpx), and its
  error is reported as ``IMAGE_TOO_LARGE``. A JPEG's scans are then counted from its markers
  (:func:`jpeg_scan_count`, linear and bounded): over ``max_jpeg_scans`` is ``IMAGE_TOO_LARGE``,
  since each scan is a pass over every pixel (a work bomb otherwise: see ``image_limits``).
* Truncated data fails with ``IMAGE_TRUNCATED`` (``LOAD_TRUNCATED_IMAGES`` is never set),
  including a TIFF whose directory, or a strip, tile or value it points at, lies past the end.
* EXIF orientation (all 8 values, from EXIF or TIFF tags, as Pillow reads them) is applied
  exactly once, so the array is upright as a viewer shows it.
* Pixel modes become RGB: grayscale and bilevel are replicated; palette, CMYK, YCbCr, LAB
  and HSV are converted by Pillow; **alpha is composited over white** (transparent pixels
  often hold undefined colour, and a uniform light background is what a viewer shows and
  what a detector copes with); 16-bit grayscale is rescaled with rounding
  (``round(v * 255 / 65535)``), never clipped; 16-bit colour is reduced by Pillow to its
  high byte (within one level of exact rounding). 32-bit integer (``I``) and float
  (``F``) images are mapped by range: ``I`` within 0..255 is taken as is, within 0..65535
  as 16-bit; ``F`` within 0..1 is scaled by 255; anything else is stretched min..max.
* Memory: the conversions to RGB run on bands of rows cropped from the decoded image, so a
  decode peaks at about the decoded image plus the RGB result (at most ~12 bytes per pixel in
  any mode, measured 6-9.3; it was 24 for RGBA and 28 for 32-bit TIFFs).
* ICC profiles are not applied (as by OpenCV and by Pillow's plain decode).
* Reduced decoding (``reduce_to``): a JPEG can be decoded at 1/2, 1/4 or 1/8 of its size in the
  DCT domain (Pillow's ``Image.draft``), several times faster than a full decode and a fraction of
  its memory; ``decode_image(data, limits, reduce_to=(w, h))`` uses the smallest such scale that
  keeps the upright image at least ``w`` x ``h`` (other formats, and JPEGs too small to reduce,
  decode in full). The detector's scaled copy of a large photo is made this way. The limits apply to
  the full size, as always. :func:`read_header` gives the upright size and format without decoding.
* Speed: a plain JPEG (RGB or grayscale, ending in its EOI marker) is decoded by OpenCV,
  which is faster than Pillow; Pillow still parses the header and EXIF. Everything else,
  including a JPEG with trailing bytes (which is where truncation would hide), takes the
  Pillow path.

Every failure is a :class:`~facesearch.errors.FaceSearchError` with a ``reason``:
``IMAGE_EMPTY``, ``IMAGE_FORMAT_UNSUPPORTED``, ``IMAGE_TRUNCATED``, ``IMAGE_UNDECODABLE``
(corrupt data), ``IMAGE_TOO_SMALL``, ``IMAGE_TOO_LARGE`` and, for files, ``IMAGE_UNREADABLE``.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np
from PIL import (
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from facesearch.errors import FaceSearchError, ImageDecodeError, ImageTooLargeError, Reason
from facesearch.vision.image_limits import DecodeLimits, check_byte_size, check_dimensions, check_jpeg_scans

__all__ = [
    "DEFAULT_LIMITS",
    "SUPPORTED_FORMATS",
    "DecodeLimits",
    "ImageHeader",
    "decode_image",
    "jpeg_scan_count",
    "load_image",
    "read_header",
]

DEFAULT_LIMITS = DecodeLimits()

# Pillow format ids, tried in this order. Importing the plugins registers them in
# Image.OPEN; the tuple keeps them referenced (and says which module serves which).
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_PLUGINS = (
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
    GifImagePlugin,
    BmpImagePlugin,
    TiffImagePlugin,
)
_SUPPORTED_TEXT = "JPEG, PNG, WebP, GIF, BMP, TIFF"
_PREFIX_LEN = 16  # what Image.open hands to the format's accept()
_JPEG_EOI = b"\xff\xd9"
_OPENCV_JPEG_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_REDUCIBLE = frozenset({"JPEG", "MPO"})
_TRANSPOSING = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_T = TypeVar("_T")
# Errors Pillow raises when the data runs out mid-structure.
_OUT_OF_DATA = (EOFError, struct.error)


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What a photo's header says: its upright size (after EXIF orientation) and Pillow format id."""

    width: int
    height: int
    format: str

    @property
    def reducible(self) -> bool:
        """Whether ``decode_image(..., reduce_to=)`` can decode it at a reduced size (a JPEG)."""
        return self.format in _REDUCIBLE


def read_header(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> ImageHeader:
    """The photo's upright size and format, from its header alone, under ``limits`` (the same
    errors as :func:`decode_image` for what a header shows)."""
    return _guarded(_as_bytes(data), limits, _header)


def decode_image(
    data: bytes, limits: DecodeLimits = DEFAULT_LIMITS, *, reduce_to: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode an encoded photo into a C-contiguous, writable ``(H, W, 3)`` uint8 RGB array.

    ``data`` may be any bytes-like object. ``reduce_to=(width, height)``: a JPEG may come back
    smaller than its full size, but never smaller than that (see the module docstring). Raises
    :class:`ImageDecodeError` or :class:`ImageTooLargeError` (see the module docstring for the
    reasons); a ``TypeError`` if ``data`` is not bytes-like at all.
    """
    return _guarded(_as_bytes(data), limits, lambda d, lim: _decode(d, lim, reduce_to))


def _as_bytes(data: bytes) -> bytes:
    if not isinstance(data, bytes):
        if not isinstance(data, (bytearray, memoryview)):
            raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
        data = bytes(data)
    return data


def _guarded(data: bytes, limits: DecodeLimits, work: Callable[[bytes, DecodeLimits], _T]) -> _T:
    """Run ``work`` on checked bytes; every failure becomes an error with a reason."""
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)", reason=Reason.IMAGE_EMPTY)
    check_byte_size(len(data), limits)
    try:
        return work(data, limits)
    except FaceSearchError:
        raise
    except MemoryError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"image is too large to decode: {err}", reason=Reason.IMAGE_TOO_LARGE) from err
    except Exception as err:
        # Malformed input can make a third-party parser raise almost anything; the caller
        # gets one error type with a reason, and the cause stays chained for the log.
        raise ImageDecodeError(
            f"image data is corrupt: {type(err).__name__}: {err}", reason=Reason.IMAGE_UNDECODABLE
        ) from err


def load_image(path: str | os.PathLike[str], limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Read and decode the image file at ``path``; errors name the path.

    A file that cannot be read gives ``IMAGE_UNREADABLE``; one over ``limits.max_bytes``
    is refused without reading it all.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read(limits.max_bytes + 1)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ImageDecodeError(f"cannot read image file {name!r}: {reason}", reason=Reason.IMAGE_UNREADABLE) from err
    try:
        check_byte_size(len(data), limits, what=f"image file {name!r}")
        return decode_image(data, limits)
    except FaceSearchError as err:
        if name in err.message:
            raise
        raise type(err)(f"{name!r}: {err.message}", reason=err.reason) from err


def _header(data: bytes, limits: DecodeLimits) -> ImageHeader:
    with _open_header(data) as im:
        check_dimensions(im.width, im.height, limits)
        width, height = im.size
        if _orientation(im) in _TRANSPOSING:
            width, height = height, width
        return ImageHeader(width, height, str(im.format))


def _decode(data: bytes, limits: DecodeLimits, reduce_to: tuple[int, int] | None = None) -> np.ndarray:
    with _open_header(data) as im:
        check_dimensions(im.width, im.height, limits)
        if im.format in _REDUCIBLE:
            check_jpeg_scans(jpeg_scan_count(data, limits.max_jpeg_scans + 1), limits)
        if reduce_to is not None and im.format in _REDUCIBLE:
            width, height = reduce_to
            stored = (height, width) if _orientation(im) in _TRANSPOSING else (width, height)
            if im.width >= 2 * stored[0] and im.height >= 2 * stored[1]:
                im.draft(None, stored)  # DCT scaling: the smallest 1/2^k size still >= stored
                _load_pixels(im, data)
                return _apply_orientation(_to_rgb(im), _orientation(im))
        if _is_plain_complete_jpeg(im, data):
            pixels = _decode_jpeg_opencv(data, im.size)
            if pixels is not None:
                return _apply_orientation(pixels, _orientation(im))
        _load_pixels(im, data)
        check_dimensions(im.width, im.height, limits)  # a GIF frame may enlarge the canvas
        return _apply_orientation(_to_rgb(im), _orientation(im))


def _open_header(data: bytes) -> ImageFile.ImageFile:
    """Parse only the header, with the first supported format whose signature matches.

    This is ``Image.open`` restricted to :data:`SUPPORTED_FORMATS`, minus its global
    decompression-bomb check (ours runs next, with our limit).
    """
    prefix = data[:_PREFIX_LEN]
    failures: list[tuple[str, Exception]] = []
    for fmt in SUPPORTED_FORMATS:
        opener = Image.OPEN.get(fmt)  # absent only if this Pillow lacks the codec (e.g. WebP)
        if opener is None:
            continue
        factory, accept = opener
        recognised = True if accept is None else accept(prefix)
        if isinstance(recognised, str) or not recognised:
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (Image.DecompressionBombError, MemoryError):
            raise
        except Exception as err:
            failures.append((fmt, err))
    if not failures:
        raise ImageDecodeError(
            f"unsupported image format: the data looks like {describe_unknown(data)}; "
            f"supported formats are {_SUPPORTED_TEXT}",
            reason=Reason.IMAGE_FORMAT_UNSUPPORTED,
        )
    fmt, cause = failures[0]
    if _is_out_of_data(cause) or _is_cut_short(fmt, data):
        raise ImageDecodeError(
            f"{fmt} image is truncated ({len(data)} bytes end inside its header): {cause}",
            reason=Reason.IMAGE_TRUNCATED,
        ) from cause
    raise ImageDecodeError(
        f"{fmt} image header is corrupt: {type(cause).__name__}: {cause}", reason=Reason.IMAGE_UNDECODABLE
    ) from cause


def _is_out_of_data(err: Exception) -> bool:
    return isinstance(err, _OUT_OF_DATA) or (isinstance(err, OSError) and "truncat" in str(err).lower())


def _is_cut_short(fmt: str | None, data: bytes) -> bool:
    """Whether a container that failed to decode also lacks its declared end.

    Only consulted once decoding has failed, to tell truncation (an upload cut off, the
    common case) from corruption where the decoder's own error does not (libwebp, a JPEG
    cut inside its first markers, a GIF cut before its first frame).
    """
    if fmt in ("JPEG", "MPO"):
        return not data.endswith(_JPEG_EOI)
    if fmt == "WEBP" and len(data) >= 8:
        return len(data) < 8 + int.from_bytes(data[4:8], "little")
    if fmt == "GIF":
        return not data.endswith(b"\x3b")
    if fmt == "PNG":
        return b"IEND" not in data[-12:]
    if fmt == "TIFF":
        return _tiff_cut_short(data)
    if fmt == "BMP":  # the 14-byte file header, then an info header that starts with its own size
        return len(data) < 18 or len(data) < 14 + int.from_bytes(data[14:18], "little")
    return False


_TIFF_EXTENT_TAGS = {273: 279, 324: 325}  # StripOffsets -> StripByteCounts, TileOffsets -> TileByteCounts
_TIFF_INT_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
_TIFF_EXTENT_TAG_SET = frozenset({*_TIFF_EXTENT_TAGS, *_TIFF_EXTENT_TAGS.values()})
# Bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., IFD8).
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_TIFF_TYPE_SIZES |= {16: 8, 17: 8, 18: 8}


def _tiff_cut_short(data: bytes) -> bool:
    """Whether a TIFF's first directory, a value it points at, or its strips/tiles end past the data.

    Pillow writes a compressed TIFF's directory after the pixels, so a cut-off upload loses the
    directory ("missing dimensions") rather than pixels; both are truncation.
    """
    order = "<" if data[:2] == b"II" else ">"
    try:
        big = struct.unpack_from(order + "H", data, 2)[0] == 43
        offset_fmt, count_fmt, entry = ("Q", "Q", 20) if big else ("I", "H", 12)
        inline_bytes = struct.calcsize(offset_fmt)
        ifd = struct.unpack_from(order + offset_fmt, data, 8 if big else 4)[0]
        if ifd < (16 if big else 8):
            return False  # a directory inside the file header: corrupt, not cut off
        n = struct.unpack_from(order + count_fmt, data, ifd)[0]
        first = ifd + struct.calcsize(count_fmt)
        if first + n * entry > len(data):
            return True
        values: dict[int, tuple[int, ...]] = {}
        for i in range(min(n, 4096)):
            at = first + i * entry
            tag, kind = struct.unpack_from(order + "HH", data, at)
            count = struct.unpack_from(order + offset_fmt, data, at + 4)[0]
            size = _TIFF_TYPE_SIZES.get(kind, 1) * count
            where = at + 4 + inline_bytes
            if size > inline_bytes:
                where = struct.unpack_from(order + offset_fmt, data, where)[0]
            if where + size > len(data):
                return True
            if kind in _TIFF_INT_TYPES and count <= 1 << 20 and tag in _TIFF_EXTENT_TAG_SET:
                values[tag] = struct.unpack_from(f"{order}{count}{_TIFF_INT_TYPES[kind]}", data, where)
    except struct.error:
        return True
    for offsets_tag, counts_tag in _TIFF_EXTENT_TAGS.items():
        ends = [o + c for o, c in zip(values.get(offsets_tag, ()), values.get(counts_tag, ()), strict=False)]
        if ends and max(ends) > len(data):
            return True
    return False


def _load_pixels(im: ImageFile.ImageFile, data: bytes) -> None:
    try:
        im.load()
    except (Image.DecompressionBombError, MemoryError):
        raise
    except Exception as err:
        if _is_out_of_data(err) or _is_cut_short(im.format, data):
            raise ImageDecodeError(f"{im.format} image is truncated: {err}", reason=Reason.IMAGE_TRUNCATED) from err
        raise ImageDecodeError(
            f"{im.format} image data is corrupt: {type(err).__name__}: {err}", reason=Reason.IMAGE_UNDECODABLE
        ) from err


# --- JPEG scans (work bombs) ---------------------------------------------------------------

# In entropy-coded data an FF byte is followed by 00 (a stuffed FF), a restart marker D0..D7,
# or fill FFs before a marker; so a marker is the first FF followed by anything else (no "\xff+"
# in a search: it would retry every start inside a long run of FFs, quadratic).
_JPEG_NEXT_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_JPEG_MARKER_AT = re.compile(rb"\xff++([\x00-\xfe])")
_JPEG_SOS, _JPEG_EOI_BYTE = 0xDA, 0xD9
_JPEG_STANDALONE = frozenset({0x00, 0x01, *range(0xD0, 0xD8)})  # TEM and RSTn: no length field
_JPEG_MAX_MARKERS = 4096  # a real JPEG has a few dozen marker segments outside its scans


def jpeg_scan_count(data: bytes, stop_at: int | None = None) -> int:
    """How many scans (SOS markers) the first image of a JPEG has, from its marker structure.

    Walks the marker segments by their lengths (so bytes inside an EXIF thumbnail or an ICC
    profile are not taken for markers) and skips each scan's entropy-coded data with one regex
    search, up to the first EOI: linear in the data, at C speed. Malformed structure just ends
    the walk (the decoder reports it); more than 4096 other markers than scans are refused
    (``IMAGE_UNDECODABLE``: nothing real has them, and the walk stays bounded). ``stop_at``: stop
    counting there.
    """
    pos, scans, markers, size = 2, 0, 0, len(data)
    while stop_at is None or scans < stop_at:
        found = _JPEG_MARKER_AT.match(data, pos) or _JPEG_NEXT_MARKER.search(data, pos)
        if found is None:
            break
        marker, pos = data[found.end() - 1], found.end()
        markers += marker != _JPEG_SOS  # scans are bounded by stop_at
        if markers > _JPEG_MAX_MARKERS:
            raise ImageDecodeError(
                f"JPEG image has more than {_JPEG_MAX_MARKERS} marker segments (a real one has a few dozen)",
                reason=Reason.IMAGE_UNDECODABLE,
            )
        if marker == _JPEG_EOI_BYTE:
            break
        if marker in _JPEG_STANDALONE:
            continue
        length = int.from_bytes(data[pos : pos + 2], "big")
        if pos + 2 > size or length < 2:
            break
        pos += length
        if marker == _JPEG_SOS:
            scans += 1
            found = _JPEG_NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


# --- naming what is not an image ----------------------------------------------------------

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"8BPS", "a Photoshop (PSD) file"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
    (b"\xff\x0a", "a JPEG XL image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
)
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")


def describe_unknown(data: bytes) -> str:
    """A short guess at what non-image (or unsupported-image) bytes are, for messages."""
    for magic, what in _SIGNATURES:
        if data.startswith(magic):
            return what
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIF_BRANDS:
            return "a HEIC/HEIF image (convert it to JPEG)"
        if brand in (b"avif", b"avis"):
            return "an AVIF image (convert it to JPEG)"
        return "an ISO media file (video?)"
    head = data[:512]
    text = codecs.getincrementaldecoder("utf-8")(errors="strict")
    try:
        chars = text.decode(head, final=False)
    except UnicodeDecodeError:
        return "unrecognised binary data"
    if not all(c.isprintable() or c in "\t\r\n\ufeff" for c in chars):
        return "unrecognised binary data"
    if head.lstrip().startswith(b"data:image/") or _BASE64_TEXT.fullmatch(head):
        return "base64 text (send the raw image bytes, not base64)"
    return "text, not an image"


# --- OpenCV fast path -------------------------------------------------------------------


def _is_plain_complete_jpeg(im: ImageFile.ImageFile, data: bytes) -> bool:
    """A JPEG OpenCV decodes exactly as Pillow would, and whose data is all there.

    libjpeg (in OpenCV) pads a truncated scan with grey and only warns, so OpenCV is used
    only when the data ends with the EOI marker; past the header, ``FF D9`` can appear
    nowhere else. CMYK/YCCK JPEGs need Pillow's Adobe handling.
    """
    return im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L") and data.endswith(_JPEG_EOI)


def _decode_jpeg_opencv(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """RGB pixels without EXIF rotation, or None to fall back to Pillow."""
    try:
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _OPENCV_JPEG_FLAGS)
    except cv2.error:
        return None
    width, height = size
    if pixels is None or pixels.shape != (height, width, 3) or pixels.dtype != np.uint8:
        return None
    return pixels


# --- orientation ------------------------------------------------------------------------


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8); 1 when absent, invalid or unreadable."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        # A corrupt EXIF block must not cost a decodable photo; it only loses rotation.
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright for EXIF ``orientation``; always C-contiguous."""
    if orientation == 2:
        out = cv2.flip(pixels, 1)
    elif orientation == 3:
        out = cv2.rotate(pixels, cv2.ROTATE_180)
    elif orientation == 4:
        out = cv2.flip(pixels, 0)
    elif orientation == 5:
        out = cv2.transpose(pixels)
    elif orientation == 6:
        out = cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    elif orientation == 7:
        out = cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180)
    elif orientation == 8:
        out = cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    else:
        out = pixels
    return np.ascontiguousarray(out)


# --- pixel modes ------------------------------------------------------------------------


# Conversions run on bands of rows cropped from the decoded image, so neither a full-size copy of
# Pillow's pixels nor a wide (uint16/uint32/float64) temporary is ever made: decoding peaks at the
# decoded image plus the RGB result plus ~1 MB per band, at most ~12 bytes per pixel in every mode
# (it was 24 for RGBA and 28 for 32-bit TIFFs: 1.1 GB for a 40 Mpx one).
_BAND_PIXELS = 1 << 18


def _bands(height: int, width: int) -> Iterator[slice]:
    rows = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        yield slice(top, min(height, top + rows))


def _cropped(im: Image.Image) -> Iterator[tuple[slice, Image.Image]]:
    """The image a band of rows at a time (each a small Pillow copy, with its palette and info)."""
    width, height = im.size
    for band in _bands(height, width):
        yield band, im.crop((0, band.start, width, band.stop))


def _to_rgb(im: Image.Image) -> np.ndarray:
    """The loaded image's pixels as an (H, W, 3) uint8 RGB array (see module docstring)."""
    mode = im.mode
    if mode.startswith("I;16"):
        return _gray_to_rgb(_scale_16bit(im))
    if mode == "I":
        return _gray_to_rgb(_scale_int(im))
    if mode == "F":
        return _gray_to_rgb(_scale_float(im))
    out = np.empty((im.height, im.width, 3), dtype=np.uint8)
    try:
        if mode in _ALPHA_MODES or "transparency" in im.info:
            for band, part in _cropped(im):
                straight = part.convert("LA") if part.mode == "La" else part  # Pillow converts La only to LA
                out[band] = _over_white(np.asarray(straight if mode == "RGBA" else straight.convert("RGBA")))
        else:
            for band, part in _cropped(im):
                out[band] = np.asarray(part if mode == "RGB" else part.convert("RGB"))
    except ValueError as err:
        raise ImageDecodeError(
            f"{im.format} image has pixel mode {mode!r}, which cannot be converted to RGB: {err}",
            reason=Reason.IMAGE_FORMAT_UNSUPPORTED,
        ) from err
    return out


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(gray), cv2.COLOR_GRAY2RGB))


def _scale_16bit(im: Image.Image) -> np.ndarray:
    """0..65535 to 0..255 with rounding (65535 -> 255, not clipped at 255)."""
    out = np.empty((im.height, im.width), dtype=np.uint8)
    for band, part in _cropped(im):
        out[band] = (np.asarray(part).astype(np.uint32) * 255 + 32767) // 65535
    return out


def _scale_int(im: Image.Image) -> np.ndarray:
    """32-bit integers: within 0..255 as is, within 0..65535 as 16-bit, anything else stretched."""
    extrema = im.getextrema()
    lo, hi = int(extrema[0]), int(extrema[1])  # type: ignore[arg-type]
    if lo >= 0 and hi <= 65535:
        out = np.empty((im.height, im.width), dtype=np.uint8)
        for band, part in _cropped(im):
            values = np.asarray(part).astype(np.int64)
            out[band] = values if hi <= 255 else (values * 255 + 32767) // 65535
        return out
    return _stretch(im, float(lo), float(hi))


def _finite(values: np.ndarray) -> np.ndarray:
    return np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _scale_float(im: Image.Image) -> np.ndarray:
    """NaN and infinities count as 0; within 0..1 scaled by 255, anything else stretched min..max."""
    lo, hi = np.inf, -np.inf
    for _, part in _cropped(im):
        finite = _finite(np.asarray(part))
        lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if lo >= 0.0 and hi <= 1.0:
        return _stretch(im, 0.0, 1.0)
    return _stretch(im, lo, hi)


def _stretch(im: Image.Image, lo: float, hi: float) -> np.ndarray:
    """``lo``..``hi`` to 0..255, rounded, a band at a time (NaN and infinities as 0)."""
    out = np.zeros((im.height, im.width), dtype=np.uint8)
    if hi <= lo:
        return out
    scale = 255.0 / (hi - lo)
    for band, part in _cropped(im):
        out[band] = np.rint((_finite(np.asarray(part)) - lo) * scale)
    return out


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGBA over a white background (in uint16: rgb*a + 255*(255-a) + 127
    is at most 65152)."""
    if rgba[..., 3].min() == 255:
        return rgba[..., :3]
    rgb = rgba[..., :3].astype(np.uint16)
    a = rgba[..., 3:4].astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
