"""Photos that a batch job must record as failed rows and go on: the tests of ``facesearch embed``,
``facesearch-index build`` and training's chip stage put them among good fixture photos.

Each file names the decoder reason (``facesearch embed``'s ``errors`` column) and the batch reject
reason (the indexer's ``rejects.jsonl``, the chip cache's rejects) it must give.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class BadPhoto:
    name: str
    decoder_reason: str  # facesearch embed: errors = "<decoder_reason>: ..."
    batch_reason: str  # the indexer's and the chip stage's reject reason


BAD_PHOTOS = (
    BadPhoto("truncated.jpg", "IMAGE_TRUNCATED", "UNDECODABLE"),
    BadPhoto("not_an_image.jpg", "IMAGE_FORMAT_UNSUPPORTED", "UNDECODABLE"),
    BadPhoto("empty.jpg", "IMAGE_EMPTY", "UNDECODABLE"),
    BadPhoto("huge.png", "IMAGE_TOO_LARGE", "TOO_LARGE"),
)


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def write_bad_photos(folder: Path, good_jpeg: Path) -> dict[str, BadPhoto]:
    """Write every kind of bad photo into ``folder`` (the truncated one is the first half of
    ``good_jpeg``); returns them by path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good_jpeg.read_bytes()
    contents = {
        "truncated.jpg": data[: len(data) // 2],
        "not_an_image.jpg": bytes(range(256)) * 8,
        "empty.jpg": b"",
        "huge.png": _png_claiming(60_000, 60_000),  # 3.6 Gpx, far over the decode limit
    }
    out = {}
    for bad in BAD_PHOTOS:
        path = folder / bad.name
        path.write_bytes(contents[bad.name])
        out[str(path)] = bad
    return out
