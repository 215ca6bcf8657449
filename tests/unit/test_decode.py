"""facesearch.vision.decode: every photo becomes an upright HxWx3 uint8 RGB array, or a reasoned error."""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from facesearch.errors import FaceSearchError, ImageDecodeError, ImageTooLargeError
from facesearch.vision.decode import DEFAULT_LIMITS, DecodeLimits, decode_image, load_image

KNOWN_REASONS = {
    "IMAGE_EMPTY",
    "IMAGE_FORMAT_UNSUPPORTED",
    "IMAGE_TRUNCATED",
    "IMAGE_UNDECODABLE",
    "IMAGE_TOO_SMALL",
    "IMAGE_TOO_LARGE",
}

# Orientation tag -> how the stored pixels must be turned to show upright (EXIF 2.3, and
# the same as Pillow's ImageOps.exif_transpose, which the tests also check against).
UPRIGHT = {
    1: lambda s: s,
    2: lambda s: s[:, ::-1],
    3: lambda s: s[::-1, ::-1],
    4: lambda s: s[::-1],
    5: lambda s: s.transpose(1, 0, 2),
    6: lambda s: np.rot90(s, -1),
    7: lambda s: s[::-1, ::-1].transpose(1, 0, 2),
    8: lambda s: np.rot90(s, 1),
}


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _smooth(height: int, width: int) -> np.ndarray:
    """A non-symmetric colour gradient that survives JPEG well."""
    y, x = np.mgrid[0:height, 0:width]
    return np.dstack([x * 255 // (width - 1), y * 255 // (height - 1), (x + 2 * y) % 256]).astype(np.uint8)


def _encode(image: Image.Image | np.ndarray, fmt: str, **params: object) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _reason(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(FaceSearchError) as info:
        decode_image(data, limits)
    return info.value.reason


def _assert_rgb(pixels: np.ndarray, height: int, width: int) -> None:
    assert pixels.shape == (height, width, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous
    assert pixels.flags.writeable


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with almost no pixel data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(_encode(_smooth(32, 32), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# --- inputs that are not images -----------------------------------------------------------


def test_empty_bytes_are_image_empty() -> None:
    assert _reason(b"") == "IMAGE_EMPTY"


def test_bytes_like_inputs_decode_like_bytes() -> None:
    data = _encode(_noise(20, 30), "PNG")
    expected = decode_image(data)
    assert np.array_equal(decode_image(bytearray(data)), expected)  # type: ignore[arg-type]
    assert np.array_equal(decode_image(memoryview(data)), expected)  # type: ignore[arg-type]


def test_non_bytes_argument_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="expects bytes"):
        decode_image("a string")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"hello, this is not a photo\n", "text"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "text"),
        (b"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk", "base64"),
        (b"data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ", "base64"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        (bytes(range(7, 200)), "binary"),
    ],
)
def test_unknown_data_is_format_unsupported_and_says_what_it_looks_like(data: bytes, named: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.reason == "IMAGE_FORMAT_UNSUPPORTED"
    assert named in info.value.message
    assert "JPEG" in info.value.message  # lists what is supported


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "PCX"])
def test_formats_outside_the_supported_set_are_refused(fmt: str) -> None:
    data = _encode(_noise(32, 32), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would open it
    assert _reason(data) == "IMAGE_FORMAT_UNSUPPORTED"


# --- truncated and corrupt data -----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_data_cut_in_half_is_image_truncated(fmt: str) -> None:
    data = _encode(_noise(64, 80), fmt)
    assert _reason(data[: len(data) // 2]) == "IMAGE_TRUNCATED"


@pytest.mark.parametrize("cut", [4, 20, 100])
def test_jpeg_cut_inside_its_header_is_image_truncated(cut: int) -> None:
    data = _encode(_noise(64, 80), "JPEG")
    assert _reason(data[:cut]) == "IMAGE_TRUNCATED"


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff" + bytes(200) + b"\xff\xd9",
        b"\x89PNG\r\n\x1a\n" + bytes(100) + _png_chunk(b"IEND", b""),
        b"GIF89a" + bytes(100) + b";",
        b"BM" + bytes(100),
        b"II*\x00" + bytes(100),
    ],
)
def test_recognised_signature_with_garbage_header_is_undecodable(data: bytes) -> None:
    """Garbage where the header should be, but the data is complete: corrupt, not truncated."""
    assert _reason(data) == "IMAGE_UNDECODABLE"


def test_truncated_jpeg_fails_even_where_opencv_would_pad_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Some libjpeg builds fill a cut scan with grey and only warn; the cut must still show."""
    data = _encode(_noise(64, 80), "JPEG")

    def lenient_imdecode(buf: np.ndarray, flags: int) -> np.ndarray:
        return np.full((64, 80, 3), 128, dtype=np.uint8)

    monkeypatch.setattr(cv2, "imdecode", lenient_imdecode)
    assert _reason(data[: len(data) // 2]) == "IMAGE_TRUNCATED"
    assert _reason(data[:-1]) == "IMAGE_TRUNCATED"


def test_jpeg_with_trailing_bytes_still_decodes_to_the_same_pixels() -> None:
    data = _encode(_smooth(48, 64), "JPEG")
    padded = decode_image(data + b"\x00" * 100 + b"trailer")
    assert np.array_equal(padded, decode_image(data))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on corrupt TIFF tags
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_mangled_files_give_only_reasoned_errors(fmt: str) -> None:
    """Random truncations and byte flips never let a raw Pillow/OpenCV exception out."""
    data = _encode(_noise(24, 32), fmt)
    rng = np.random.default_rng(1234)
    outcomes: set[str] = set()
    for trial in range(60):
        mangled = bytearray(data)
        if trial % 2:
            mangled = mangled[: int(rng.integers(1, len(data)))]
        else:
            for pos in rng.integers(0, len(data), int(rng.integers(1, 9))):
                mangled[pos] = int(rng.integers(0, 256))
        try:
            pixels = decode_image(bytes(mangled))
        except FaceSearchError as err:
            assert err.reason in KNOWN_REASONS, err
            outcomes.add(err.reason)
        else:
            assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
            outcomes.add("decoded")
    assert outcomes - {"decoded"}  # the mangling did break some files


# --- size limits --------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1, 1), (15, 200), (200, 15)])
def test_images_below_min_side_are_image_too_small(width: int, height: int) -> None:
    data = _encode(Image.new("RGB", (width, height), (9, 9, 9)), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.reason == "IMAGE_TOO_SMALL"
    assert f"{width}x{height}" in info.value.message


def test_min_side_image_is_accepted_and_min_side_is_configurable() -> None:
    data = _encode(Image.new("RGB", (16, 16), (9, 9, 9)), "PNG")
    _assert_rgb(decode_image(data), 16, 16)
    assert _reason(data, DecodeLimits(min_side=17)) == "IMAGE_TOO_SMALL"
    tiny = _encode(Image.new("RGB", (1, 1), (9, 200, 9)), "PNG")
    assert decode_image(tiny, DecodeLimits(min_side=1)).tolist() == [[[9, 200, 9]]]


@pytest.mark.parametrize("claim", [_png_claiming, _jpeg_claiming])
def test_huge_dimensions_in_the_header_are_refused_before_decoding(claim: Callable[[int, int], bytes]) -> None:
    data = claim(60_000, 60_000)
    assert len(data) < 2_000
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data)
    assert info.value.reason == "IMAGE_TOO_LARGE"
    assert "60000x60000" in info.value.message


def test_pixel_limit_is_ours_not_pillows_global_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow's own guard would warn above 89 Mpx; ours refuses at 40 Mpx and warns nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError, match="40000000"):
            decode_image(_png_claiming(10_000, 10_000))
    # With Pillow's global limit far below the image, Image.open would raise; we decode.
    data = _encode(_noise(100, 100), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_rgb(decode_image(data), 100, 100)
    with pytest.raises(ImageTooLargeError, match="5000 pixels"):
        decode_image(data, DecodeLimits(max_pixels=5_000))


def test_byte_limit() -> None:
    data = _encode(_noise(40, 40), "PNG")
    assert _reason(data, DecodeLimits(max_bytes=len(data) - 1)) == "IMAGE_TOO_LARGE"
    _assert_rgb(decode_image(data, DecodeLimits(max_bytes=len(data))), 40, 40)


def test_limits_are_frozen_validated_and_default_to_the_documented_values() -> None:
    limits = DecodeLimits()
    assert (limits.max_pixels, limits.max_bytes, limits.min_side) == (40_000_000, 32 * 1024 * 1024, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_pixels = 1  # type: ignore[misc]
    assert not hasattr(limits, "__dict__")
    for bad in ({"max_pixels": 0}, {"max_bytes": -1}, {"min_side": 0}, {"min_side": 100, "max_pixels": 9_999}):
        with pytest.raises(ValueError, match="DecodeLimits"):
            DecodeLimits(**bad)


# --- formats and pixel modes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"})],
)
def test_lossless_formats_decode_to_the_exact_pixels(fmt: str, params: dict[str, object]) -> None:
    source = _noise(37, 53)
    pixels = decode_image(_encode(source, fmt, **params))
    _assert_rgb(pixels, 37, 53)
    assert np.array_equal(pixels, source)


def test_lossy_webp_is_close_to_the_source() -> None:
    source = _smooth(64, 96)
    pixels = decode_image(_encode(source, "WEBP", quality=95))
    _assert_rgb(pixels, 64, 96)
    assert np.abs(pixels.astype(int) - source).mean() < 3


def test_jpeg_is_rgb_in_the_right_channel_order() -> None:
    source = np.zeros((32, 48, 3), dtype=np.uint8)
    source[:, :16] = (230, 20, 20)
    source[:, 16:32] = (20, 230, 20)
    source[:, 32:] = (20, 20, 230)
    pixels = decode_image(_encode(source, "JPEG", quality=95))
    for column, channel in ((8, 0), (24, 1), (40, 2)):
        assert int(np.argmax(pixels[16, column])) == channel
        assert np.abs(pixels[16, column].astype(int) - source[16, column]).max() < 12


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = _noise(30, 40)[..., 0]
    pixels = decode_image(_encode(Image.fromarray(gray, "L"), "PNG"))
    _assert_rgb(pixels, 30, 40)
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], gray)
    jpeg = decode_image(_encode(Image.fromarray(gray, "L"), "JPEG"))
    assert np.array_equal(jpeg[..., 0], jpeg[..., 2])
    assert np.array_equal(jpeg[..., 0], _pillow_rgb(_encode(Image.fromarray(gray, "L"), "JPEG"))[..., 0])


def test_cmyk_jpeg_becomes_the_rgb_it_encodes() -> None:
    source = np.zeros((32, 64, 3), dtype=np.uint8)
    blocks = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (240, 240, 240)]
    for i, colour in enumerate(blocks):
        source[:, i * 16 : (i + 1) * 16] = colour
    data = _encode(Image.fromarray(source).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    pixels = decode_image(data)
    _assert_rgb(pixels, 32, 64)
    for i, colour in enumerate(blocks):
        assert np.abs(pixels[16, i * 16 + 8].astype(int) - colour).max() <= 12


def test_16bit_gray_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 1000, 32768, 40000, 65535]], dtype=np.uint16).repeat(16, axis=0)
    values = np.tile(values, (1, 3))
    data = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    pixels = decode_image(data)
    _assert_rgb(pixels, 16, 18)
    assert pixels[0, :6, 0].tolist() == [0, 1, 4, 128, 156, 255]
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_rgb_is_scaled_to_8bit_in_rgb_order(fmt: str) -> None:
    y, x = np.mgrid[0:20, 0:30]
    rgb16 = np.dstack([x * 2200, y * 3400, 65535 - x * 2000]).astype(np.uint16)
    ok, encoded = cv2.imencode(f".{fmt.lower()}", rgb16[..., ::-1])  # OpenCV writes BGR
    assert ok
    pixels = decode_image(encoded.tobytes())
    _assert_rgb(pixels, 20, 30)
    exact = np.rint(rgb16 * (255 / 65535))
    assert np.abs(pixels - exact).max() <= 1


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("GIF", {}, 0),
        ("PNG", {}, 0),  # APNG
        ("WEBP", {"lossless": True}, 0),
        ("TIFF", {}, 0),  # multi-page
        ("MPO", {"quality": 95}, 4),  # multi-picture JPEG, as phone cameras write
    ],
)
def test_multi_frame_images_give_their_first_frame(fmt: str, params: dict[str, object], tolerance: int) -> None:
    frames = [Image.new("RGB", (32, 24), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **params)
    assert getattr(Image.open(io.BytesIO(buf.getvalue())), "n_frames", 1) == 3
    pixels = decode_image(buf.getvalue())
    _assert_rgb(pixels, 24, 32)
    assert np.abs(pixels.astype(int) - (255, 0, 0)).max() <= tolerance


def test_palette_png_with_transparency_is_composited_over_white() -> None:
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 0, 0, 10, 120, 200] + [0] * 762)
    im.paste(1, (0, 0, 10, 20))
    data = _encode(im, "PNG", transparency=0)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    pixels = decode_image(data)
    assert np.all(pixels[:, :10] == (10, 120, 200))
    assert np.all(pixels[:, 10:] == 255)  # transparent black shows as white


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_over_white(mode: str) -> None:
    rgba = np.zeros((16, 24, 4), dtype=np.uint8)
    rgba[..., :3] = 40
    rgba[:, :8, 3] = 255
    rgba[:, 8:16, 3] = 128
    rgba[:, 16:, 3] = 0
    im = Image.fromarray(rgba, "RGBA")
    pixels = decode_image(_encode(im if mode == "RGBA" else im.convert("LA"), "PNG"))
    _assert_rgb(pixels, 16, 24)
    assert np.all(pixels[:, :8] == 40)
    assert np.all(np.abs(pixels[:, 8:16].astype(int) - (40 * 128 + 255 * 127) / 255) <= 1)
    assert np.all(pixels[:, 16:] == 255)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "I;16", "I;16B"])
def test_tiff_pixel_modes_become_rgb_like_pillow(mode: str) -> None:
    source = Image.fromarray(_smooth(20, 24)).convert("RGBA")
    im = source.convert(mode) if mode not in ("I;16", "I;16B") else Image.new(mode, (24, 20), 30000)
    data = _encode(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    pixels = decode_image(data)
    _assert_rgb(pixels, 20, 24)
    if mode.startswith("I;16"):
        assert np.all(pixels == 117)  # round(30000 * 255 / 65535)
    elif "A" not in mode:
        assert np.array_equal(pixels, _pillow_rgb(data))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.full((16, 16), 200, dtype=np.int32), 200),  # 8-bit range kept
        (np.full((16, 16), 65535, dtype=np.int32), 255),  # 16-bit range scaled
        (np.full((16, 16), 0.5, dtype=np.float32), 128),  # 0..1 float scaled
    ],
)
def test_32bit_int_and_float_images_are_mapped_by_range(values: np.ndarray, expected: int) -> None:
    values = values.copy()
    values[0, 0] = 0
    pixels = decode_image(_encode(Image.fromarray(values), "TIFF"))
    _assert_rgb(pixels, 16, 16)
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert np.all(pixels[1:] == expected)


# --- EXIF orientation ---------------------------------------------------------------------


ORIENTED_FORMATS: dict[str, tuple[str, dict[str, object]]] = {
    "JPEG": ("JPEG", {"quality": 95}),
    "PNG": ("PNG", {}),
    "WEBP": ("WEBP", {"lossless": True}),
    "TIFF": ("TIFF", {}),
    "TIFF-LZW": ("TIFF", {"compression": "tiff_lzw"}),
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("case", sorted(ORIENTED_FORMATS))
def test_exif_orientation_is_applied_once(case: str, orientation: int) -> None:
    fmt, params = ORIENTED_FORMATS[case]
    stored = _noise(24, 40, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(stored, fmt, exif=exif, **params)
    if fmt == "JPEG":  # lossy: what is stored is what the plain decode gives (no rotation)
        stored = _pillow_rgb(data)
        assert stored.shape == (24, 40, 3)
    upright = UPRIGHT[orientation](stored)
    with Image.open(io.BytesIO(data)) as im:  # the table agrees with Pillow's own transpose
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(im).convert("RGB")), upright)
    pixels = decode_image(data)
    _assert_rgb(pixels, *upright.shape[:2])
    if fmt == "JPEG":
        assert np.abs(pixels.astype(int) - upright).max() <= 3
        assert np.abs(pixels.astype(int) - upright).mean() < 0.5
    else:
        assert np.array_equal(pixels, upright)


@pytest.mark.parametrize("orientation", [0, 9, 300])
def test_out_of_range_orientation_is_ignored(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    source = _noise(20, 30)
    assert np.array_equal(decode_image(_encode(source, "PNG", exif=exif)), source)


# --- files --------------------------------------------------------------------------------


def test_load_image_reads_a_file(tmp_path: Path) -> None:
    source = _noise(20, 30)
    path = tmp_path / "photo.png"
    path.write_bytes(_encode(source, "PNG"))
    assert np.array_equal(load_image(path), source)
    assert np.array_equal(load_image(str(path), DecodeLimits()), source)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_files_name_the_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.jpg"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    assert info.value.reason == "IMAGE_UNREADABLE"
    assert str(path) in info.value.message


def test_file_decode_errors_keep_their_reason_and_name_the_path(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(ImageDecodeError) as info:
        load_image(text)
    assert info.value.reason == "IMAGE_FORMAT_UNSUPPORTED"
    assert str(text) in info.value.message
    big = tmp_path / "big.png"
    big.write_bytes(_encode(_noise(40, 40), "PNG"))
    with pytest.raises(ImageTooLargeError) as too_large:
        load_image(big, DecodeLimits(max_bytes=100))
    assert str(big) in too_large.value.message


# --- real photos --------------------------------------------------------------------------


def test_lfw_jpegs_decode_like_pillow(lfw_dir: Path) -> None:
    paths = sorted((lfw_dir / "images").glob("*/*.jpg"))[:8]
    assert len(paths) == 8, f"too few LFW JPEGs under {lfw_dir}"
    for path in paths:
        data = path.read_bytes()
        pixels = decode_image(data)
        _assert_rgb(pixels, 250, 250)
        reference = _pillow_rgb(data).astype(int)
        diff = np.abs(pixels.astype(int) - reference)
        assert diff.max() <= 3, path
        assert diff.mean() < 0.5, path
        assert np.array_equal(load_image(path), pixels)
