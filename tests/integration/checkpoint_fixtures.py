"""Training checkpoints without training: the converted dlib ResNet (optionally with perturbed weights)
saved in ``facesearch-train``'s checkpoint format, and small identity trees of lfw-dev photos (linked,
never copied). Import the fixtures with ``from tests.integration.checkpoint_fixtures import *``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

__all__ = ["eval_tree", "export_bundle", "ft_bundle", "make_checkpoint", "worse_bundle"]

EVAL_PEOPLE = 24  # with 2+ photos (up to 4 each): the pairs' folds and the gallery
EVAL_SINGLES = 8  # one photo each: non-mated searches


def make_checkpoint(
    run_dir: Path, base_bundle: Path, *, kind: str = "dlib_resnet", noise: float = 0.0, seed: int = 0
) -> Path:
    """Write ``run_dir/best.pt`` from the base weights (``noise`` x mean |w| of seeded Gaussian noise added)."""
    torch = pytest.importorskip("torch", reason="checkpoints need the export extra (torch)")
    from facesearch.bundle.manifest import ModelBundle, sha256_file
    from facesearch.nets.backbones import initial_backbone
    from facesearch.nets.checkpoint import BEST, save_checkpoint
    from facesearch.nets.dlib_sources import default_models_dir

    base = ModelBundle.load(base_bundle, verify=False)
    dat = default_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"
    arch, net = initial_backbone(kind, dlib_dat=dat)
    if noise:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * noise * p.abs().mean())
    ckpt = {
        "arch": arch,
        "model_state": net.state_dict(),
        "head_state": {},
        "optimizer_state": {},
        "scheduler_state": {},
        "epoch": 1,
        "global_step": 3,
        "rng_state": {},
        "config": {"arch": kind, "seed": seed},
        "fingerprint": "0" * 64,
        "base_bundle": {
            "path": str(base_bundle),
            "contract_id": base.contract_id,
            "manifest_sha256": sha256_file(base_bundle / "manifest.json"),
            "flip_average": base.flip_average,
        },
        "metrics": {"val_accuracy": 0.9},
        "best": {"epoch": 1, "metric": "val_accuracy", "value": 0.9},
        "data": {"chips_manifest_sha256": "0" * 64, "train_identities": 4, "val_identities": 2},
    }
    save_checkpoint(run_dir, ckpt, is_best=True)
    return run_dir / BEST


def export_bundle(checkpoint: Path, out: Path, *extra: str) -> Path:
    from export.main import main as export_main

    assert export_main(["checkpoint", str(checkpoint), "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="session")
def ft_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle exported from a checkpoint holding the base's unchanged dlib weights."""
    root = tmp_path_factory.mktemp("ft")
    out = export_bundle(make_checkpoint(root / "run", bundle_dir), root / "bundle")
    assert not (out / "calibration.json").exists()  # thresholds never carry over in an export
    return with_base_calibration(out, bundle_dir)


@pytest.fixture(scope="session")
def worse_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle from perturbed weights (30% noise): measurably worse than the base."""
    root = tmp_path_factory.mktemp("worse")
    return with_base_calibration(
        export_bundle(make_checkpoint(root / "run", bundle_dir, noise=0.3), root / "bundle"), bundle_dir
    )


def with_base_calibration(bundle: Path, base: Path) -> Path:
    """Promotion and serving need a calibrated bundle. The ft bundle holds the base's very weights, so the
    base's calibration is its true one; for the perturbed bundle it only stands in (promotion's measures
    are threshold-free, and what those tests check does not depend on it)."""
    for name in ("calibration.json", "open_set_calibration.json"):
        shutil.copyfile(base / name, bundle / name)
    return bundle


@pytest.fixture(scope="session")
def eval_tree(lfw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 lfw-dev people with 2-4 photos and 8 with one photo (84 photos), as symlinks."""
    out = tmp_path_factory.mktemp("eval") / "tree"
    multi = singles = 0
    for folder in sorted(p for p in (lfw_dir / "images").iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= 2 and multi < EVAL_PEOPLE:
            multi, chosen = multi + 1, photos[:4]
        elif len(photos) == 1 and singles < EVAL_SINGLES:
            singles, chosen = singles + 1, photos
        else:
            continue
        (out / folder.name).mkdir(parents=True)
        for photo in chosen:
            (out / folder.name / photo.name).symlink_to(photo)
    if multi < EVAL_PEOPLE or singles < EVAL_SINGLES:
        pytest.skip("lfw-dev has too few people for the evaluation tree")
    return out
