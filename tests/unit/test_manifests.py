"""Typed on-disk contracts: bundle manifest, index manifest and training checkpoint round-trip
(read -> write gives the same JSON / the same dict) and refuse malformed sections."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facesearch.bundle.manifest import BundleManifest, ModelBundle
from facesearch.errors import BundleError
from facesearch.store.index_artifact import (
    MANIFEST,
    IndexManifest,
    RecallReport,
    SearchParams,
    read_manifest,
)
from indexer.publish import seal


def _bundle_manifest() -> dict[str, Any]:
    """A manifest shaped like ``facesearch-export dlib``'s (floats as float32 values print)."""
    return {
        "format": "facesearch-model-bundle",
        "format_version": 1,
        "model_id": "dlib-resnet-v1",
        "contract_id": "dlib-resnet-v1:0123456789abcdef",
        "preprocessing_version": 1,
        "source": {"package": "face_recognition_models", "version": "0.3.0", "files": {"a.dat": "ab" * 32}},
        "files": {"embedder.onnx": "11" * 32, "detector.onnx": "22" * 32, "landmarks5.npz": "33" * 32},
        "embedder": {
            "file": "embedder.onnx",
            "embedding_dim": 128,
            "loss_metric": {"distance_threshold": 0.6000000238418579, "margin": 0.03999999910593033},
            "normalisation": {"applied_in_graph": True, "divide_by": 256.0, "mean_rgb": [122.78199768066406]},
        },
        "detector": {"file": "detector.onnx", "adjust_threshold": 0.0, "detector_window": {"height": 80}},
        "landmarks": {"file": "landmarks5.npz", "num_landmarks": 5, "source": "shape_predictor_5.dat"},
        "chip": {"size": 150, "padding": 0.25, "landmarks": "5-point", "method": "dlib get_face_chip"},
        "embedding": {
            "dim": 128,
            "normalised": True,
            "flip_average": True,
            "metric": "inner_product",
            "score": "cosine similarity, higher is more alike",
            "note": "dlib's usual 0.6 tolerance ~ cosine 0.82",
        },
        "export_config": {"flip_average": True, "models_dir": None, "shipped_calibration": True},
    }


def _text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_bundle_manifest_round_trips_byte_for_byte() -> None:
    data = _bundle_manifest()
    spec = BundleManifest.from_dict(copy.deepcopy(data))
    assert spec.to_json() == _text(data)
    assert BundleManifest.from_dict(json.loads(spec.to_json())) == spec
    assert spec.embedding.dim == 128 and spec.embedding.flip_average is True
    assert spec.chip.size == 150 and spec.chip.padding == 0.25 and spec.embedder.file == "embedder.onnx"


def test_bundle_manifest_keeps_optional_and_unknown_sections_as_they_were() -> None:
    old = _bundle_manifest()
    del old["embedding"]["flip_average"], old["preprocessing_version"], old["export_config"]
    spec = BundleManifest.from_dict(copy.deepcopy(old))
    assert spec.embedding.flip_average is None and spec.to_json() == _text(old)  # nothing added
    tuned = _bundle_manifest()
    tuned["training"] = {
        "checkpoint_sha256": "44" * 32,
        "epoch": 1,
        "global_step": 3,
        "fingerprint": "0" * 64,
        "arch_kind": "dlib_resnet",
        "config": {"arch": "dlib_resnet", "seed": 0},
        "base_contract_id": "dlib-resnet-v1:0123456789abcdef",
        "best": {"epoch": 1, "metric": "val_accuracy", "value": 0.9},
        "metrics": {"val_accuracy": 0.9},
        "data": None,
    }
    tuned["parity"] = {
        "chips": 48,
        "max_abs_diff": 2.1e-6,
        "mean_descriptor_norm": 0.43,
        "relative": 4.9e-6,
        "bound_relative": 0.001,
    }
    tuned["calibration"] = {"from": "an older exporter"}
    spec = BundleManifest.from_dict(copy.deepcopy(tuned))
    assert spec.training is not None and spec.training.epoch == 1 and spec.parity is not None
    assert spec.extra == {"calibration": {"from": "an older exporter"}} and spec.to_json() == _text(tuned)


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("embedding", {"dim": "128"}, "dim must be a number"),
        ("embedding", {"dim": 128, "flip_average": "yes"}, "flip_average must be true or false"),
        ("chip", {"size": 150}, "padding must be a number"),
        ("detector", {"kind": "mmod"}, "names no file"),
        ("files", ["embedder.onnx"], "files is not an object"),
    ],
)
def test_bundle_manifest_refuses_malformed_sections(section: str, value: Any, message: str) -> None:
    data = _bundle_manifest()
    data[section] = value
    with pytest.raises(BundleError, match=message):
        BundleManifest.from_dict(data)


def test_model_bundle_reads_the_typed_manifest(tmp_path: Path) -> None:
    data = _bundle_manifest()
    (tmp_path / "manifest.json").write_text(_text(data))
    bundle = ModelBundle.load(tmp_path, verify=False)
    assert bundle.manifest == data and bundle.spec.to_dict() == data
    assert (bundle.contract_id, bundle.embedding_dim, bundle.flip_average) == (data["contract_id"], 128, True)
    assert (bundle.chip_size, bundle.chip_padding) == (150, 0.25)


def test_index_manifest_round_trips_byte_for_byte(tmp_path: Path) -> None:
    manifest = IndexManifest(
        version="v000001",
        created_at="2026-01-01T00:00:00Z",
        contract_id="m:1",
        d=8,
        ntotal=3,
        n_identities=2,
        factory="IDMap,Flat",
        nlist=0,
        search=SearchParams(nprobe=4, refine_k_factor=2),
        recall=RecallReport(200, 10, 0.99, 0.98, 1.0, 0.95, 0.98, True),
        refine="fp16",
        input_fingerprint="x",
        parent=None,
        build={"embed_s": 1.5, "open_set": {"params_from": "default"}},
        config={"nlist": None, "out": "/idx"},
    )
    np.save(tmp_path / "vector_ids.npy", np.arange(3, dtype=np.int64))
    sealed = seal(tmp_path, manifest)
    text = (tmp_path / MANIFEST).read_text()
    assert sealed.files["vector_ids.npy"].bytes == 152
    again = read_manifest(tmp_path)
    assert again == sealed and again.to_json() == text and IndexManifest.from_dict(json.loads(text)) == sealed


def test_training_checkpoint_round_trips(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="checkpoints need torch (the export extra)")
    from facesearch.nets.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    stored = {
        "arch": {"kind": "resnet18", "embedding_dim": 8},
        "model_state": {},
        "head_state": {},
        "optimizer_state": {"state": {}, "param_groups": []},
        "scheduler_state": {"last_epoch": 3},
        "epoch": 1,
        "global_step": 10,
        "step_in_epoch": 0,
        "rng_state": {"python": [3, [1, 2], None], "loader": None},
        "config": {"lr": 0.01, "seed": 0},
        "fingerprint": "f" * 64,
        "base_bundle": {"path": "/b", "contract_id": "m:1", "manifest_sha256": "a" * 64, "flip_average": True},
        "metrics": {"val_accuracy": 0.9},
        "best": {"epoch": 1, "metric": "val_accuracy", "value": 0.9, "stale_epochs": 0},
        "data": {
            "chips_manifest_sha256": "c" * 64,
            "train_identities": 4,
            "val_identities": 2,
            "train_chips": 40,
            "val_chips": 20,
            "val_pairs": 30,
        },
        "history": [{"epoch": 0, "val_accuracy": 0.8}, {"epoch": 1, "val_accuracy": 0.9}],
        "partial": {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0},
    }
    ckpt = Checkpoint.from_dict(stored)
    assert ckpt.to_dict() == stored and ckpt.best.value == 0.9 and ckpt.base_bundle.flip_average is True
    save_checkpoint(tmp_path, ckpt.to_dict(), is_best=False)
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert Checkpoint.from_dict(loaded) == ckpt
    assert {k: v for k, v in loaded.items() if k not in ("format", "format_version")} == stored
