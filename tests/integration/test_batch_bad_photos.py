"""Batch jobs never abort on one photo: ``facesearch embed``, ``facesearch-index build`` and
training's chip stage, each on good fixture photos with a truncated JPEG, a non-image file, a
zero-byte file and a photo over the decode limits among them (tests/integration/bad_photos.py).

Each job records every bad photo as a failed row with its reason, writes the good rows and says
so in its exit status (1: some rows failed). A run stopped part-way (a shard write fails: the
disk is full) keeps the shards it finished, and the next run computes only the others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.cli.main import main as cli_main
from facesearch.errors import FaceSearchError
from facesearch.jobs.embed import EmbedWorker
from facesearch.jobs.inputs import rows_from_tree
from facesearch.jobs.shards import write_shard
from facesearch.store.index_artifact import REJECTS_FILE, read_manifest
from facesearch.vision.selection import is_failure
from indexer.embed import ShardEmbedder
from indexer.main import main as index_main
from tests.integration.bad_photos import BadPhoto, write_bad_photos
from training.chips import ChipWorker, prepare_chips

pytestmark = pytest.mark.slow


class FullDiskAfter:
    """Stands in for the runner's ``write_shard``: writes ``ok`` shards, then the disk is full."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.calls = 0

    def __call__(self, work: Path, start: int, end: int, arrays: Any) -> Path:
        self.calls += 1
        if self.calls > self.ok:
            raise OSError(28, "No space left on device")
        return write_shard(work, start, end, arrays)


def _computed_shards(monkeypatch: pytest.MonkeyPatch, worker: type) -> list[int]:
    """Record the first row of every shard ``worker`` computes from now on (workers run in-process)."""
    starts: list[int] = []
    original = worker.__call__

    def call(self: Any, start: int, items: list[Any]) -> Any:
        starts.append(start)
        return original(self, start, items)

    monkeypatch.setattr(worker, "__call__", call)
    return starts


def _done(work: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in work.glob("shard-*.done"))


@pytest.fixture
def photos(lfw_dir: Path, tmp_path: Path) -> tuple[Path, list[str], dict[str, BadPhoto]]:
    """(identity tree, its photos in the jobs' row order, the bad ones): 2 people x 2 good photos
    (links to the fixture set) and a folder of the 4 bad ones, 8 rows in 4 shards of 2."""
    tree = tmp_path / "tree"
    people = sorted(p for p in (lfw_dir / "images").iterdir() if len(list(p.glob("*.jpg"))) >= 2)[:2]
    for person in people:
        (tree / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:2]:
            (tree / person.name / photo.name).symlink_to(photo)
    bad = write_bad_photos(tree / "Bad_Rows", sorted(people[0].glob("*.jpg"))[0])
    paths = [row.path for row in rows_from_tree(tree)]
    assert len(paths) == 8 and set(bad) <= set(paths)
    return tree, paths, bad


def test_facesearch_embed_records_bad_photos_and_resumes(
    bundle_dir: Path,
    photos: tuple[Path, list[str], dict[str, BadPhoto]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, paths, bad = photos
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    out = tmp_path / "rows.npz"
    args = ["embed", "--bundle", str(bundle_dir), "--list", str(listing), "--out", str(out)]
    args += ["--min-face", "80", "--workers", "1", "--shard-size", "2", "--quiet"]

    monkeypatch.setattr("facesearch.jobs.runner.write_shard", FullDiskAfter(2))
    assert cli_main(args) == 2  # the job could not finish
    assert "No space left on device" in capsys.readouterr().err
    parts = out.with_name(out.name + ".parts")
    assert _done(parts) == [0, 2] and not out.exists()

    monkeypatch.undo()
    computed = _computed_shards(monkeypatch, EmbedWorker)
    assert cli_main(args) == 1  # done, but some rows failed
    assert computed == [4, 6]  # the finished shards were not redone
    assert "4 of 8 images failed" in capsys.readouterr().err
    assert not parts.exists()
    data = np.load(out)
    assert list(data["paths"]) == paths
    errors = dict(zip(data["paths"].tolist(), data["errors"].tolist(), strict=True))
    found = dict(zip(data["paths"].tolist(), data["found"].tolist(), strict=True))
    for path, photo in bad.items():
        assert errors[path].startswith(f"{photo.decoder_reason}: ") and not found[path], (path, errors[path])
    for path in set(paths) - set(bad):
        assert found[path] and errors[path] == "", path
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"][data["found"]], axis=1), 1.0, atol=1e-5)


def test_facesearch_index_build_records_bad_photos_and_resumes(
    bundle_dir: Path,
    photos: tuple[Path, list[str], dict[str, BadPhoto]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    faiss.omp_set_num_threads(1)
    tree, _, bad = photos
    root = tmp_path / "root"
    args = ["build", "--bundle", str(bundle_dir), "--images", str(tree), "--out", str(root), "--workers", "1"]
    args += ["--embed-options", "shard_size=2,min_face=80", "--threads", "1", "--quiet"]

    monkeypatch.setattr("facesearch.jobs.runner.write_shard", FullDiskAfter(2))
    assert index_main(args) == 1  # the job failed (facesearch-index's status for a failed job)
    assert "No space left on device" in capsys.readouterr().err
    assert _done(root / ".work" / "embed") == [0, 2]

    monkeypatch.undo()
    computed = _computed_shards(monkeypatch, ShardEmbedder)
    assert index_main(args) == 1  # published, but some rows failed
    assert computed == [4, 6]
    assert "4 input rows failed" in capsys.readouterr().err
    manifest = read_manifest(root)
    rejects = [json.loads(line) for line in (root / manifest.version / REJECTS_FILE).read_text().splitlines()]
    by_source = {r["source"]: r for r in rejects}
    for path, photo in bad.items():
        assert by_source[path]["reason"] == photo.batch_reason, by_source[path]
    good_rejected = [r for r in rejects if r["source"] not in bad]
    assert not any(is_failure(r["reason"]) for r in good_rejected)  # only face-choice outcomes, if any
    assert manifest.ntotal == 4 - len(good_rejected) >= 3


def test_training_chip_stage_records_bad_photos_and_resumes(
    bundle_dir: Path,
    photos: tuple[Path, list[str], dict[str, BadPhoto]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tree, paths, bad = photos
    rows, bundle, cache = rows_from_tree(tree), ModelBundle.load(bundle_dir), tmp_path / "chips"
    options: dict[str, Any] = {"min_face": 80, "workers": 1, "shard_size": 2, "progress": False}

    monkeypatch.setattr("facesearch.jobs.runner.write_shard", FullDiskAfter(2))
    with pytest.raises(FaceSearchError, match="No space left on device"):
        prepare_chips(rows, bundle, cache, **options)
    (work,) = cache.glob("*/parts")
    assert _done(work) == [0, 2]

    monkeypatch.undo()
    computed = _computed_shards(monkeypatch, ChipWorker)
    chips = prepare_chips(rows, bundle, cache, **options)
    assert computed == [4, 6]
    by_path = {r["path"]: r for r in chips.rejects}
    for path, photo in bad.items():
        assert by_path[path]["reason"] == photo.batch_reason, by_path[path]
    assert {r["path"] for r in chips.failed} == set(bad)
    assert chips.manifest["rejected"] == len(chips.rejects) and len(chips.paths) >= 3
    assert chips.chips.shape == (len(chips.paths), 150, 150, 3)
    assert set(chips.paths) <= set(paths) - set(bad)
