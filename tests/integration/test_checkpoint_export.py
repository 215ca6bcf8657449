"""``facesearch-export checkpoint``: a training checkpoint becomes a bundle the runtime loads unchanged,
with a new contract id, byte-reproducible, parity-checked, and clean errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from facesearch.bundle.manifest import ModelBundle, sha256_file
from tests.integration.checkpoint_fixtures import *  # noqa: F403
from tests.integration.checkpoint_fixtures import export_bundle, make_checkpoint

pytest.importorskip("torch", reason="exporting checkpoints needs the export extra (torch)")

import torch


def test_exported_bundle_keeps_the_runtime_contract(bundle_dir: Path, ft_bundle: Path) -> None:
    base, ft = ModelBundle.load(bundle_dir), ModelBundle.load(ft_bundle)
    assert ft.contract_id != base.contract_id and ft.model_id == "facesearch-ft-dlib_resnet"
    assert ft.contract_id.startswith("facesearch-ft-dlib_resnet:")
    # the same sections and keys as the dlib bundle, plus provenance and the parity measurement
    assert set(ft.manifest) == set(base.manifest) | {"training", "parity"}
    assert ft.manifest["embedding"] == base.manifest["embedding"]  # flip_average and d carried over
    for section in ("detector", "landmarks", "chip"):
        assert ft.manifest[section] == base.manifest[section]
    assert {k: v for k, v in ft.manifest["embedder"].items() if k in ("input", "output", "opset")} == {
        k: v for k, v in base.manifest["embedder"].items() if k in ("input", "output", "opset")
    }
    for name in ("detector.onnx", "landmarks5.npz"):
        assert ft.manifest["files"][name] == base.manifest["files"][name]
    assert {"model_card.md", "model_card.json"} <= set(ft.manifest["files"])
    training = ft.manifest["training"]
    assert training["base_contract_id"] == base.contract_id and training["epoch"] == 1
    assert training["checkpoint_sha256"] == sha256_file(ft_bundle.parent / "run" / "best.pt")
    assert 0 < ft.manifest["parity"]["relative"] <= ft.manifest["parity"]["bound_relative"]
    card = json.loads((ft_bundle / "model_card.json").read_text())
    assert card["model"]["contract_id"] == ft.contract_id and "public domain" in card["licence"]["base_weights"]


def test_unchanged_weights_embed_like_the_base(bundle_dir: Path, ft_bundle: Path, lfw_images: list[Path]) -> None:
    from facesearch.vision.decode import load_image
    from facesearch.vision.pipeline import FacePipeline, PipelineConfig

    config = PipelineConfig(min_face=80, threads=1)
    base = FacePipeline(ModelBundle.load(bundle_dir), config)
    ft = FacePipeline(ModelBundle.load(ft_bundle), config)
    faces = 0
    for path in lfw_images[:8]:
        image = load_image(path)
        a, b = base.analyze(image), ft.analyze(image)
        assert len(a) == len(b)
        for fa, fb in zip(a, b, strict=True):
            assert fa.box == fb.box
            assert np.abs(fa.embedding - fb.embedding).max() <= 1e-4
            assert abs(fa.norm - fb.norm) <= 1e-4
            faces += 1
    assert faces >= 6


def test_reexport_is_byte_identical(ft_bundle: Path, tmp_path: Path) -> None:
    again = export_bundle(ft_bundle.parent / "run" / "best.pt", tmp_path / "again")
    for name in ["manifest.json", *ModelBundle.load(ft_bundle).manifest["files"]]:
        assert (again / name).read_bytes() == (ft_bundle / name).read_bytes(), name


def test_bad_checkpoints_exit_2_with_a_clear_message(
    bundle_dir: Path, ft_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from export.main import main as export_main

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert export_main(["checkpoint", str(junk), "--out", str(tmp_path / "b1")]) == 2
    assert "not a readable training checkpoint" in capsys.readouterr().err
    assert export_main(["checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "b2")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    # a base bundle of another contract than the run started from
    ckpt = ft_bundle.parent / "run" / "best.pt"
    assert export_main(["checkpoint", str(ckpt), "--out", str(tmp_path / "b3"), "--base-bundle", str(ft_bundle)]) == 2
    err = capsys.readouterr().err
    assert ModelBundle.load(ft_bundle).contract_id in err and ModelBundle.load(bundle_dir).contract_id in err
    assert not (tmp_path / "b3").exists() and not (tmp_path / "b3.partial").exists()


def test_weights_that_do_not_fit_the_arch_are_refused(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from export.main import main as export_main

    ckpt_path = make_checkpoint(tmp_path / "run", bundle_dir)
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["model_state"] = {k: v for i, (k, v) in enumerate(ckpt["model_state"].items()) if i}
    torch.save(ckpt, ckpt_path)
    assert export_main(["checkpoint", str(ckpt_path), "--out", str(tmp_path / "b")]) == 2
    assert "model_state does not fit arch" in capsys.readouterr().err


def test_parity_check_fails_on_a_wrong_graph(tmp_path: Path) -> None:
    from export.checkpoint_bundle import ChipEmbedder, check_parity, parity_chips
    from export.onnx_write import export_onnx
    from facesearch.errors import ModelFormatError

    class Tiny(torch.nn.Module):
        def __init__(self, colour: int) -> None:
            super().__init__()
            self.colour = colour

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, self.colour].mean(dim=(1, 2))[:, None] / 255.0 + torch.zeros(1, 4)

    chips = parity_chips(150)
    path = tmp_path / "e.onnx"
    export_onnx(
        ChipEmbedder(Tiny(0)),
        torch.from_numpy(chips[:2]),
        path,
        input_name="chips",
        output_names=["descriptors"],
        dynamic_axes={"chips": {0: "batch"}, "descriptors": {0: "batch"}},
        metadata={},
    )
    assert check_parity(ChipEmbedder(Tiny(0)), path, chips)["max_abs_diff"] <= 1e-6
    with pytest.raises(ModelFormatError, match="parity check failed") as err:  # BGR where RGB was meant
        check_parity(ChipEmbedder(Tiny(2)), path, chips)
    assert err.value.reason == "EXPORT_PARITY"


def test_export_with_eval_writes_before_after_into_the_card(
    bundle_dir: Path, ft_bundle: Path, eval_tree: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(ft_bundle.parent / "run", run)
    out = export_bundle(run / "best.pt", tmp_path / "b", "--eval", str(eval_tree), "--min-face", "80")
    card = json.loads((out / "model_card.json").read_text())
    ev = card["evaluation"]
    assert ev["before"]["contract_id"] == ModelBundle.load(bundle_dir).contract_id
    assert ev["after"]["contract_id"] == ModelBundle.load(out).contract_id
    assert ev["set"]["faces_found"] >= 80 and ev["set"]["pairs_count"] >= 100
    for key in ("pairs_accuracy", "fnir_at_fpir_1pct", "rank1"):  # same weights, same chips: same numbers
        assert ev["after"][key] == pytest.approx(ev["before"][key], abs=1e-9), key
    assert "| pairs accuracy (10-fold) |" in (out / "model_card.md").read_text()
    assert (run / "model_card.json").read_text() == (out / "model_card.json").read_text()  # the run keeps it too
    assert ModelBundle.load(out).manifest["parity"]["chips"] > 16  # real chips joined the parity check
