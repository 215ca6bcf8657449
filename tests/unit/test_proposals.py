"""BlazeFace proposals: anchor layout, box decoding, scale levels, the manifest section, and the
cascade's crop geometry (``facesearch.vision.proposals``, ``facesearch.vision.pipeline``)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from facesearch.bundle.manifest import BundleManifest, ModelFile
from facesearch.errors import ModelFormatError
from facesearch.vision import proposals as P  # noqa: N812
from facesearch.vision.pipeline import (
    CASCADE_CROP_PX,
    CASCADE_FACE_PX,
    DetectorMode,
    PipelineConfig,
    _proposal_crop,
)

SECTION = {
    "file": "proposals.onnx",
    "input": {"size": 128, "size_multiple": 16, "layout": "NHWC", "dtype": "uint8", "colour": "RGB"},
    "anchors": {"layers": [[8, 2], [16, 6]], "offset": 0.5},
    "licence": "Apache-2.0",
}
CONFIG = P.ProposerConfig.from_manifest(SECTION)


def test_anchor_layout_matches_mediapipe_short_range() -> None:
    a = P.anchor_centres(128, 128, CONFIG)
    assert a.shape == (896, 2)  # 16*16*2 + 8*8*6, MediaPipe's short-range count
    np.testing.assert_array_equal(a[0], a[1])  # two anchors per stride-8 cell
    np.testing.assert_array_equal(a[0], [4, 4])
    np.testing.assert_array_equal(a[2], [12, 4])  # row-major: x moves first
    np.testing.assert_array_equal(a[512], [8, 8])  # first stride-16 cell
    assert P.anchor_centres(64, 96, CONFIG).shape == (8 * 12 * 2 + 4 * 6 * 6, 2)


def test_decode_boxes_and_threshold() -> None:
    anchors = np.array([[10.0, 20.0], [50.0, 60.0], [5.0, 5.0]], np.float32)
    reg = np.zeros((3, 16), np.float32)
    reg[0, :4] = [2, -4, 10, 20]  # centre (12, 16), 10 x 20
    reg[1, :4] = [0, 0, 8, 8]
    reg[2, :4] = [0, 0, -1, 4]  # invalid (negative width) though it scores
    boxes, logits = P.decode(reg, np.array([1.5, -0.1, 3.0], np.float32), anchors)
    np.testing.assert_allclose(boxes, [[7, 6, 17, 26]])
    np.testing.assert_allclose(logits, [1.5])


def test_level_scales() -> None:
    # a 250x250 photo at min face 40: the face at FACE_PX model pixels, then one level with the photo whole
    assert P.level_scales(250, 250, 40, P.DEFAULT_MAX_PIXELS) == [P.FACE_PX / 40, P.FACE_PX / 40 / P.LEVEL_RATIO]
    scales = P.level_scales(1920, 1080, 40, P.DEFAULT_MAX_PIXELS)
    assert scales[0] == pytest.approx(0.5)
    assert all(b == pytest.approx(a / P.LEVEL_RATIO) for a, b in itertools.pairwise(scales))
    assert 1080 * scales[-1] <= P.LAST_LEVEL_PX < 1080 * scales[-2]
    # a 12 MP photo: level 0 shrunk to the pixel limit (the smallest face searched grows)
    big = P.level_scales(4032, 3024, 40, P.DEFAULT_MAX_PIXELS)
    assert 4032 * 3024 * big[0] ** 2 == pytest.approx(P.DEFAULT_MAX_PIXELS)


def test_manifest_section_checked() -> None:
    assert CONFIG.layers == ((8, 2), (16, 6)) and CONFIG.size_multiple == 16
    bad = copy.deepcopy(SECTION)
    bad["input"]["layout"] = "NCHW"
    with pytest.raises(ModelFormatError, match="NHWC"):
        P.ProposerConfig.from_manifest(bad)
    del bad["anchors"]
    with pytest.raises(ModelFormatError):
        P.ProposerConfig.from_manifest(bad)


def _manifest(with_proposals: bool) -> dict:
    model = {"file": "m.onnx"}
    data = {
        "format": "facesearch-model-bundle",
        "format_version": 1,
        "model_id": "m",
        "contract_id": "m:1",
        "files": {},
        "embedder": model,
        "detector": model,
        "landmarks": model,
        "chip": {"size": 150, "padding": 0.25},
        "embedding": {"dim": 128},
    }
    if with_proposals:
        data["proposals"] = SECTION
    return data


def test_manifest_round_trip_with_and_without_proposals() -> None:
    spec = BundleManifest.from_dict(_manifest(True))
    assert spec.proposals == ModelFile.from_dict(SECTION)
    assert spec.to_dict() == _manifest(True)
    old = BundleManifest.from_dict(_manifest(False))  # bundles from before the cascade
    assert old.proposals is None and "proposals" not in old.to_dict()


def test_parity_mode_is_exact() -> None:
    assert PipelineConfig(detect_pixels=None).mode is DetectorMode.EXACT
    assert not PipelineConfig(detect_pixels=None).rescues_exposure
    assert PipelineConfig(detector_mode=DetectorMode.CASCADE).mode is DetectorMode.CASCADE
    assert PipelineConfig(detect_pixels=None, detector_mode=DetectorMode.CASCADE).mode is DetectorMode.CASCADE


@pytest.mark.parametrize(
    ("box", "shape"),
    [
        ((100.0, 120.0, 140.0, 160.0), (480, 640)),  # a 40 px face: enlarged
        ((10.0, 5.0, 410.0, 405.0), (1080, 1920)),  # a 400 px face at the photo's corner: shrunk
        ((600.0, 400.0, 700.0, 500.0), (500, 700)),  # at the bottom-right edge
    ],
)
def test_proposal_crop_maps_back(box: tuple[float, float, float, float], shape: tuple[int, int]) -> None:
    image = np.full((*shape, 3), 128, np.uint8)
    if box[0] < 40:  # beyond the photo: the fill colour
        crop, _ = _proposal_crop(image, P.Proposal(box, 0.9), (1, 2, 3))
        assert tuple(crop[0, 0]) == (1, 2, 3)
    crop, (sx, sy, ox, oy) = _proposal_crop(image, P.Proposal(box, 0.9), (1, 2, 3))
    assert crop.shape == (CASCADE_CROP_PX, CASCADE_CROP_PX, 3)
    # the proposal's box comes out centred in the crop at CASCADE_FACE_PX, and maps back to itself
    cx1, cy1 = (box[0] - ox) * sx, (box[1] - oy) * sy
    cx2, cy2 = (box[2] - ox) * sx, (box[3] - oy) * sy
    assert (cx1 + cx2) / 2 == pytest.approx(CASCADE_CROP_PX / 2, abs=2)
    assert cx2 - cx1 == pytest.approx(CASCADE_FACE_PX, rel=0.02)
    assert cy2 - cy1 == pytest.approx(cx2 - cx1, rel=0.02)
