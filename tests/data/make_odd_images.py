"""Write ``tests/data/odd_images/``: the odd, broken and hostile photos ``decode_image`` is fuzzed with.

Every file is made from one committed fixture photo (``lfw-dev/images/AJ_Cook/AJ_Cook_0001.jpg``,
scaled down to 48x64 so the corpus stays small) or built byte by byte, with Pillow; rerunning the
script writes the same files. ``expected.json`` says what each must give: ``{"shape": [h, w]}``
(decoded, upright) or ``{"reason": "..."}`` (the ``FaceSearchError`` reason), under the default
``DecodeLimits``. ``tests/unit/test_decode_fuzz.py`` checks each file, every truncation of each,
and byte mutations of them.

    .venv/bin/python tests/data/make_odd_images.py            # --out tests/data/odd_images
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "lfw-dev" / "images" / "AJ_Cook" / "AJ_Cook_0001.jpg"
WIDTH, HEIGHT = 48, 64  # not square, so a transposing EXIF orientation shows in the shape
UPRIGHT = [HEIGHT, WIDTH]
TURNED = [WIDTH, HEIGHT]


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_claiming(width: int, height: int, depth: int = 8, color: int = 2) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    idat = zlib.compress(b"\0" * 256)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _jpeg_sof_patched(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header's size replaced (a decompression bomb's header on real data)."""
    for sof in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(sof)
        if at > 0:
            return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]
    raise ValueError("no SOF0/SOF2 marker")


def _repeated_scans(data: bytes, extra: int) -> bytes:
    """A progressive JPEG with its last scan repeated ``extra`` times (a decode-time bomb)."""
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * extra + b"\xff\xd9"


def _with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(image, "JPEG", quality=90, exif=exif.tobytes())


def _bmp_claiming(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 54) + info + bytes(64)


def _gif_claiming(width: int, height: int) -> bytes:
    small = _encode(Image.new("P", (16, 16)), "GIF")
    screen = struct.pack("<HH", width, height)
    body = small[10:]
    at = body.find(b",")  # image descriptor: its size follows the left/top offsets
    body = body[: at + 5] + screen + body[at + 9 :]
    return small[:6] + screen + body


def _webp_claiming(width: int, height: int) -> bytes:
    """A lossless WebP (VP8L) header claiming ``width`` x ``height`` with no real image data."""
    bits = (width - 1) | ((height - 1) << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + bytes(16)
    chunk = b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def _tiff_claiming(width: int, height: int) -> bytes:
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),
        (278, 4, 1, height),
        (279, 4, 1, 64),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(64)


def _tiff_jpeg_strip(jpeg: bytes, width: int, height: int) -> bytes:
    """A grayscale TIFF whose one strip is ``jpeg`` (Compression 7): libtiff decodes it itself."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 7), (262, 3, 1, 1)]
    entries += [(273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(jpeg))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + jpeg


def _iso_media(brand: bytes) -> bytes:
    ftyp = b"ftyp" + brand + b"\0\0\0\0" + b"mif1" + brand
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + bytes(64)


def build(base: Image.Image) -> dict[str, tuple[bytes, dict[str, object]]]:
    """Every corpus file: name -> (bytes, expected outcome)."""
    rgb = base.convert("RGB")
    ok: dict[str, object] = {"shape": UPRIGHT}
    gray16 = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), rgb.rotate(180)]
    jpeg = _encode(rgb, "JPEG", quality=90)
    progressive = _encode(rgb, "JPEG", quality=90, progressive=True)
    files: dict[str, tuple[bytes, dict[str, object]]] = {
        "baseline.jpg": (jpeg, ok),
        "progressive.jpg": (progressive, ok),
        "grayscale.jpg": (_encode(rgb.convert("L"), "JPEG", quality=90), ok),
        "cmyk.jpg": (_encode(rgb.convert("CMYK"), "JPEG", quality=90), ok),
        "cmyk_progressive.jpg": (_encode(rgb.convert("CMYK"), "JPEG", quality=90, progressive=True), ok),
        "subsampling_444.jpg": (_encode(rgb, "JPEG", quality=95, subsampling=0), ok),
        "restart_markers.jpg": (_encode(rgb, "JPEG", quality=90, restart_marker_blocks=1), ok),
        "trailing_bytes.jpg": (jpeg + b"\0" * 100, ok),
        "mpo.mpo": (_encode(frames[0], "MPO", save_all=True, append_images=frames[1:2]), ok),
        "rgb.png": (_encode(rgb, "PNG"), ok),
        "interlaced.png": (_interlaced_png(rgb), ok),
        "gray16.png": (_encode(gray16, "PNG"), ok),
        "rgb16.png": (_rgb16_png(rgb), ok),
        "rgba.png": (_encode(rgba, "PNG"), ok),
        "la.png": (_encode(rgba.convert("LA"), "PNG"), ok),
        "palette_alpha.png": (_encode(rgba.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0), ok),
        "bilevel.png": (_encode(rgb.convert("1"), "PNG"), ok),
        "apng.png": (_encode(frames[0], "PNG", save_all=True, append_images=frames[1:]), ok),
        "animated.gif": (_encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50), ok),
        "animated.webp": (_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True), ok),
        "lossy.webp": (_encode(rgb, "WEBP", quality=80), ok),
        "alpha.webp": (_encode(rgba, "WEBP", lossless=True), ok),
        "rgb24.bmp": (_encode(rgb, "BMP"), ok),
        "palette.bmp": (_encode(rgb.convert("P"), "BMP"), ok),
        "lzw.tiff": (_encode(rgb, "TIFF", compression="tiff_lzw"), ok),
        "jpeg.tiff": (_encode(rgb, "TIFF", compression="jpeg"), ok),
        "gray16.tiff": (_encode(gray16, "TIFF"), ok),
        "cmyk.tiff": (_encode(rgb.convert("CMYK"), "TIFF", compression="tiff_adobe_deflate"), ok),
        "multipage.tiff": (
            _encode(frames[0].copy(), "TIFF", save_all=True, append_images=[f.copy() for f in frames[1:]]),
            ok,
        ),
        "empty.jpg": (b"", {"reason": "IMAGE_EMPTY"}),
        "heic_signature.heic": (_iso_media(b"heic"), {"reason": "IMAGE_FORMAT_UNSUPPORTED"}),
        "avif_signature.avif": (_iso_media(b"avif"), {"reason": "IMAGE_FORMAT_UNSUPPORTED"}),
        "icon.ico": (_encode(rgb.resize((32, 32)), "ICO"), {"reason": "IMAGE_FORMAT_UNSUPPORTED"}),
        "text.jpg": (b"<html><body>not a photo</body></html>\n", {"reason": "IMAGE_FORMAT_UNSUPPORTED"}),
        "tiny_8x8.png": (_encode(rgb.resize((8, 8)), "PNG"), {"reason": "IMAGE_TOO_SMALL"}),
        "bomb_60000x60000.png": (_png_claiming(60_000, 60_000), {"reason": "IMAGE_TOO_LARGE"}),
        "bomb_16bit_rgba.png": (_png_claiming(30_000, 30_000, 16, 6), {"reason": "IMAGE_TOO_LARGE"}),
        "bomb_65500x65500.jpg": (_jpeg_sof_patched(jpeg, 65_500, 65_500), {"reason": "IMAGE_TOO_LARGE"}),
        "bomb_progressive.jpg": (_jpeg_sof_patched(progressive, 30_000, 30_000), {"reason": "IMAGE_TOO_LARGE"}),
        "bomb_65535x65535.gif": (_gif_claiming(65_535, 65_535), {"reason": "IMAGE_TOO_LARGE"}),
        "bomb_16384x16384.webp": (_webp_claiming(16_384, 16_384), {"reason": "IMAGE_TOO_LARGE"}),
        "bomb_50000x50000.bmp": (_bmp_claiming(50_000, 50_000), {"reason": "IMAGE_TOO_LARGE"}),
        "bomb_100000x100000.tiff": (_tiff_claiming(100_000, 100_000), {"reason": "IMAGE_TOO_LARGE"}),
        "scan_bomb.jpg": (
            _repeated_scans(_encode(Image.new("RGB", (WIDTH, HEIGHT), "gray"), "JPEG", progressive=True), 200),
            {"reason": "IMAGE_TOO_LARGE"},
        ),
        # libtiff stops a JPEG strip at 100 scans itself (TIFFjpeg_progress_monitor)
        "tiff_scan_bomb.tiff": (
            _tiff_jpeg_strip(
                _repeated_scans(_encode(Image.new("L", base.size, 90), "JPEG", progressive=True), 200), *base.size
            ),
            {"reason": "IMAGE_UNDECODABLE"},
        ),
        "bad_png_crc.png": (_corrupt_png_crc(_encode(rgb, "PNG")), {"reason": "IMAGE_UNDECODABLE"}),
        "bad_gif_version.gif": (b"GIF00a" + _encode(rgb, "GIF")[6:], {"reason": "IMAGE_FORMAT_UNSUPPORTED"}),
        "truncated_half.jpg": (jpeg[: len(jpeg) // 2], {"reason": "IMAGE_TRUNCATED"}),
        "truncated_half.png": (_encode(rgb, "PNG")[:-200], {"reason": "IMAGE_TRUNCATED"}),
    }
    for orientation in range(1, 9):
        files[f"exif_orientation_{orientation}.jpg"] = (
            _with_orientation(rgb if orientation < 5 else rgb.transpose(Image.Transpose.TRANSPOSE), orientation),
            ok,
        )
    return files


def _interlaced_png(rgb: Image.Image) -> bytes:
    """An Adam7-interlaced PNG (Pillow does not write them; this filters nothing and interlaces by hand)."""
    pixels = np.asarray(rgb)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.tobytes() for row in sub)
    header = struct.pack(">IIBBBBB", rgb.width, rgb.height, 8, 2, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def _rgb16_png(rgb: Image.Image) -> bytes:
    pixels = np.asarray(rgb).astype(">u2") * 257
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", rgb.width, rgb.height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def _corrupt_png_crc(data: bytes) -> bytes:
    at = data.find(b"IDAT") + 8
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "odd_images")
    args = parser.parse_args(argv)
    with Image.open(SOURCE) as source:
        base = source.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)
    files = build(base)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.iterdir():
        if old.name != "expected.json" and old.name not in files:
            old.unlink()
    expected = {}
    for name, (data, outcome) in sorted(files.items()):
        (args.out / name).write_bytes(data)
        expected[name] = outcome
    (args.out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    total = sum(len(d) for d, _ in files.values())
    print(f"wrote {len(files)} files ({total} bytes) and expected.json to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
