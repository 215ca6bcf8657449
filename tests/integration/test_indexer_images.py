"""facesearch-index on real photos: the embedding stage with the real face pipeline.

A small LFW tree (symlinks to the shared, read-only data) plus bad rows; a build is killed
mid-run and resumed; a resume with other inputs is refused; Ray Data on a local 2-CPU
instance writes the same shards as the local process pool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from facesearch.bundle.manifest import ModelBundle
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, load_index, read_manifest
from facesearch.vision.decode import load_image
from facesearch.vision.pipeline import FacePipeline, PipelineConfig
from indexer.main import main

REPO = Path(__file__).resolve().parents[2]
FAST = ["--threads", "1", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    faiss.omp_set_num_threads(1)


def _people(lfw_dir: Path, count: int, per_person: int) -> dict[str, list[Path]]:
    """The first ``count`` people (sorted) with at least ``per_person + 1`` photos."""
    chosen: dict[str, list[Path]] = {}
    for person in sorted((lfw_dir / "images").iterdir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) > per_person:
            chosen[person.name] = photos
        if len(chosen) == count:
            break
    return chosen


def _tree(root: Path, people: dict[str, list[Path]], per_person: int, *, bad: bool) -> Path:
    for name, photos in people.items():
        (root / name).mkdir(parents=True)
        for photo in photos[:per_person]:
            (root / name / photo.name).symlink_to(photo)
    if bad:
        junk = root / "Bad_Rows"
        junk.mkdir()
        (junk / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        Image.new("RGB", (200, 200), (128, 128, 128)).save(junk / "blank.jpg")
    return root


@pytest.fixture(scope="module")
def people(lfw_dir: Path) -> dict[str, list[Path]]:
    return _people(lfw_dir, 6, 2)


@pytest.fixture(scope="module")
def built(people: dict[str, list[Path]], bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("images")
    tree = _tree(tmp / "tree", people, 2, bad=True)
    root = tmp / "root"
    rc = main(
        [
            "build",
            "--bundle",
            str(bundle_dir),
            "--images",
            str(tree),
            "--out",
            str(root),
            "--workers",
            "2",
            "--embed-options",
            "shard_size=4",
            *FAST,
        ]
    )
    assert rc == 1  # published, but the truncated photo failed
    return root


def test_build_from_photos_finds_held_out_photos(built: Path, people: dict[str, list[Path]], bundle_dir: Path) -> None:
    m = read_manifest(built)
    assert m.contract_id == ModelBundle.load(bundle_dir).contract_id
    assert m.build["images"] == 14 and m.build["accepted"] == m.ntotal
    assert m.build["rejected"].get("UNDECODABLE") == 1 and m.build["rejected"].get("NO_FACE") == 1
    assert m.ntotal + m.build["rejected_total"] == 14
    assert not (built / ".work").exists() or not any((built / ".work").iterdir())
    rejects = [json.loads(x) for x in (built / m.version / "rejects.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rejects} >= {"UNDECODABLE", "NO_FACE"}
    assert all(r["source"].endswith(".jpg") and r["identity_id"] for r in rejects)

    index = load_index(built, expected_contract_id=m.contract_id)
    pipe = FacePipeline(ModelBundle.load(bundle_dir), PipelineConfig(threads=1))
    held_out = {name: photos[2] for name, photos in people.items()}  # the third photo was not enrolled
    hits = 0
    with IdentityStore.open(index.dir / STORE_FILE) as store:
        for name, photo in held_out.items():
            faces = pipe.analyze(load_image(photo))
            if not faces:
                continue
            best = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            _, ids = index.search(best.embedding[None, :], 1)
            face = store.faces([int(ids[0, 0])])[0]
            assert face is not None and face.box is not None and face.source is not None
            hits += face.identity_id == name and face.name == name.replace("_", " ")
            assert store.chip(int(ids[0, 0])) is None  # privacy by default: no pixels stored
    assert hits >= len(held_out) - 1


def _spawn_build(tree: Path, root: Path, bundle: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "indexer",
        "build",
        "--bundle",
        str(bundle),
        "--images",
        str(tree),
        "--out",
        str(root),
        "--workers",
        "1",
        "--embed-options",
        "shard_size=2",
        *FAST,
    ]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _kill_after_shards(proc: subprocess.Popen[bytes], work: Path, shards: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = len(list(work.glob("shard-*.done")))
        if done >= shards:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return done
        if proc.poll() is not None:
            raise AssertionError(f"the build ended before it could be killed: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("no shard finished in time")


def test_killed_build_resumes_and_a_changed_input_is_refused(
    people: dict[str, list[Path]],
    bundle_dir: Path,
    built: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tree = _tree(tmp_path / "tree", people, 2, bad=True)
    root = tmp_path / "root"
    work = root / ".work" / "embed"
    done = _kill_after_shards(_spawn_build(tree, root, bundle_dir), work, shards=2)
    assert not (root / "CURRENT").exists()  # nothing published by the killed run
    # another input while the unfinished stage is there: refused, naming the way out
    other = _tree(tmp_path / "other", dict(list(people.items())[:2]), 1, bad=False)
    assert main(["build", "--bundle", str(bundle_dir), "--images", str(other), "--out", str(root), *FAST]) == 1
    err = capsys.readouterr().err
    assert "RESUME_MISMATCH" in err and "--restart" in err
    # the same input resumes: finished shards are not embedded again
    assert (
        main(
            [
                "build",
                "--bundle",
                str(bundle_dir),
                "--images",
                str(tree),
                "--out",
                str(root),
                "--workers",
                "1",
                "--embed-options",
                "shard_size=2",
                *FAST,
            ]
        )
        == 1  # published; the truncated photo failed
    )
    m = read_manifest(root)
    assert m.build["resumed_shards"] >= done >= 2 and m.build["shards"] == 7
    clean = read_manifest(built)
    assert m.ntotal == clean.ntotal and m.build["rejected"] == clean.build["rejected"]
    with (
        IdentityStore.open(root / m.version / STORE_FILE) as a,
        IdentityStore.open(built / clean.version / STORE_FILE) as b,
    ):
        ea = {f.source.split("/")[-1]: e for f, e in _faces_with_embeddings(a)}
        eb = {f.source.split("/")[-1]: e for f, e in _faces_with_embeddings(b)}
    assert ea.keys() == eb.keys()
    assert max(float(np.abs(ea[k] - eb[k]).max()) for k in ea) < 1e-5
    # --restart discards an unfinished stage
    root2 = tmp_path / "root2"
    _kill_after_shards(_spawn_build(tree, root2, bundle_dir), root2 / ".work" / "embed", 1)
    assert (
        main(
            [
                "build",
                "--bundle",
                str(bundle_dir),
                "--images",
                str(other),
                "--out",
                str(root2),
                "--restart",
                *FAST,
            ]
        )
        == 0
    )
    assert read_manifest(root2).build["resumed_shards"] == 0


def _faces_with_embeddings(store: IdentityStore) -> list:
    vids, emb, _ = next(store.iter_embeddings(10_000))
    return list(zip(store.faces(vids.tolist()), emb, strict=True))


def test_manifest_csv_with_metadata_and_chips(people: dict[str, list[Path]], bundle_dir: Path, tmp_path: Path) -> None:
    name, photos = next(iter(people.items()))
    csv = tmp_path / "people.csv"
    lines = ["path,identity_id,name,metadata,site"]
    lines += [f'{p},{name.lower()},{name},"{{""badge"": {i}}}",north' for i, p in enumerate(photos[:2])]
    lines.append(f"missing.jpg,{name.lower()},{name},,south")
    csv.write_text("\n".join(lines) + "\n")
    root = tmp_path / "root"
    assert (
        main(
            [
                "build",
                "--bundle",
                str(bundle_dir),
                "--manifest",
                str(csv),
                "--out",
                str(root),
                "--keep-chips",
                "--workers",
                "1",
                *FAST,
            ]
        )
        == 1  # published; the missing photo failed
    )
    m = read_manifest(root)
    assert m.build["rejected"] == {"MISSING_FILE": 1}
    with IdentityStore.open(root / m.version / STORE_FILE) as store:
        assert store.count_chips() == m.ntotal == 2
        chip = store.chip(0)
        assert chip is not None and chip.shape == (150, 150, 3)
        face = store.faces([0])[0]
        assert face is not None and face.identity_id == name.lower() and face.metadata == {"badge": 0, "site": "north"}
    assert main(["remove", str(root), "--identity", name.lower(), *FAST]) == 1  # would empty the index


@pytest.mark.slow
def test_ray_data_stage_matches_the_local_pool(
    people: dict[str, list[Path]], bundle_dir: Path, built: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray.data", reason="the Ray path needs ray[data]")
    tree = _tree(tmp_path / "tree", people, 2, bad=True)
    root = tmp_path / "root"
    assert (
        main(
            [
                "build",
                "--bundle",
                str(bundle_dir),
                "--images",
                str(tree),
                "--out",
                str(root),
                "--ray",
                "local",
                "--workers",
                "2",
                "--embed-options",
                "shard_size=4",
                *FAST,
            ]
        )
        == 1  # published; the truncated photo failed (as on the local pool)
    )
    m, clean = read_manifest(root), read_manifest(built)
    assert m.ntotal == clean.ntotal and m.build["rejected"] == clean.build["rejected"]
    with (
        IdentityStore.open(root / m.version / STORE_FILE) as a,
        IdentityStore.open(built / clean.version / STORE_FILE) as b,
    ):
        ea = {f.source.split("/")[-1]: e for f, e in _faces_with_embeddings(a)}
        eb = {f.source.split("/")[-1]: e for f, e in _faces_with_embeddings(b)}
    assert ea.keys() == eb.keys()
    assert max(float(np.abs(ea[k] - eb[k]).max()) for k in ea) < 1e-5
