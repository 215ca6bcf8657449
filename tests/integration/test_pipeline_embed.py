"""The whole pipeline on real photos, and `facesearch embed`'s output contract and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.cli.main import main as cli_main
from facesearch.errors import InvalidInputError, PreconditionError
from facesearch.jobs.embed import EmbedConfig, run
from facesearch.jobs.shards import write_shard
from facesearch.vision.decode import DecodeLimits, load_image
from facesearch.vision.pipeline import FacePipeline, PipelineConfig


@pytest.fixture(scope="module")
def pipeline(bundle_dir: Path) -> FacePipeline:
    return FacePipeline(ModelBundle.load(bundle_dir), PipelineConfig(keep_chips=True))


def _collage(paths: list[Path], size: int = 640) -> np.ndarray:
    """Several real faces on one canvas, at different scales (one small face ~ 50 px)."""
    import cv2

    canvas = np.full((size, size, 3), 90, np.uint8)
    spots = [(20, 20, 250), (330, 40, 200), (60, 380, 160), (420, 420, 110)]
    for path, (x, y, s) in zip(paths, spots, strict=False):
        face = cv2.resize(load_image(path, DecodeLimits()), (s, s), interpolation=cv2.INTER_AREA)
        canvas[y : y + s, x : x + s] = face
    return canvas


def test_one_face_per_lfw_photo_same_person_closer(pipeline: FacePipeline, lfw_dir: Path) -> None:
    people = sorted(p for p in (lfw_dir / "images").iterdir() if len(list(p.glob("*.jpg"))) >= 2)[:3]
    embs = []
    for person in people:
        a, b = sorted(person.glob("*.jpg"))[:2]
        fa = pipeline.analyze(load_image(a, DecodeLimits()))
        fb = pipeline.analyze(load_image(b, DecodeLimits()))
        assert len(fa) >= 1 and len(fb) >= 1
        face = max(fa, key=lambda f: f.score)
        assert face.chip is not None and face.chip.shape == (150, 150, 3)
        assert face.landmarks.shape == (5, 2)
        assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5
        assert face.quality.face_size > 40 and face.quality.blur > 0
        embs.append((face.embedding, max(fb, key=lambda f: f.score).embedding))
    same = [float(a @ b) for a, b in embs]
    different = [float(embs[i][0] @ embs[j][0]) for i in range(3) for j in range(3) if i != j]
    assert min(same) > max(different), (same, different)


def test_no_face_and_several_faces(pipeline: FacePipeline, lfw_images: list[Path]) -> None:
    rng = np.random.default_rng(0)
    assert pipeline.analyze(np.full((300, 400, 3), 128, np.uint8)) == []
    assert pipeline.analyze(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) == []
    faces = pipeline.analyze(_collage(lfw_images[:4]))
    assert len(faces) >= 4
    assert min(f.quality.face_size for f in faces) < 80  # the small face needs min_face 40 (upsampling)
    large_only = FacePipeline(pipeline.bundle, PipelineConfig(min_face=80))
    assert len(large_only.analyze(_collage(lfw_images[:4]))) < len(faces)


def test_group_photos_show_several_faces(pipeline: FacePipeline, group_photos: list[Path]) -> None:
    """The fixture set's group photos (real LFW photos, not collages) show two or more faces even at
    the min_face the server tests run with, so the indexer and a strict enroll reject them as
    MULTIPLE_FACES."""
    strict = FacePipeline(pipeline.bundle, PipelineConfig(min_face=80))
    assert group_photos
    for photo in group_photos:
        assert len(strict.detect(load_image(photo, DecodeLimits()))) >= 2, photo


def test_pipeline_rejects_bad_arrays(pipeline: FacePipeline) -> None:
    with pytest.raises(InvalidInputError, match="HxWx3 uint8"):
        pipeline.analyze(np.zeros((100, 100), np.uint8))
    with pytest.raises(InvalidInputError, match="min_face"):
        PipelineConfig(min_face=2)


def test_embed_cli_contract_npz_and_parquet(bundle_dir: Path, lfw_images: list[Path], tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((200, 200, 3), 200, np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(lfw_images[0].read_bytes()[:500])
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([str(lfw_images[0]), str(blank), str(broken), str(lfw_images[1])]) + "\n")
    out = tmp_path / "out.npz"
    args = ["embed", "--bundle", str(bundle_dir), "--list", str(listing), "--out", str(out), "--quiet"]
    assert cli_main([*args, "--workers", "1"]) == 1  # the broken photo failed; the others are written
    data = np.load(out)
    assert list(data["paths"]) == [str(lfw_images[0]), str(blank), str(broken), str(lfw_images[1])]
    assert data["embeddings"].shape == (4, 128) and data["embeddings"].dtype == np.float32
    assert list(data["found"]) == [True, False, False, True]
    assert np.all(data["embeddings"][1] == 0) and data["boxes"].shape == (4, 4) and data["scores"].shape == (4,)
    assert data["errors"][2].startswith("IMAGE_TRUNCATED") or data["errors"][2].startswith("IMAGE_")
    assert str(data["contract_id"]) == ModelBundle.load(bundle_dir).contract_id
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"][[0, 3]], axis=1), 1.0, atol=1e-5)
    pq_out = tmp_path / "out.parquet"
    assert (
        cli_main(
            [
                "embed",
                "--bundle",
                str(bundle_dir),
                "--list",
                str(listing),
                "--out",
                str(pq_out),
                "--quiet",
                "--workers",
                "2",
            ]
        )
        == 1
    )
    table = pq.read_table(pq_out)
    assert table.column("found").to_pylist() == [True, False, False, True]
    np.testing.assert_allclose(
        np.array(table.column("embedding").to_pylist(), np.float32), data["embeddings"], atol=1e-5
    )  # two worker processes give the same answer as one


def test_embed_resumes_and_refuses_other_inputs(bundle_dir: Path, lfw_images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "e.npz"
    config = EmbedConfig(
        bundle=bundle_dir, paths=tuple(lfw_images[:6]), out=out, shard_size=2, workers=1, progress=False
    )
    parts = out.with_name("e.npz.parts")
    parts.mkdir()
    (parts / "fingerprint.json").write_text(
        json.dumps({"fingerprint": config.fingerprint(ModelBundle.load(bundle_dir).contract_id)})
    )
    # a finished shard from an earlier (killed) run is reused, not recomputed: plant a marker value
    first = run(
        EmbedConfig(bundle=bundle_dir, paths=tuple(lfw_images[:2]), out=tmp_path / "x.npz", workers=1, progress=False)
    )
    assert first.images == 2
    x = dict(np.load(tmp_path / "x.npz"))
    shard = {k: x[k] for k in ("image_index", "embeddings", "found", "boxes", "scores", "errors")}
    shard["scores"] = np.full_like(shard["scores"], 123.0)
    write_shard(parts, 0, 2, shard)  # as the runner writes it: the shard, then its done-marker
    summary = run(config)
    data = np.load(out)
    assert summary.images == 6 and list(data["scores"][:2]) == [123.0, 123.0]
    assert np.all(data["scores"][2:] < 100) and not parts.exists()
    # a leftover partial run of different inputs is refused, naming what to do
    parts.mkdir()
    (parts / "fingerprint.json").write_text(json.dumps({"fingerprint": "other"}))
    with pytest.raises(PreconditionError, match="delete it to start over"):
        run(config)
