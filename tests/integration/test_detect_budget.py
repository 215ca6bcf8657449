"""Detection under a budget on real photos: tiles give the untiled scores, the budget keeps LFW-size
photos exact and finds the faces of a 12 MP photo with landmarks taken from its full-resolution pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.vision.decode import load_image
from facesearch.vision.detector import FaceDetector
from facesearch.vision.pipeline import FacePipeline, PipelineConfig


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> ModelBundle:
    return ModelBundle.load(bundle_dir)


def _detector(bundle: ModelBundle, tile_cells: int | None) -> FaceDetector:
    return FaceDetector.from_onnx(
        bundle.path("detector"), bundle.section("detector"), intra_op_threads=2, tile_cells=tile_cells
    )


def compose(photos: list[np.ndarray], size: tuple[int, int], places: list[tuple[int, int, int]]) -> np.ndarray:
    """A grey ``size`` (width, height) canvas with each photo resized to a square of side s at (x, y)."""
    canvas = np.full((size[1], size[0], 3), 118, np.uint8)
    for photo, (x, y, s) in zip(photos, places, strict=True):
        canvas[y : y + s, x : x + s] = cv2.resize(photo, (s, s), interpolation=cv2.INTER_CUBIC)
    return canvas


def test_tiled_scores_equal_the_untiled_run(bundle: ModelBundle, lfw_images: list[Path]) -> None:
    whole, tiled = _detector(bundle, None), _detector(bundle, 16)  # 16-cell tiles: dozens per photo
    photos = [load_image(p) for p in lfw_images[:3]]
    photos.append(compose(photos, (700, 420), [(10, 10, 260), (250, 120, 300), (520, 20, 170)]))  # faces on seams
    for image in photos:
        batch = whole.prepare([image], upsample=1)
        a, b = whole.forward(batch), tiled.forward(batch)
        assert a is not None and b is not None and a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
        assert [(d.box, round(d.score, 4)) for d in whole.detect(image, 1)] == [
            (d.box, round(d.score, 4)) for d in tiled.detect(image, 1)
        ]


def test_the_default_budget_keeps_lfw_size_photos_exact(bundle: ModelBundle, lfw_images: list[Path]) -> None:
    exact = FacePipeline(bundle, PipelineConfig(detect_pixels=None, threads=2))
    default = FacePipeline(bundle, PipelineConfig(threads=2))
    for path in lfw_images[:4]:
        image = load_image(path)
        assert default.plan(image.shape[1], image.shape[0]).exact
        a, b = exact.detect(image), default.detect(image)
        assert [(d.box, d.score) for d in a] == [(d.box, d.score) for d in b]


def test_a_large_photo_is_searched_in_a_scaled_copy_and_aligned_at_full_resolution(
    bundle: ModelBundle, lfw_images: list[Path]
) -> None:
    pipe = FacePipeline(bundle, PipelineConfig(threads=2, detect_pixels=900_000))
    photos = [load_image(p) for p in lfw_images[:3]]
    places = [(200, 300, 900), (1500, 200, 1000), (2700, 1400, 1000)]  # faces ~360-400 px
    canvas = compose(photos, (4032, 3024), places)
    plan = pipe.plan(4032, 3024)
    assert not plan.exact and plan.limited and plan.pyramid_pixels <= 900_000 and plan.min_face_px < 300
    faces = pipe.analyze(canvas)
    assert len(faces) == 3
    for x, y, s in places:
        centre = (x + s / 2, y + s / 2)
        face = min(faces, key=lambda f: np.hypot(f.centre[0] - centre[0], f.centre[1] - centre[1]))
        assert np.hypot(face.centre[0] - centre[0], face.centre[1] - centre[1]) < s / 6
        x1, y1, x2, y2 = face.box
        assert (x1 <= face.landmarks[:, 0]).all() and (face.landmarks[:, 0] <= x2).all()
        assert (y1 <= face.landmarks[:, 1]).all() and (face.landmarks[:, 1] <= y2).all()
    # the same person as in the original photo: the chip comes from the full-resolution pixels
    original = pipe.analyze(photos[0])
    central = min(original, key=lambda f: np.hypot(f.centre[0] - 125, f.centre[1] - 125))
    placed = min(faces, key=lambda f: np.hypot(f.centre[0] - 650, f.centre[1] - 750))
    assert float(central.embedding @ placed.embedding) > 0.93
