"""Parity of our 5-point landmarks and face chips with dlib (dlib-bin), the reference.

Real faces come from the LFW dev images of the tests' data root (``lfw_dir``: the committed
``tests/data`` unless ``FACESEARCH_DATA`` says otherwise). The synthetic-geometry tests need
only dlib and the model file. Run with ``-s`` to see the
measured numbers.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from export.shape_predictor import export_landmarks
from facesearch.vision.align import MEAN_FACE_5, face_chip
from facesearch.vision.landmarks import LandmarkPredictor

dlib = pytest.importorskip("dlib", reason="dlib-bin (the parity reference) is not installed")

NUM_LFW_IMAGES = 24

Exported = tuple[dict[str, Any], LandmarkPredictor]
Faces = list[tuple[str, np.ndarray, Any]]
RecordProperty = Callable[[str, object], None]


def model_path() -> Path:
    """dlib's 5-point model inside face_recognition_models, found without importing the
    package (its __init__ needs pkg_resources, which modern environments lack)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face_recognition_models (which ships dlib's 5-point model) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_5_face_landmarks.dat"


def chip_stats(ours: np.ndarray, ref: np.ndarray) -> tuple[int, float, float]:
    """(max abs diff, mean abs diff, fraction of values within 2 levels)."""
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    return int(diff.max()), float(diff.mean()), float((diff <= 2).mean())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    sp5 = model_path()
    if not sp5.is_file():
        pytest.skip(f"dlib 5-point model not found at {sp5}")
    out = tmp_path_factory.mktemp("landmarks") / "landmarks5.npz"
    manifest = export_landmarks(sp5, out)
    return manifest, LandmarkPredictor.from_file(out)


@pytest.fixture(scope="module")
def dlib_predictor() -> Any:
    sp5 = model_path()
    if not sp5.is_file():
        pytest.skip(f"dlib 5-point model not found at {sp5}")
    return dlib.shape_predictor(str(sp5))


@pytest.fixture(scope="module")
def lfw_faces(lfw_dir: Path) -> Faces:
    """24 LFW images (every Nth of the sorted paths) with dlib's HOG face box for each
    (the largest; a fixed central box when none is found)."""
    root = lfw_dir / "images"
    paths = sorted(root.glob("*/*.jpg"))
    if len(paths) < NUM_LFW_IMAGES:
        pytest.skip(f"only {len(paths)} LFW images under {root}")
    chosen = paths[:: len(paths) // NUM_LFW_IMAGES][:NUM_LFW_IMAGES]
    detector = dlib.get_frontal_face_detector()
    faces = []
    for path in chosen:
        image = np.asarray(Image.open(path).convert("RGB"))
        boxes = sorted(detector(image, 1), key=lambda r: r.area(), reverse=True)
        faces.append((path.name, image, boxes[0] if boxes else dlib.rectangle(70, 70, 179, 179)))
    return faces


def dlib_points(shape: Any) -> np.ndarray:
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float32)


def our_box(rect: Any) -> tuple[int, int, int, int]:
    """dlib rectangle(l, t, r, b) is inclusive; ours is (l, t, r + 1, b + 1)."""
    return (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)


@pytest.mark.slow
def test_export_describes_dlib_five_point_model(exported: Exported) -> None:
    manifest, predictor = exported
    assert manifest["num_landmarks"] == predictor.num_landmarks == 5
    assert manifest["cascade_depth"] == predictor.cascade_depth == 15
    assert manifest["trees_per_level"] == 500
    assert manifest["tree_depth"] == 4
    assert manifest["feature_pool_size"] == 800


@pytest.mark.slow
def test_landmarks_match_dlib_on_lfw(
    exported: Exported, dlib_predictor: Any, lfw_faces: Faces, record_property: RecordProperty
) -> None:
    _, predictor = exported
    errors, exact = [], 0
    for name, image, rect in lfw_faces:
        ref = dlib_points(dlib_predictor(image, rect))
        ours = predictor.predict(image, our_box(rect))
        err = np.linalg.norm(ours - ref, axis=1)
        errors.append(err)
        exact += bool((ours == ref).all())
        assert err.max() <= 3.0, f"{name}: landmarks {ours.tolist()} vs dlib {ref.tolist()}"
    mean_err = float(np.mean(errors))
    record_property("landmark_mean_err_px", mean_err)
    print(
        f"\nlandmarks vs dlib on {len(lfw_faces)} LFW faces: mean err {mean_err:.4f} px, "
        f"max {float(np.max(errors)):.3f} px, {exact} faces identical"
    )
    assert mean_err <= 0.5


@pytest.mark.slow
def test_chips_match_dlib_on_lfw(
    exported: Exported, dlib_predictor: Any, lfw_faces: Faces, record_property: RecordProperty
) -> None:
    """Our landmarks + our chip against dlib's landmarks + dlib.get_face_chip, end to end."""
    _, predictor = exported
    worst_max = 0
    means: list[float] = []
    within: list[float] = []
    for name, image, rect in lfw_faces:
        shape = dlib_predictor(image, rect)
        ref = dlib.get_face_chip(image, shape, 150, 0.25)
        ours = face_chip(image, predictor.predict(image, our_box(rect)), 150, 0.25)
        assert ours.shape == ref.shape == (150, 150, 3)
        max_diff, mean_diff, frac = chip_stats(ours, ref)
        assert mean_diff <= 1.0 and frac >= 0.99, f"{name}: mean abs diff {mean_diff}, within 2: {frac}"
        worst_max = max(worst_max, max_diff)
        means.append(mean_diff)
        within.append(frac)
    record_property("chip_mean_abs_diff", float(np.mean(means)))
    print(
        f"\nchips vs dlib on {len(lfw_faces)} LFW faces: mean abs diff {np.mean(means):.5f}, "
        f"max abs diff {worst_max}, min fraction within 2 levels {min(within):.5f}"
    )


def test_chips_match_dlib_on_synthetic_geometry(record_property: RecordProperty) -> None:
    """Rotations, sizes, paddings, faces partly off the image and faces far bigger than the
    chip (dlib's image pyramid), on noise and on blocky images (flat areas)."""
    rng = np.random.default_rng(1234)
    means, worst_max, levels = [], 0, 0
    for case in range(24):
        height, width = (int(v) for v in rng.integers(60, 900, 2))
        if case % 2:
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        else:
            blocks = rng.integers(0, 4, (height // 16 + 1, width // 16 + 1, 3)) * 80
            image = np.repeat(np.repeat(blocks, 16, 0), 16, 1)[:height, :width].astype(np.uint8)
        scale = float(rng.uniform(20, 700))
        angle = float(rng.uniform(-math.pi, math.pi))
        centre = np.array([rng.uniform(-40, width + 40), rng.uniform(-40, height + 40)])
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        points = np.round((np.array(MEAN_FACE_5) - 0.5) * scale @ rot.T + centre + rng.normal(0, 2, (5, 2)))
        size = int(rng.choice([150, 150, 80, 151]))
        padding = float(rng.choice([0.25, 0.25, 0.1, 0.4]))
        detection = dlib.full_object_detection(
            dlib.rectangle(0, 0, 1, 1), [dlib.point(int(x), int(y)) for x, y in points]
        )
        ref = dlib.get_face_chip(image, detection, size, padding)
        ours = face_chip(image, points, size, padding)
        assert ours.shape == ref.shape
        max_diff, mean_diff, frac = chip_stats(ours, ref)
        assert mean_diff <= 1.0 and frac >= 0.99, f"case {case}: mean abs diff {mean_diff}, within 2: {frac}"
        means.append(mean_diff)
        worst_max = max(worst_max, max_diff)
        levels += scale * (1 + 2 * padding) > 2 * size  # a pyramid level is used
    assert levels >= 5  # the pyramid path was exercised
    record_property("synthetic_chip_mean_abs_diff", float(np.mean(means)))
    print(
        f"\nsynthetic chips vs dlib: 24 cases ({levels} through the pyramid), mean abs diff "
        f"{np.mean(means):.5f}, max abs diff {worst_max}"
    )


@pytest.mark.slow
def test_landmarks_match_dlib_on_random_boxes(exported: Exported, dlib_predictor: Any) -> None:
    """Noise images and boxes of any shape, partly or wholly off the image."""
    _, predictor = exported
    rng = np.random.default_rng(99)
    errors = []
    for _ in range(12):
        height, width = (int(v) for v in rng.integers(20, 300, 2))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        rects = []
        for _ in range(4):
            w, h = (int(v) for v in rng.integers(2, 250, 2))
            left, top = int(rng.integers(-w, width)), int(rng.integers(-h, height))
            rects.append(dlib.rectangle(left, top, left + w - 1, top + h - 1))
        ours = predictor.predict_many(image, [our_box(r) for r in rects])
        ref = np.stack([dlib_points(dlib_predictor(image, r)) for r in rects])
        errors.append(np.linalg.norm(ours - ref, axis=2))
    mean_err = float(np.mean(errors))
    print(f"\nlandmarks vs dlib on 48 random boxes: mean err {mean_err:.4f} px, max {float(np.max(errors)):.3f}")
    assert mean_err <= 0.5
