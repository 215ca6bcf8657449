"""facesearch-train --data: an identity tree or a CSV/JSONL manifest (the indexer's readers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facesearch.errors import InvalidInputError
from training.chips import read_rows


def test_tree_and_manifests_give_the_same_rows(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for person, photos in (("Ann_Lee", 2), ("Bob", 1)):
        (tree / person).mkdir(parents=True)
        for i in range(photos):
            (tree / person / f"{i}.jpg").write_bytes(b"x")
    (tree / "Bob" / "notes.txt").write_text("not a photo")
    from_tree = [(Path(r.path).relative_to(tree).as_posix(), r.identity_id) for r in read_rows(tree)]
    assert from_tree == [("Ann_Lee/0.jpg", "Ann_Lee"), ("Ann_Lee/1.jpg", "Ann_Lee"), ("Bob/0.jpg", "Bob")]
    csv_path = tree / "m.csv"
    csv_path.write_text("path,identity_id\n" + "".join(f"{p},{i}\n" for p, i in from_tree))
    jsonl = tree / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"path": p, "identity_id": i}) + "\n" for p, i in from_tree))
    for manifest in (csv_path, jsonl):
        rows = read_rows(manifest)
        assert [(Path(r.path).relative_to(tree).as_posix(), r.identity_id) for r in rows] == from_tree


def test_missing_or_bad_data_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="--data"):
        read_rows(tmp_path / "nothing")
    bad = tmp_path / "m.csv"
    bad.write_text("file,person\na.jpg,x\n")
    with pytest.raises(InvalidInputError, match="identity_id"):
        read_rows(bad)
