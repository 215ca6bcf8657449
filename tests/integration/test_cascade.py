"""The detection cascade (BlazeFace proposals confirmed by MMOD in small crops) on real photos.

Its faces are MMOD's: on LFW photos and the group photos each face it gives is one the full MMOD
scan finds, with nearly the same box and score, and it finds every face of the scan that is at
least ``2 * min_face`` across. A photo where nothing is proposed gets the full scan; the parity
mode (``detect_pixels=None``) runs no proposals at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.vision.decode import decode_image
from facesearch.vision.detector import Detection
from facesearch.vision.pipeline import DetectorMode, FacePipeline, PipelineConfig

MIN_IOU = 0.6  # boxes agree to a pyramid step (5/6) in size; faces cut by the photo edge differ most
MAX_SCORE_DIFF = 0.25
#: A face at the photo's edge (:func:`_inside`) loses context differently in its crop and in the
#: scan's pyramid: the same face, a looser box and score.
MIN_IOU_EDGE = 0.4
MAX_SCORE_DIFF_EDGE = 0.6


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def pipelines(bundle_dir: Path) -> dict[DetectorMode, FacePipeline]:
    bundle = ModelBundle.load(bundle_dir)
    if bundle.proposals_model() is None:
        pytest.fail("the exported bundle should hold the proposal model")
    return {m: FacePipeline(bundle, PipelineConfig(threads=1, detector_mode=m)) for m in DetectorMode}


def _inside(d: Detection, image: np.ndarray) -> bool:
    """Whether a face lies a quarter of its size or more from every edge of the photo."""
    m = 0.25 * (d.box[2] - d.box[0])
    return d.box[0] >= m and d.box[1] >= m and d.box[2] <= image.shape[1] - m and d.box[3] <= image.shape[0] - m


def _best_match(d: Detection, others: list[Detection], min_iou: float) -> Detection | None:
    scored = sorted(others, key=lambda o: -_iou(d.box, o.box))
    return scored[0] if scored and _iou(d.box, scored[0].box) >= min_iou else None


def test_cascade_finds_the_mmod_faces(
    pipelines: dict[DetectorMode, FacePipeline], lfw_images: list[Path], group_photos: list[Path]
) -> None:
    cascade, scan = pipelines[DetectorMode.CASCADE], pipelines[DetectorMode.BUDGET]
    assert cascade.proposer is not None and scan.proposer is None
    min_face = cascade.config.min_face
    faces = 0
    for path in group_photos + lfw_images[::20]:
        image = decode_image(path.read_bytes())
        found = cascade.detect_cascade(image, min_face)
        full = scan.detect(image)
        for d in found:
            inside = _inside(d, image)
            m = _best_match(d, full, MIN_IOU if inside else MIN_IOU_EDGE)
            assert m is not None, f"{path.name}: cascade face {d} is none of MMOD's {full}"
            bound = MAX_SCORE_DIFF if inside else MAX_SCORE_DIFF_EDGE
            assert abs(m.score - d.score) <= bound, f"{path.name}: {d} vs {m}"
        for d in full:
            if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= 2 * min_face:
                m = _best_match(d, found, MIN_IOU if _inside(d, image) else MIN_IOU_EDGE)
                assert m is not None, f"{path.name}: MMOD face {d} missed by the cascade"
        faces += len(found)
        assert cascade.detect(image) == (found or full)  # what analyze uses
    assert faces >= len(group_photos) * 2


def test_no_proposal_falls_back_to_the_scan(
    bundle_dir: Path, pipelines: dict[DetectorMode, FacePipeline], group_photos: list[Path]
) -> None:
    # proposals searched in a 16x16 copy of the photo: none, so the photo gets the budget scan
    blind = FacePipeline(
        ModelBundle.load(bundle_dir), PipelineConfig(threads=1, detector_mode=DetectorMode.CASCADE, proposal_pixels=256)
    )
    image = decode_image(group_photos[0].read_bytes())
    assert blind.propose(image, 40) == []
    full = pipelines[DetectorMode.BUDGET].detect(image)
    assert full and blind.detect(image) == full


def test_parity_mode_runs_no_cascade(bundle_dir: Path, group_photos: list[Path]) -> None:
    bundle = ModelBundle.load(bundle_dir)
    exact = FacePipeline(bundle, PipelineConfig(threads=1, detect_pixels=None))
    assert exact.config.mode is DetectorMode.EXACT and exact.proposer is None
    image = decode_image(group_photos[0].read_bytes())
    explicit = FacePipeline(bundle, PipelineConfig(threads=1, detector_mode=DetectorMode.EXACT))
    assert explicit.detect(image) == exact.detect(image) == exact.detector.detect(image, upsample=1)


def test_bundle_without_proposals_runs_the_scan(bundle_dir: Path, tmp_path: Path, group_photos: list[Path]) -> None:
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["proposals"], manifest["files"]["proposals.onnx"]
    (old / "proposals.onnx").unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    bundle = ModelBundle.load(old)
    assert bundle.proposals_model() is None
    pipe = FacePipeline(bundle, PipelineConfig(threads=1, detector_mode=DetectorMode.CASCADE))
    assert pipe.proposer is None
    image = decode_image(group_photos[0].read_bytes())
    scan = FacePipeline(bundle, PipelineConfig(threads=1, detector_mode=DetectorMode.BUDGET))
    assert pipe.detect(image) == scan.detect(image)
