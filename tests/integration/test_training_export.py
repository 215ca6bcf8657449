"""The CI proof's last leg: a tiny facesearch-train run (1 epoch, 8 lfw-dev people) -> facesearch-export
checkpoint -> the bundle loads in the runtime pipeline and embeds a real photo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facesearch.bundle.manifest import ModelBundle

torch = pytest.importorskip("torch", reason="training needs torch (the export extra)")
pytest.importorskip("torchvision", reason="training needs torchvision")

pytestmark = pytest.mark.slow


def test_tiny_run_exports_a_bundle_the_pipeline_runs(lfw_dir: Path, bundle_dir: Path, tmp_path: Path) -> None:
    from export.main import main as export_main
    from facesearch.nets.checkpoint import load_checkpoint
    from facesearch.vision.decode import load_image
    from facesearch.vision.pipeline import FacePipeline, PipelineConfig
    from training.main import main as train_main

    people = [p for p in sorted((lfw_dir / "images").iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 3]
    tree = tmp_path / "tree"
    for person in people[:8]:
        (tree / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:4]:
            (tree / person.name / photo.name).symlink_to(photo)
    run = tmp_path / "run"
    assert (
        train_main(
            [
                "--data",
                str(tree),
                "--bundle",
                str(bundle_dir),
                "--out",
                str(run),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--val-fraction",
                "0.5",
                "--min-face",
                "80",
                "--workers",
                "1",
                "--threads",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    trained = run / "last.pt"  # epoch 1: trained weights (best.pt may still be the base model)
    assert load_checkpoint(trained)["epoch"] == 1
    out = tmp_path / "bundle"
    assert export_main(["checkpoint", str(trained), "--out", str(out)]) == 0

    base, bundle = ModelBundle.load(bundle_dir), ModelBundle.load(out)
    assert bundle.contract_id != base.contract_id and bundle.manifest["training"]["epoch"] == 1
    assert bundle.manifest["parity"]["chips"] > 16  # the run's real chips joined the parity check
    card = json.loads((out / "model_card.json").read_text())
    assert card["data"]["class_balance"]["train"]["identities"] == 4
    assert card["training_curve"]["rows"] == 2

    unseen = sorted(people[20].glob("*.jpg"))[0]  # a person the run never saw
    pipeline = FacePipeline(bundle, PipelineConfig(min_face=80, threads=1))
    faces = pipeline.analyze(load_image(unseen))
    assert faces, f"no face found in {unseen}"
    emb = faces[0].embedding
    assert emb.shape == (bundle.embedding_dim,) and np.isfinite(emb).all()
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5
    reference = FacePipeline(base, PipelineConfig(min_face=80, threads=1)).analyze(load_image(unseen))[0]
    assert faces[0].box == reference.box  # the base's detector and landmarks, copied
    assert float(emb @ reference.embedding) > 0.5  # fine-tuned from the base: still close to its embedding
