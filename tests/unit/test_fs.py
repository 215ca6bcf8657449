"""The one atomic writer, pointer switch and file digest (facesearch.util.fs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from facesearch.util.fs import atomic_path, read_pointer, sha256_file, switch_pointer, write_atomic


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_atomic(target, "one\n")
    write_atomic(target, b"two\n")
    assert target.read_bytes() == b"two\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_pointer_round_trip(tmp_path: Path) -> None:
    pointer = tmp_path / "CURRENT"
    assert read_pointer(pointer) is None
    switch_pointer(pointer, "v000001")
    switch_pointer(pointer, "v000002")
    assert pointer.read_text() == "v000002\n" and read_pointer(pointer) == "v000002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT"]


def test_sha256_file_reads_in_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
