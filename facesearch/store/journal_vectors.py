"""The live journal's vectors file: append-only fixed-size records of (vector id, embedding, checksum).

Two record formats, told apart by the file name (the journal's meta names the current file):

``vectors-NNNNNN.vec`` (format 2, written by this code)
    a 32-byte header (``FSLJVEC2``, format, ``d``, record size, CRC-32 of those) then records of
    ``int64 vector_id`` + ``d`` float32 + ``uint32`` CRC-32 of the id and embedding bytes, all
    little-endian: 12 + 4d bytes (524 at d = 128).
``vectors-NNNNNN.f32`` (format 1, journals written before checksums)
    no header; records of ``int64 vector_id`` + ``d`` float32. Read (an embedding must then be
    finite and of unit length to pass) and rewritten as format 2 when the server opens the journal.

A record is *good* when its bytes are all there, its id is the one the journal's row names, and its
checksum matches (format 1: finite and unit length). :func:`read_records` returns the embeddings of
good records and a :class:`Damage` for every other one, never a damaged embedding.

Writes: :class:`VectorsAppender` writes at the end of the last good record (``pwrite``, not
``O_APPEND``: a tail left by a failed write is overwritten, never appended after) and ``fsync``'s.
If the write or the fsync fails it cuts the file back to where it started before raising, so a full
disk leaves no torn record behind; if even the cut fails, the next append cuts first.
:func:`write_file` writes a whole new file (rotation, migration, repair). Failpoints (see
:mod:`facesearch.util.failpoints`): ``journal.append`` (``torn`` writes half the records, then
fails with ENOSPC), ``journal.fsync``, ``journal.appended`` (after the fsync), ``journal.rotate`` and
``journal.rotated`` (a new file written and fsync'd).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.util import failpoints
from facesearch.util.fs import fsync_dir

__all__ = [
    "FORMAT_CHECKSUMMED",
    "FORMAT_LEGACY",
    "Damage",
    "RecordLayout",
    "VectorsAppender",
    "file_name",
    "file_number",
    "header_problem",
    "read_records",
    "scan_ids",
    "write_file",
]

FORMAT_LEGACY = 1
FORMAT_CHECKSUMMED = 2
_SUFFIX = {FORMAT_LEGACY: ".f32", FORMAT_CHECKSUMMED: ".vec"}
_MAGIC = b"FSLJVEC2"
_HEADER = struct.Struct("<8sIIII")  # magic, format, d, record size, crc32 of the preceding fields
HEADER_BYTES = 32
_ID = 8
_UNIT_TOLERANCE = 1e-3  # format-1 embeddings must have a norm within this of 1


@dataclass(frozen=True, slots=True)
class RecordLayout:
    """How records of ``d``-dimensional embeddings lie in a vectors file of one format."""

    version: int
    d: int

    @classmethod
    def of(cls, path: Path, d: int) -> RecordLayout:
        for version, suffix in _SUFFIX.items():
            if path.name.endswith(suffix):
                return cls(version, d)
        raise ValueError(f"{path.name} is not a vectors file (want vectors-NNNNNN.vec or .f32)")

    @property
    def header(self) -> int:
        return HEADER_BYTES if self.version == FORMAT_CHECKSUMMED else 0

    @property
    def size(self) -> int:
        return _ID + 4 * self.d + (4 if self.version == FORMAT_CHECKSUMMED else 0)

    def header_bytes(self) -> bytes:
        fields = _HEADER.pack(_MAGIC, self.version, self.d, self.size, 0)[:-4]
        return (fields + struct.pack("<I", zlib.crc32(fields))).ljust(HEADER_BYTES, b"\0")

    def encode(self, vector_ids: np.ndarray, embeddings: np.ndarray) -> bytes:
        n = len(vector_ids)
        out = np.zeros((n, self.size), np.uint8)
        out[:, :_ID] = np.ascontiguousarray(vector_ids, "<i8").view(np.uint8).reshape(n, _ID)
        body = _ID + 4 * self.d
        out[:, _ID:body] = np.ascontiguousarray(embeddings, "<f4").view(np.uint8).reshape(n, 4 * self.d)
        if self.version == FORMAT_CHECKSUMMED:
            crcs = np.fromiter((zlib.crc32(row[:body].tobytes()) for row in out), np.uint32, n)
            out[:, body:] = crcs.astype("<u4").view(np.uint8).reshape(n, 4)
        return out.tobytes()

    def last_whole_end(self, file_size: int) -> int:
        """Where the last whole record ends in a file of ``file_size`` bytes."""
        if file_size <= self.header:
            return self.header
        return self.header + (file_size - self.header) // self.size * self.size


def file_name(number: int, version: int = FORMAT_CHECKSUMMED) -> str:
    return f"vectors-{number:06d}{_SUFFIX[version]}"


def file_number(path: Path) -> int:
    return int(path.name.split("-")[-1].split(".")[0])


@dataclass(frozen=True, slots=True)
class Damage:
    """A record the journal references that cannot be served."""

    vector_id: int
    offset: int
    problem: str  # "missing", "checksum", "id" (another face's record), "not a unit vector"

    def describe(self) -> str:
        return f"face {self.vector_id} (record at byte {self.offset}): {self.problem}"


def header_problem(path: Path, layout: RecordLayout) -> str | None:
    """What is wrong with a format-2 file's header (None: it is sound, or format 1 has none)."""
    if layout.version != FORMAT_CHECKSUMMED:
        return None
    with path.open("rb") as fh:
        raw = fh.read(HEADER_BYTES)
    if len(raw) < _HEADER.size:
        return f"{path.name}: header missing ({len(raw)} bytes)"
    magic, version, d, size, crc = _HEADER.unpack(raw[: _HEADER.size])
    if magic != _MAGIC or crc != zlib.crc32(raw[: _HEADER.size - 4]):
        return f"{path.name}: header damaged"
    if (version, d, size) != (layout.version, layout.d, layout.size):
        return f"{path.name}: header says format {version}, d {d}, records of {size} bytes; expected {layout}"
    return None


def _records(path: Path, layout: RecordLayout) -> np.ndarray:
    """The file's whole records as an (n, size) uint8 array (memory-mapped, read-only)."""
    size = path.stat().st_size
    n = max(0, (size - layout.header) // layout.size)
    if n == 0:
        return np.zeros((0, layout.size), np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=layout.header, shape=(n, layout.size))


def read_records(path: Path, layout: RecordLayout, refs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, list[Damage]]:
    """Embeddings (len(refs), d) of the records at ``refs`` = ``(vector id, byte offset)``, checked.

    Rows of damaged records are zero and listed in the returned damage; nothing else is zero.
    """
    out = np.zeros((len(refs), layout.d), np.float32)
    if not refs:
        return out, []
    records = _records(path, layout)
    vids = np.fromiter((r[0] for r in refs), np.int64, len(refs))
    offsets = np.fromiter((r[1] for r in refs), np.int64, len(refs))
    rel = offsets - layout.header
    index = rel // layout.size
    present = (rel >= 0) & (rel % layout.size == 0) & (index < len(records))
    damage: list[Damage] = []
    rows = records[index[present]] if present.any() else np.zeros((0, layout.size), np.uint8)
    ids = rows[:, :_ID].copy().view("<i8").ravel()
    body = _ID + 4 * layout.d
    emb = rows[:, _ID:body].copy().view("<f4")
    if layout.version == FORMAT_CHECKSUMMED:
        stored = rows[:, body:].copy().view("<u4").ravel()
        bad_sum = np.fromiter((zlib.crc32(r[:body].tobytes()) for r in rows), np.uint32, len(rows)) != stored
    else:
        norms = np.linalg.norm(emb.astype(np.float64), axis=1)
        bad_sum = ~np.isfinite(norms) | (np.abs(norms - 1.0) > _UNIT_TOLERANCE)
    where = np.flatnonzero(present)
    for i in np.flatnonzero(~present):
        damage.append(Damage(int(vids[i]), int(offsets[i]), "missing"))
    for j, i in enumerate(where):
        if ids[j] != vids[i]:
            damage.append(Damage(int(vids[i]), int(offsets[i]), "id"))
        elif bad_sum[j]:
            problem = "checksum" if layout.version == FORMAT_CHECKSUMMED else "not a unit vector"
            damage.append(Damage(int(vids[i]), int(offsets[i]), problem))
        else:
            out[i] = emb[j]
    damage.sort(key=lambda x: x.offset)
    return out, damage


def scan_ids(path: Path, layout: RecordLayout) -> np.ndarray:
    """The vector id of every whole record, in file order (for reports)."""
    records = _records(path, layout)
    return records[:, :_ID].copy().view("<i8").ravel()


class VectorsAppender:
    """Appends records to one vectors file at ``end`` (the end of its last good record)."""

    def __init__(self, path: Path, layout: RecordLayout, end: int) -> None:
        self.path = path
        self.layout = layout
        self.end = end

    def append(self, vector_ids: np.ndarray, embeddings: np.ndarray) -> list[int]:
        """Write and fsync records; returns their offsets. On failure the file is cut back first."""
        if len(vector_ids) == 0:
            return []
        data = self.layout.encode(vector_ids, embeddings)
        start = self.end
        fd = os.open(self.path, os.O_WRONLY)
        try:
            try:
                if os.fstat(fd).st_size != start:  # a tail a failed write left (or one we could not cut)
                    os.ftruncate(fd, start)
                action = failpoints.hit("journal.append")
                if action == "torn":
                    os.pwrite(fd, data[: len(data) // 2 + 1], start)
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (failpoint journal.append)")
                _pwrite_all(fd, data, start)
                failpoints.hit("journal.fsync")
                os.fsync(fd)
                failpoints.hit("journal.appended")
            except BaseException:
                _cut(fd, start)
                raise
        finally:
            os.close(fd)
        self.end = start + len(data)
        return [start + i * self.layout.size for i in range(len(vector_ids))]

    def cut(self, end: int) -> None:
        """Cut the file back to ``end`` (records written there were never referenced)."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            _cut(fd, end)
        finally:
            os.close(fd)
        self.end = end


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _cut(fd: int, end: int) -> None:
    """Best effort: a failure here is repaired by the next append (or the next open)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, end)
        os.fsync(fd)


def write_file(path: Path, layout: RecordLayout, vector_ids: np.ndarray, embeddings: np.ndarray) -> list[int]:
    """Create ``path`` (a new name) holding exactly these records, fsync'd; returns their offsets.

    On failure the partial file is removed and the error raised.
    """
    try:
        failpoints.hit("journal.rotate")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # a new name: no reader has it
        try:
            header = layout.header_bytes() if layout.version == FORMAT_CHECKSUMMED else b""
            _pwrite_all(fd, header, 0)
            if len(vector_ids):
                _pwrite_all(fd, layout.encode(vector_ids, embeddings), len(header))
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
        failpoints.hit("journal.rotated")
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return [layout.header + i * layout.size for i in range(len(vector_ids))]
