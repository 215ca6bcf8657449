"""The int8 detector (``facesearch-export dlib --detector int8``, export/quantize.py).

It must find the faces the float detector finds on the fixture photos, with boxes within a
tolerance (the int8 scores differ by ~0.01, which can move a box to the neighbouring cell or
pyramid level: IoU ~0.82 or ~0.69), and the bundle must record the variant, keep the float model
for parity and keep the contract id. Exact dlib parity of the float model is
tests/integration/test_parity_detector.py's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.bundle.manifest import DetectorVariant, ModelBundle, sha256_file
from facesearch.errors import BundleError, ModelFormatError
from facesearch.vision.detector import Detection, FaceDetector

pytest.importorskip("torch", reason="exporting the detector needs the export extra (torch)")

MATCH_IOU = 0.5  # the same face
MIN_MEAN_IOU = 0.9  # most boxes identical
MAX_SCORE_DIFF = 0.15


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inner = max(w, 0) * max(h, 0)
    return inner / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inner)


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def float_detector(bundle_dir: Path) -> tuple[Path, dict]:
    bundle = ModelBundle.load(bundle_dir)
    assert bundle.detector_variant is DetectorVariant.FLOAT
    return bundle.detector_model()


@pytest.fixture(scope="module")
def int8_detector(float_detector: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from export.mmod import verification_inputs
    from export.quantize import quantize_detector, shipped_ranges

    path, section = float_detector
    out = tmp_path_factory.mktemp("int8") / "detector.int8.onnx"
    return out, quantize_detector(path, section, shipped_ranges(), out, verification_inputs(section))


def _match(ref: list[Detection], got: list[Detection]) -> list[tuple[Detection, Detection]]:
    pairs, free = [], list(got)
    for a in ref:
        best = max(free, key=lambda b: _iou(a.box, b.box), default=None)
        assert best is not None and _iou(a.box, best.box) >= MATCH_IOU, f"float face {a} not found by int8 in {got}"
        free.remove(best)
        pairs.append((a, best))
    assert not free, f"int8 found faces the float detector does not: {free}"
    return pairs


@pytest.mark.parametrize("upsample", [0, 1])
def test_int8_finds_the_float_detectors_faces(
    float_detector: tuple[Path, dict],
    int8_detector: tuple[Path, dict],
    lfw_images: list[Path],
    group_photos: list[Path],
    upsample: int,
) -> None:
    ref = FaceDetector.from_onnx(*float_detector, intra_op_threads=2)
    int8 = FaceDetector.from_onnx(*int8_detector, intra_op_threads=2)
    matched = []
    for path in [*lfw_images, *group_photos]:
        image = _load(path)
        matched += _match(ref.detect(image, upsample), int8.detect(image, upsample))
    assert len(matched) >= len(lfw_images) + 2 * len(group_photos)
    ious = [_iou(a.box, b.box) for a, b in matched]
    assert np.mean(ious) >= MIN_MEAN_IOU, sorted(ious)[:5]
    assert max(abs(a.score - b.score) for a, b in matched) <= MAX_SCORE_DIFF


def test_int8_section_describes_the_quantisation(float_detector: tuple[Path, dict], int8_detector) -> None:
    from export.quantize import shipped_ranges

    (float_path, float_section), (path, section) = float_detector, int8_detector
    assert section["variant"] == "int8" and section["onnx"]["sha256"] == sha256_file(path)
    assert section["float_model"] == {"file": float_path.name, "onnx": float_section["onnx"]}
    calibration = section["quantization"]["ranges"]["calibration"]
    assert calibration == shipped_ranges().calibration
    assert calibration["seed"] == 0 and calibration["count"] == len(calibration["photos"]) == 64
    # the shipped ranges were measured on lfw-dev photos that the tests' fixtures do not hold
    fixtures = {p.name for p in (Path(__file__).parents[1] / "data" / "lfw-dev" / "images").glob("*/*.jpg")}
    assert not fixtures & {Path(p).name for p in calibration["photos"]}
    # the runtime reads the same conventions as for the float model
    assert FaceDetector.from_onnx(path, section).config == FaceDetector.from_onnx(float_path, float_section).config


def test_ranges_for_another_network_are_refused(float_detector: tuple[Path, dict], tmp_path: Path) -> None:
    from export.quantize import ActivationRanges, quantize_detector, shipped_ranges

    path, section = float_detector
    ranges = shipped_ranges()
    other = ActivationRanges(ranges.ranges, "0" * 64, ranges.graph, ranges.calibration)
    with pytest.raises(ModelFormatError, match="measured for detector"):
        quantize_detector(path, section, other, tmp_path / "x.onnx")
    partial = ActivationRanges(dict(list(ranges.ranges.items())[1:]), ranges.source_sha256, ranges.graph, {})
    with pytest.raises(ModelFormatError, match="miss"):
        quantize_detector(path, section, partial, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_choose_photos_is_seeded_and_honours_exclusions(lfw_dir: Path) -> None:
    from export.quantize import choose_photos

    root = lfw_dir / "images"
    first = choose_photos(root, 10, seed=3)
    assert first == choose_photos(root, 10, seed=3) and first != choose_photos(root, 10, seed=4)
    assert first == sorted(first) and len(set(first)) == 10
    excluded = {p.relative_to(root).as_posix() for p in first}
    assert not excluded & {p.relative_to(root).as_posix() for p in choose_photos(root, 10, 3, excluded)}


def test_export_cli_int8_bundle(bundle_dir: Path, lfw_images: list[Path], tmp_path: Path) -> None:
    """--detector int8 with --detector-calibration: a valid bundle running the int8 detector, the
    float one kept for parity, the calibration recorded, the contract id unchanged."""
    from export.main import main as export_main

    photos = tmp_path / "calibration"
    for p in lfw_images[:3]:
        (photos / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, photos / p.parent.name / p.name)
    out = tmp_path / "int8"
    argv = ["dlib", "--out", str(out), "--detector", "int8", "--detector-calibration", str(photos)]
    assert export_main(argv) == 0
    bundle, reference = ModelBundle.load(out), ModelBundle.load(bundle_dir)
    assert bundle.contract_id == reference.contract_id
    assert set(bundle.spec.files) == {*reference.spec.files, "detector.int8.onnx"}
    assert bundle.detector_variant is DetectorVariant.INT8 and bundle.path("detector").name == "detector.int8.onnx"
    section = bundle.section("detector")
    calibration = section["quantization"]["ranges"]["calibration"]
    assert calibration["photos"] == sorted(f"{p.parent.name}/{p.name}" for p in lfw_images[:3])
    assert calibration["seed"] == 0 and len(calibration["photos_sha256"]) == 64
    assert bundle.manifest["export_config"]["detector"] == "int8"
    # parity stays selectable: the float model is the float bundle's, byte for byte
    float_path, float_section = bundle.detector_model(DetectorVariant.FLOAT)
    assert float_path.read_bytes() == reference.path("detector").read_bytes()
    assert float_section == reference.section("detector")
    FaceDetector.from_onnx(float_path, float_section)
    FaceDetector.from_onnx(*bundle.detector_model())
    with pytest.raises(BundleError, match="no int8"):
        reference.detector_model(DetectorVariant.INT8)
    assert json.loads((out / "manifest.json").read_text())["detector"]["variant"] == "int8"


def test_export_cli_refuses_calibration_without_int8(tmp_path: Path) -> None:
    from export.main import main as export_main

    with pytest.raises(SystemExit) as info:
        export_main(["dlib", "--out", str(tmp_path / "b"), "--detector-calibration", str(tmp_path)])
    assert info.value.code == 2
