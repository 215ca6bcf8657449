"""Which detector a bundle runs (manifest ``detector.variant``) and the float model an int8 bundle keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from facesearch.bundle.manifest import BundleManifest, DetectorVariant, ModelBundle
from facesearch.errors import BundleError

FLOAT_ONNX = {"file": "detector.onnx", "sha256": "22" * 32, "opset": 17}
CONVENTIONS = {"kind": "dlib_mmod_detector", "pyramid": {"rate_down": 6}, "nms": {"iou": 0.5}}


def _bundle(detector: dict[str, Any]) -> ModelBundle:
    manifest = {
        "format": "facesearch-model-bundle",
        "format_version": 1,
        "model_id": "m",
        "contract_id": "m:0",
        "files": {},
        "embedder": {"file": "embedder.onnx"},
        "detector": detector,
        "landmarks": {"file": "landmarks5.npz"},
        "chip": {"size": 150, "padding": 0.25},
        "embedding": {"dim": 128},
    }
    return ModelBundle(Path("/b"), manifest, BundleManifest.from_dict(manifest))


def test_a_manifest_without_a_variant_runs_the_float_detector() -> None:
    bundle = _bundle({**CONVENTIONS, "file": "detector.onnx", "onnx": FLOAT_ONNX})
    assert bundle.detector_variant is DetectorVariant.FLOAT
    assert bundle.detector_model() == (Path("/b/detector.onnx"), bundle.section("detector"))
    assert bundle.detector_model(DetectorVariant.FLOAT)[0] == Path("/b/detector.onnx")
    with pytest.raises(BundleError, match="no int8 one"):
        bundle.detector_model(DetectorVariant.INT8)


def test_an_int8_bundle_runs_int8_and_keeps_the_float_model_for_parity() -> None:
    int8_onnx = {"file": "detector.int8.onnx", "sha256": "44" * 32, "opset": 17}
    section = {
        **CONVENTIONS,
        "file": "detector.int8.onnx",
        "variant": "int8",
        "onnx": int8_onnx,
        "quantization": {"format": "QDQ"},
        "float_model": {"file": "detector.onnx", "onnx": FLOAT_ONNX},
    }
    bundle = _bundle(section)
    assert bundle.detector_variant is DetectorVariant.INT8
    assert bundle.detector_model() == (Path("/b/detector.int8.onnx"), section)
    assert bundle.detector_model(DetectorVariant.INT8)[0] == Path("/b/detector.int8.onnx")
    path, parity = bundle.detector_model(DetectorVariant.FLOAT)
    assert path == Path("/b/detector.onnx")
    assert parity == {**CONVENTIONS, "file": "detector.onnx", "variant": "float", "onnx": FLOAT_ONNX}


def test_an_unknown_variant_is_a_bundle_error() -> None:
    bundle = _bundle({**CONVENTIONS, "file": "detector.onnx", "variant": "fp4", "onnx": FLOAT_ONNX})
    with pytest.raises(BundleError, match="unknown detector variant 'fp4'"):
        _ = bundle.detector_variant
