"""facesearch.jobs: the one sharded runner and its checkpoint (shards + done-markers, fingerprint).

Resume after a killed worker and after partial shards, refusal of another job's work directory,
one bad input becoming a row (of ``facesearch embed``'s shard) instead of stopping the job, and
``facesearch embed``'s face policy.
Workers here are small classes of this module (spawn imports them by name), no models.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from facesearch.errors import FaceSearchError, IndexBuildError, PreconditionError
from facesearch.jobs.embed import EmbedConfig, EmbedWorker
from facesearch.jobs.inputs import ImageRow
from facesearch.jobs.runner import ShardJob, WorkerSpec, run_shards
from facesearch.jobs.shards import (
    FINGERPRINT_FILE,
    done_path,
    fingerprint,
    open_workdir,
    read_shard,
    shard_path,
    write_shard,
)
from facesearch.vision.pipeline import Face
from facesearch.vision.quality import FaceQuality
from facesearch.vision.selection import DOMINANCE_RATIO, Policy
from training.chips import CHIPS_FORMAT_VERSION, chips_fingerprint


class Squares:
    """A shard worker: ``items`` are ints; writes a line per computed shard to ``log`` (if any);
    exits the whole process (a killed worker) on the shard starting at ``crash_at``."""

    def __init__(self, log: str = "", crash_at: int = -1, *, threads: int | None) -> None:
        self.log, self.crash_at, self.threads = log, crash_at, threads

    def __call__(self, start: int, items: list[int]) -> dict[str, np.ndarray]:
        if start == self.crash_at:
            os._exit(3)
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{start}\n")
        return {"rows": np.arange(start, start + len(items)), "squares": np.asarray(items) ** 2}


def _computed(log: Path) -> list[int]:
    return sorted(int(x) for x in log.read_text().split()) if log.exists() else []


def _job(work: Path, n: int, log: Path, *, workers: int = 1, crash_at: int = -1) -> ShardJob[int]:
    spec = WorkerSpec(Squares, (str(log), crash_at))
    return ShardJob(work, list(range(n)), 3, spec, workers=workers, progress=False, failure=IndexBuildError)


def _squares(work: Path, ranges: list[tuple[int, int]]) -> list[int]:
    return [int(v) for s, e in ranges for v in read_shard(work, s, e)["squares"]]


def test_fingerprint_covers_config_and_every_input_in_order() -> None:
    base = fingerprint(["job", 1], [["a"], ["b"]])
    assert base == fingerprint(("job", 1), iter([("a",), ("b",)]))
    assert len({base, fingerprint(["job", 2], [["a"], ["b"]]), fingerprint(["job", 1], [["b"], ["a"]])}) == 3
    assert fingerprint(["m"], [[{"b": 1, "a": 2}]]) == fingerprint(["m"], [[{"a": 2, "b": 1}]])


def test_the_chip_cache_keeps_its_fingerprint(tmp_path: Path) -> None:
    """The chip cache folder and manifest (hashed into training checkpoints) are named by it."""
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x" * 10)
    rows = [ImageRow(str(photo), "a"), ImageRow(str(tmp_path / "gone.jpg"), "b")]
    st = photo.stat()
    digest = hashlib.sha256(json.dumps([CHIPS_FORMAT_VERSION, "contract", 40, "reject"]).encode())
    digest.update(json.dumps([str(photo), "a", st.st_size, st.st_mtime_ns]).encode())
    digest.update(json.dumps([str(tmp_path / "gone.jpg"), "b", -1, -1]).encode())
    assert chips_fingerprint(rows, "contract", 40, "reject") == digest.hexdigest()


def test_workdir_is_refused_for_another_job_and_discarded_on_restart(tmp_path: Path) -> None:
    work = tmp_path / "w"
    assert open_workdir(work, "fp1", {"images": 3}, restart=False) == 0
    assert json.loads((work / FINGERPRINT_FILE).read_text()) == {"fingerprint": "fp1", "images": 3}
    write_shard(work, 0, 3, {"x": np.arange(3)})
    assert open_workdir(work, "fp1", {}, restart=False) == 1
    with pytest.raises(PreconditionError, match="delete it to start over") as err:
        open_workdir(work, "fp2", {}, restart=False, remedy="delete it to start over")
    assert err.value.reason == "RESUME_MISMATCH"
    assert open_workdir(work, "fp2", {}, restart=True) == 0
    assert not shard_path(work, 0, 3).exists()


def test_a_workdir_of_an_older_layout_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "parts"  # the old chip cache: shards without markers, no fingerprint file
    old.mkdir()
    np.savez(old / "shard-000000000-000000064.npz", rows=np.arange(3))
    with pytest.raises(PreconditionError, match="--restart") as err:
        open_workdir(old, "fp", {}, restart=False)
    assert err.value.reason == "RESUME_MISMATCH"


def test_shards_are_written_with_markers_and_a_rerun_computes_nothing(tmp_path: Path) -> None:
    work, log = tmp_path / "w", tmp_path / "log"
    open_workdir(work, "fp", {}, restart=False)
    run = run_shards(_job(work, 8, log))
    assert run.ranges == [(0, 3), (3, 6), (6, 8)] and run.resumed == 0
    assert all(done_path(work, s, e).read_bytes() == b"done\n" for s, e in run.ranges)
    assert shard_path(work, 3, 6).name == "shard-000000000003-000000000006.npz"
    assert _squares(work, run.ranges) == [i * i for i in range(8)]
    again = run_shards(_job(work, 8, log))
    assert again.resumed == 3 and _computed(log) == [0, 3, 6]


def test_partial_shards_are_redone(tmp_path: Path) -> None:
    work, log = tmp_path / "w", tmp_path / "log"
    open_workdir(work, "fp", {}, restart=False)
    run_shards(_job(work, 9, log))
    log.unlink()
    done_path(work, 0, 3).unlink()  # killed between the shard and its marker
    shard_path(work, 6, 9).unlink()  # a marker without its shard
    np.savez(shard_path(work, 3, 6).with_name(".shard.tmp-1"), junk=np.zeros(1))  # a killed write's temp file
    assert run_shards(_job(work, 9, log)).resumed == 1
    assert _computed(log) == [0, 6]
    assert _squares(work, [(0, 3), (3, 6), (6, 9)]) == [i * i for i in range(9)]


def test_a_killed_worker_stops_the_run_and_the_rerun_resumes(tmp_path: Path) -> None:
    work, log = tmp_path / "w", tmp_path / "log"
    open_workdir(work, "fp", {}, restart=False)
    with pytest.raises(IndexBuildError, match="worker process died"):
        run_shards(_job(work, 12, log, workers=2, crash_at=9))
    finished = [s for s in (0, 3, 6, 9) if done_path(work, s, s + 3).exists()]
    assert 9 not in finished
    log.unlink(missing_ok=True)
    rerun = run_shards(_job(work, 12, log, workers=2))
    assert rerun.resumed == len(finished)
    assert _computed(log) == sorted({0, 3, 6, 9} - set(finished))
    assert _squares(work, rerun.ranges) == [i * i for i in range(12)]


def test_a_failing_shard_is_named_in_the_jobs_error(tmp_path: Path) -> None:
    work = tmp_path / "w"
    open_workdir(work, "fp", {}, restart=False)
    job = ShardJob(work, [1, "x"], 2, WorkerSpec(Squares), desc="squares", progress=False)
    with pytest.raises(FaceSearchError, match="squares: shard 0-2 failed") as err:
        run_shards(job)
    assert isinstance(err.value.__cause__, TypeError)
    assert not done_path(work, 0, 2).exists()


class FakePipeline:
    """Stands in for FacePipeline in EmbedWorker: one face per image, except that an all-black
    image makes the detector raise (in a batch and alone)."""

    class embedder:  # noqa: N801 - the attribute EmbedWorker reads
        dim = 4

    def analyze(self, image: np.ndarray) -> list[Face]:
        if not image.any():
            raise RuntimeError("detector crashed")
        quality = FaceQuality(face_size=10.0, blur=50.0)
        embedding = np.full(4, 0.5, np.float32)
        return [Face((1.0, 1.0, 11.0, 11.0), 1.0, np.zeros((5, 2), np.float32), embedding, 1.0, quality)]

    def analyze_many(self, images: list[np.ndarray]) -> list[list[Face]]:
        return [self.analyze(image) for image in images]


def test_one_bad_photo_becomes_an_error_row_of_facesearch_embed(tmp_path: Path) -> None:
    paths = []
    for name, colour in (("a.png", (200, 100, 50)), ("black.png", (0, 0, 0)), ("c.png", (9, 9, 9))):
        Image.new("RGB", (20, 20), colour).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths.append(str(tmp_path / "bad.jpg"))
    fake: Any = FakePipeline()
    rows = EmbedWorker(fake, all_faces=False)(10, paths)
    assert rows["image_index"].tolist() == [10, 11, 12, 13]
    assert rows["found"].tolist() == [True, False, True, False]
    assert rows["errors"][1] == "ERROR: RuntimeError: detector crashed"
    assert rows["errors"][3].startswith("IMAGE_") and rows["errors"][0] == rows["errors"][2] == ""


class TwoFaces(FakePipeline):
    """Two faces per image: a 10 px one at the image centre and a larger one in the corner, not
    large enough to dominate (its area is 0.95 x DOMINANCE_RATIO times the central one's)."""

    corner_side = 10.0 * (0.95 * DOMINANCE_RATIO) ** 0.5

    def analyze(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        quality = FaceQuality(face_size=10.0, blur=50.0)
        marks = np.zeros((5, 2), np.float32)
        centre = Face(
            (w / 2 - 5, h / 2 - 5, w / 2 + 5, h / 2 + 5), 1.0, marks, np.full(4, 0.5, np.float32), 1.0, quality
        )
        side = self.corner_side
        corner = Face((0.0, 0.0, side, side), 1.0, marks, np.full(4, -0.5, np.float32), 1.0, quality)
        return [centre, corner]


def test_embed_takes_the_face_its_policy_chooses(tmp_path: Path) -> None:
    Image.new("RGB", (40, 40), (200, 100, 50)).save(tmp_path / "a.png")
    fake: Any = TwoFaces()
    centre = EmbedWorker(fake, all_faces=False)(0, [str(tmp_path / "a.png")])
    assert centre["found"].tolist() == [True] and centre["boxes"][0].tolist() == [15.0, 15.0, 25.0, 25.0]
    largest = EmbedWorker(fake, all_faces=False, face=Policy.LARGEST)(0, [str(tmp_path / "a.png")])
    assert largest["boxes"][0, 2] == pytest.approx(TwoFaces.corner_side)
    dominant = EmbedWorker(fake, all_faces=False, face=Policy.DOMINANT)(0, [str(tmp_path / "a.png")])
    assert dominant["found"].tolist() == [False] and dominant["errors"].tolist() == [""]  # none dominates: no row


def test_the_default_embed_job_keeps_its_fingerprint() -> None:
    """An unfinished run of an earlier version (nearest-centre, the only policy then) still resumes."""
    config = EmbedConfig(bundle=Path("b"), paths=(Path("x.jpg"),), out=Path("o.npz"))
    assert config.fingerprint("c") == fingerprint(["facesearch embed", "c", False, 40, 64], [["x.jpg"]])
    dominant = EmbedConfig(bundle=Path("b"), paths=(Path("x.jpg"),), out=Path("o.npz"), face=Policy.DOMINANT)
    assert dominant.fingerprint("c") != config.fingerprint("c")
