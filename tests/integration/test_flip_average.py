"""Test-time flip averaging: a bundle property that is part of the embedding contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facesearch.bundle.manifest import PREPROCESSING_VERSION, ModelBundle, contract_id
from facesearch.vision.decode import decode_image
from facesearch.vision.embedder import Embedder
from facesearch.vision.pipeline import FacePipeline


@pytest.fixture(scope="module")
def plain_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="exporting the models needs the export extra (torch)")
    from export.main import main as export_main

    out = tmp_path_factory.mktemp("bundle-noflip") / "dlib"
    assert export_main(["dlib", "--out", str(out), "--no-flip-average"]) == 0
    return out


@pytest.fixture(scope="module")
def chips(lfw_images: list[Path], bundle_dir: Path) -> np.ndarray:
    pipeline = FacePipeline(ModelBundle.load(bundle_dir))
    out = []
    for path in lfw_images[:6]:
        image = decode_image(path.read_bytes())
        dets = pipeline.detect(image)
        assert dets, f"no face in {path}"
        out.append(pipeline.align(image, [dets[0].box])[1][0])
    return np.stack(out)


def test_default_bundle_flip_averages_and_its_contract_says_so(bundle_dir: Path, plain_bundle_dir: Path) -> None:
    flipped, plain = ModelBundle.load(bundle_dir), ModelBundle.load(plain_bundle_dir)
    assert flipped.flip_average is True and plain.flip_average is False
    # Same network file, different embedding space: the contract ids must differ.
    assert flipped.manifest["files"]["embedder.onnx"] == plain.manifest["files"]["embedder.onnx"]
    assert flipped.contract_id != plain.contract_id
    # A bundle without flip averaging keeps the id it had before the option existed.
    dim = plain.embedding_dim
    sha = plain.manifest["files"]["embedder.onnx"]
    assert plain.contract_id == contract_id(plain.model_id, sha, dim, PREPROCESSING_VERSION)
    assert flipped.contract_id == contract_id(flipped.model_id, sha, dim, PREPROCESSING_VERSION, flip_average=True)


def test_flip_averaged_embedding_is_the_mean_of_chip_and_mirror(bundle_dir: Path, chips: np.ndarray) -> None:
    path = ModelBundle.load(bundle_dir).path("embedder")
    flipping = Embedder(path, flip_average=True, max_batch=4)  # several batches, one partial
    plain = Embedder(path)
    emb, norms = flipping.embed(chips)
    u = plain.embed(chips)[0]
    m = plain.embed(np.ascontiguousarray(chips[:, :, ::-1]))[0]
    expected = (u + m) / np.linalg.norm(u + m, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(norms, np.linalg.norm(plain.embed_raw(chips), axis=1), rtol=1e-5)
    # The averaged embedding cannot tell a face from its mirror image; the plain one can.
    mirrored = flipping.embed(np.ascontiguousarray(chips[:, :, ::-1]))[0]
    np.testing.assert_allclose(mirrored, emb, atol=1e-5)
    assert float(np.max(np.abs(m - u))) > 1e-3
    assert flipping.embed(chips[:0])[0].shape == (0, plain.dim)


def test_pipeline_follows_the_bundle(bundle_dir: Path, plain_bundle_dir: Path, lfw_images: list[Path]) -> None:
    image = decode_image(lfw_images[0].read_bytes())
    with_flip = FacePipeline(ModelBundle.load(bundle_dir)).analyze(image)
    without = FacePipeline(ModelBundle.load(plain_bundle_dir)).analyze(image)
    assert len(with_flip) == len(without) >= 1
    cos = float(with_flip[0].embedding @ without[0].embedding)
    assert 0.9 < cos < 0.99999  # same face, measurably different embedding
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["export_config"]["flip_average"] is True
