"""Our ONNX MMOD detector against dlib's own ``cnn_face_detection_model_v1`` on real faces.

Every dlib detection must have one of ours with IoU >= 0.9 and a score within 1e-3, and the counts
must agree (in practice the boxes are identical and scores agree to ~2e-6). Two windows whose
scores differ by less than the two implementations' float noise (~2e-6) could be ordered
differently by NMS; the synthetic canvas below is laid out so that no such near-tie occurs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.vision.detector import Detection, FaceDetector

dlib = pytest.importorskip("dlib", reason="dlib-bin is the parity reference (test extra)")
pytest.importorskip("torch", reason="exporting the detector needs the export extra (torch)")

MIN_IOU = 0.9
MAX_SCORE_DIFF = 1e-3


@pytest.fixture(scope="module")
def dat_path() -> Path:
    from facesearch.errors import ModelFormatError
    from facesearch.nets.dlib_sources import default_models_dir

    try:
        return default_models_dir() / "mmod_human_face_detector.dat"
    except ModelFormatError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def exported(dat_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from export.mmod import export_detector

    out = tmp_path_factory.mktemp("mmod") / "detector.onnx"
    return out, export_detector(dat_path, out)


@pytest.fixture(scope="module")
def ours(exported: tuple[Path, dict]) -> FaceDetector:
    path, section = exported
    return FaceDetector.from_onnx(path, section, intra_op_threads=2)


@pytest.fixture(scope="module")
def reference(dat_path: Path):
    return dlib.cnn_face_detection_model_v1(str(dat_path))


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inner = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inner
    return inner / union


def _assert_parity(reference, ours: FaceDetector, image: np.ndarray, upsample: int) -> float:
    """Checks one image; returns the largest score difference."""
    theirs = [
        ((d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1), d.confidence)
        for d in reference(image, upsample)
    ]
    mine: list[Detection] = ours.detect(image, upsample=upsample)
    assert len(mine) == len(theirs), f"dlib found {theirs}, we found {mine}"
    worst = 0.0
    for box, score in theirs:
        best = max(mine, key=lambda d: _iou(box, d.box))
        assert _iou(box, best.box) >= MIN_IOU, f"dlib box {box} has no match in {mine}"
        assert abs(best.score - score) <= MAX_SCORE_DIFF, f"score {best.score} vs dlib {score}"
        worst = max(worst, abs(best.score - score))
    return worst


def test_export_is_deterministic_and_matches_torch(dat_path: Path, exported: tuple[Path, dict], tmp_path: Path) -> None:
    from export.mmod import export_detector

    path, section = exported
    again = export_detector(dat_path, tmp_path / "again.onnx")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == section["onnx"]["sha256"]
    assert again["onnx"]["sha256"] == section["onnx"]["sha256"]
    assert section["onnx"]["max_abs_diff_vs_torch"] < 1e-4
    assert section["output"]["to_input"] == {
        "stride": 8,
        "offset": 14,
        "formula": "input_xy = stride * output_xy + offset",
    }
    assert section["detector_window"]["width"] == 80 and section["nms"]["percent_covered"] == 1.0


@pytest.mark.slow
def test_lfw_parity_upsample_0(reference, ours: FaceDetector, lfw_images: list[Path]) -> None:
    found = 0
    for path in lfw_images:
        _assert_parity(reference, ours, _load(path), 0)
        found += len(ours.detect(_load(path)))
    assert found >= len(lfw_images) // 2, "LFW photos are mostly single faces: the test would be vacuous"


@pytest.mark.slow
def test_lfw_parity_upsample_1(reference, ours: FaceDetector, lfw_images: list[Path]) -> None:
    for path in lfw_images[::3]:
        _assert_parity(reference, ours, _load(path), 1)


def _canvas(lfw_dir: Path) -> np.ndarray:
    """Four LFW faces pasted at 150, 100, 72 and 56 px crops (the last ~45 px of face) on noise."""
    paths = sorted((lfw_dir / "images").glob("*/*.jpg"))
    rng = np.random.default_rng(7)
    canvas = np.full((360, 480, 3), (120, 128, 110), dtype=np.int64) + rng.integers(-12, 13, (360, 480, 3))
    canvas = canvas.clip(0, 255).astype(np.uint8)
    for index, size, (y, x) in [
        (100, 150, (20, 20)),
        (900, 100, (40, 250)),
        (1700, 56, (230, 380)),
        (2400, 72, (220, 120)),
    ]:
        crop = Image.open(paths[index % len(paths)]).convert("RGB").crop((60, 60, 190, 190))
        canvas[y : y + size, x : x + size] = np.asarray(crop.resize((size, size), Image.BILINEAR))
    return canvas


@pytest.mark.slow
def test_synthetic_canvas_parity(reference, ours: FaceDetector, lfw_dir: Path) -> None:
    canvas = _canvas(lfw_dir)
    for upsample in (0, 1):
        _assert_parity(reference, ours, canvas, upsample)
    small = [d for d in ours.detect(canvas, upsample=1) if d.box[2] - d.box[0] < 60]
    assert small, "the small pasted face should need upsample=1"
    assert len(ours.detect(canvas, upsample=1)) > len(ours.detect(canvas, upsample=0))


def test_detect_batch_equals_detect(ours: FaceDetector, lfw_images: list[Path]) -> None:
    images = [_load(p) for p in lfw_images[:3]] + [_load(lfw_images[3])[:200, :180]]
    batched = ours.detect_batch(images)
    for image, dets in zip(images, batched, strict=True):
        single = ours.detect(image)
        assert [d.box for d in dets] == [d.box for d in single]
        np.testing.assert_allclose([d.score for d in dets], [d.score for d in single], atol=1e-5)
