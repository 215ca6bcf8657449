"""Training checkpoints: round trip, format checks, fingerprint refusal; backbones rebuilt from their arch."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch (the export extra)")
pytest.importorskip("torchvision", reason="training needs torchvision")

from facesearch.errors import InvalidInputError, TrainingError  # noqa: E402
from facesearch.nets.backbones import build_backbone, freeze_stages, initial_backbone, set_train_mode  # noqa: E402
from facesearch.nets.checkpoint import (  # noqa: E402
    REQUIRED_KEYS,
    capture_rng_state,
    check_resume,
    fingerprint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from training.config import TrainConfig  # noqa: E402


def _ckpt(epoch: int, **extra: object) -> dict[str, object]:
    arch, net = initial_backbone("resnet18", embedding_dim=8)
    ckpt: dict[str, object] = {k: {} for k in REQUIRED_KEYS}
    ckpt.update(
        arch=arch,
        model_state=net.state_dict(),
        epoch=epoch,
        global_step=10 * epoch,
        rng_state=capture_rng_state(),
        fingerprint="f" * 64,
    )
    ckpt.update(extra)
    return ckpt


def test_round_trip_layout_and_best(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _ckpt(0), is_best=True)
    save_checkpoint(tmp_path, _ckpt(1), is_best=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_000.pt", "epoch_001.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 0 and best["format"] == "facesearch-train-checkpoint" and best["format_version"] == 1
    assert not list(tmp_path.rglob("*.tmp"))
    net = build_backbone(json.loads(json.dumps(best["arch"])))
    net.load_state_dict(best["model_state"])  # strict: every key and shape
    net.eval()
    assert net(torch.full((2, 3, 150, 150), 128.0)).shape == (2, 8)


def test_prune_keeps_the_newest_epochs_and_drops_step_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _ckpt(0), is_best=True)
    save_checkpoint(tmp_path, _ckpt(0, step_in_epoch=2, global_step=2), is_best=False)
    assert (tmp_path / "checkpoints" / "step_0000002.pt").is_file()
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path, _ckpt(epoch), is_best=False)
    prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_002.pt", "epoch_003.pt"]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 0 and load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    prune_checkpoints(tmp_path, 0)  # 0 keeps every epoch file
    assert len(list((tmp_path / "checkpoints").iterdir())) == 2


def test_rng_state_restores_exactly(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    save_checkpoint(tmp_path, _ckpt(1, rng_state=state), is_best=False)
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "last.pt")["rng_state"])
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_refuses_other_files(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError) as err:
        load_checkpoint(tmp_path / "junk.pt")
    assert err.value.reason == "CHECKPOINT_FORMAT"
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(TrainingError, match="not a facesearch-train-checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(tmp_path, _ckpt(1), is_best=False)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    ckpt["format_version"] = 99
    torch.save(ckpt, tmp_path / "future.pt")
    with pytest.raises(TrainingError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")
    del ckpt["optimizer_state"]
    ckpt["format_version"] = 1
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.raises(TrainingError, match="optimizer_state"):
        load_checkpoint(tmp_path / "partial.pt")


def test_fingerprint_covers_config_data_and_base_not_operational_options(tmp_path: Path) -> None:
    config = TrainConfig(data=tmp_path / "d", bundle=tmp_path / "b", out=tmp_path / "o")
    base = fingerprint(config.run_defining(), "chips-sha", "dlib-resnet-v1:abc")
    same = [
        replace(config, max_minutes=5.0),
        replace(config, out=tmp_path / "elsewhere"),
        replace(config, workers=1, threads=1, progress=False, checkpoint_every=3),
    ]
    for other in same:
        assert fingerprint(other.run_defining(), "chips-sha", "dlib-resnet-v1:abc") == base
    different = [
        replace(config, lr=1e-3),
        replace(config, epochs=9),
        replace(config, seed=1),
        replace(config, head="cosface"),
        replace(config, freeze_stages=2),
    ]
    for other in different:
        assert fingerprint(other.run_defining(), "chips-sha", "dlib-resnet-v1:abc") != base
    assert fingerprint(config.run_defining(), "other-chips", "dlib-resnet-v1:abc") != base
    assert fingerprint(config.run_defining(), "chips-sha", "dlib-resnet-v1:def") != base


def test_resume_with_another_fingerprint_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _ckpt(1), is_best=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    check_resume(ckpt, "f" * 64, tmp_path / "last.pt")
    with pytest.raises(TrainingError) as err:
        check_resume(ckpt, "e" * 64, tmp_path / "last.pt")
    assert err.value.reason == "CHECKPOINT_MISMATCH" and "different config" in str(err.value)


def test_config_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="--epochs"):
        TrainConfig(data=tmp_path, bundle=tmp_path, out=tmp_path, epochs=0)
    with pytest.raises(InvalidInputError, match="--head"):
        TrainConfig(data=tmp_path, bundle=tmp_path, out=tmp_path, head="softmax")


def test_torchvision_backbone_contract_and_freezing() -> None:
    arch, net = initial_backbone("resnet18", embedding_dim=32)
    assert json.loads(json.dumps(arch)) == arch
    net.eval()
    out = net(torch.rand(2, 3, 150, 150) * 255)
    assert out.shape == (2, 32) and out.dtype == torch.float32
    trainable = freeze_stages(net, 4)
    assert trainable == ["body.fc.weight", "body.fc.bias"]
    set_train_mode(net, True)
    assert not net.body.bn1.training and net.body.fc.training
    with pytest.raises(InvalidInputError, match="--freeze-stages 5"):
        freeze_stages(net, 5)
    assert len(freeze_stages(net, 0)) == len(list(net.parameters()))


def test_dlib_backbone_matches_the_exported_network_and_rebuilds_from_arch(dlib_models_dir: Path) -> None:
    from export.resnet import build_embedder
    from facesearch.nets.dlib_dnn import read_dnn_file

    dat = dlib_models_dir / "dlib_face_recognition_resnet_model_v1.dat"
    arch, net = initial_backbone("dlib_resnet", dlib_dat=dat)
    chips = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 150, 150, 3), dtype=np.uint8))
    net.eval()
    with torch.no_grad():
        ours = net(chips.permute(0, 3, 1, 2).float())  # the training contract: NCHW float 0..255
        reference = build_embedder(read_dnn_file(str(dat)))(chips)  # export's: NHWC uint8
    assert torch.equal(ours, reference)
    rebuilt = build_backbone(json.loads(json.dumps(arch)))
    with torch.no_grad():
        assert not torch.equal(rebuilt.eval()(chips.permute(0, 3, 1, 2).float()), ours)  # placeholders
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(chips.permute(0, 3, 1, 2).float()), ours)
    assert net.num_stages == 6
    trainable = freeze_stages(net, 4)  # the default: last residual stage (1 block: 2 convs) + fc
    assert len(trainable) == 5
