"""Our ONNX embedder against dlib's compute_face_descriptor on identical chips of real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import InvalidInputError
from facesearch.vision.embedder import Embedder

dlib = pytest.importorskip("dlib", reason="dlib-bin (test extra) is the parity reference")


@pytest.fixture(scope="module")
def dlib_chips(lfw_images: list[Path], dlib_models_dir: Path) -> np.ndarray:
    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(str(dlib_models_dir / "shape_predictor_5_face_landmarks.dat"))
    chips = []
    for path in lfw_images:
        img = dlib.load_rgb_image(str(path))
        dets = detector(img, 1)
        if dets:
            chips.append(dlib.get_face_chip(img, shapes(img, dets[0]), 150, 0.25))
    assert len(chips) >= 20, "the LFW sample should have faces dlib's HOG detector finds"
    return np.stack(chips)


def test_descriptors_equal_dlib_on_identical_chips(
    bundle_dir: Path, dlib_chips: np.ndarray, dlib_models_dir: Path
) -> None:
    bundle = ModelBundle.load(bundle_dir)
    embedder = Embedder(bundle.path("embedder"), max_batch=7)  # several batches, one partial
    ours = embedder.embed_raw(dlib_chips)
    ref_model = dlib.face_recognition_model_v1(str(dlib_models_dir / "dlib_face_recognition_resnet_model_v1.dat"))
    ref = np.array([np.array(ref_model.compute_face_descriptor(chip)) for chip in dlib_chips])
    assert ours.shape == ref.shape == (len(dlib_chips), 128)
    assert np.abs(ours - ref).max() <= 1e-4
    normalised, norms = embedder.embed(dlib_chips)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(normalised * norms[:, None], ours, atol=1e-5)


def test_embedder_rejects_wrong_chip_layout(bundle_dir: Path) -> None:
    embedder = Embedder(ModelBundle.load(bundle_dir).path("embedder"))
    with pytest.raises(InvalidInputError, match="chips must be uint8"):
        embedder.embed_raw(np.zeros((1, 112, 112, 3), np.uint8))
    with pytest.raises(InvalidInputError):
        embedder.embed_raw(np.zeros((1, 150, 150, 3), np.float32))
    assert embedder.embed_raw(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
