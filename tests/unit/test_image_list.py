"""Image lists: folders assembled from symlinks are followed, link cycles are not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from facesearch.errors import InvalidInputError
from facesearch.jobs.image_list import read_image_list
from facesearch.jobs.inputs import rows_from_tree


def _tree(tmp_path: Path, *, cycle: bool = True) -> Path:
    real = tmp_path / "real"
    for person, photos in {"Ada": ["a1.jpg", "a2.png"], "Bob": ["b1.JPG", "notes.txt"]}.items():
        (real / person).mkdir(parents=True)
        for name in photos:
            (real / person / name).write_bytes(b"x")
    linked = tmp_path / "linked"
    linked.mkdir()
    for person in ("Ada", "Bob"):
        os.symlink(real / person, linked / person)  # a tree made of links to other folders
    if cycle:
        os.symlink(linked, real / "Ada" / "loop")
    return linked


def test_symlinked_folders_are_followed_once(tmp_path: Path) -> None:
    linked = _tree(tmp_path)  # with a link cycle: every folder is listed once
    names = sorted(p.name for p in read_image_list(linked))
    assert names == ["a1.jpg", "a2.png", "b1.JPG"]


def test_identity_folders_may_be_links(tmp_path: Path) -> None:
    rows = rows_from_tree(_tree(tmp_path, cycle=False))
    assert sorted((r.identity_id, Path(r.path).name) for r in rows) == [
        ("Ada", "a1.jpg"),
        ("Ada", "a2.png"),
        ("Bob", "b1.JPG"),
    ]


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as err:
        read_image_list(tmp_path)
    assert err.value.reason == "EMPTY_INPUT"
