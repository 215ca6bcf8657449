"""Training checkpoints: one ``torch.save`` dict per epoch, written atomically, refused on mismatch.

Layout in a run directory::

    RUN_DIR/checkpoints/epoch_NNN.pt   after each completed epoch (NNN = completed epochs)
    RUN_DIR/checkpoints/step_NNNNNNN.pt  mid-epoch checkpoints (--checkpoint-every K steps), removed
                                       once the epoch's checkpoint is written
    RUN_DIR/last.pt                    a copy of the latest checkpoint (what a resume reads)
    RUN_DIR/best.pt                    a copy of the best one by validation verification accuracy

Keys (``format_version`` 1):

``format`` ("facesearch-train-checkpoint"), ``format_version`` (1), ``arch`` (JSON dict for
:func:`facesearch.nets.backbones.build_backbone`), ``model_state`` (backbone ``state_dict``),
``head_state``, ``optimizer_state``, ``scheduler_state``, ``epoch`` (completed epochs),
``global_step``, ``rng_state`` ({"python", "numpy", "torch", "loader"}), ``config`` (the
TrainConfig as a dict), ``fingerprint`` (sha256 of the run-defining config + chips manifest +
base bundle contract id), ``base_bundle`` ({"path", "contract_id", "manifest_sha256",
"flip_average"}), ``metrics`` (the epoch's validation metrics), ``best`` ({"epoch", "metric",
"value"}), ``data`` ({"chips_manifest_sha256", "train_identities", "val_identities"}).
A mid-epoch checkpoint also has ``"step_in_epoch"`` (> 0); an end-of-epoch one has 0.

Everything is stored with plain Python/torch types so :func:`load_checkpoint` can use
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facesearch.errors import TrainingError

CHECKPOINT_FORMAT = "facesearch-train-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
REQUIRED_KEYS = (
    "arch",
    "model_state",
    "head_state",
    "optimizer_state",
    "scheduler_state",
    "epoch",
    "global_step",
    "rng_state",
    "config",
    "fingerprint",
    "base_bundle",
    "metrics",
    "best",
    "data",
)


def fingerprint(run_config: dict[str, Any], chips_manifest_sha256: str, base_contract_id: str) -> str:
    """sha256 of what defines a run: its config (run-defining fields), its chips and its base model."""
    text = json.dumps(
        {"config": run_config, "chips": chips_manifest_sha256, "base": base_contract_id}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


def capture_rng_state(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, numpy (global), torch (CPU) and DataLoader generator states, as weights_only-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }


def restore_rng_state(state: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"])


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def checkpoint_name(epoch: int, step_in_epoch: int = 0, global_step: int = 0) -> str:
    return f"epoch_{epoch:03d}.pt" if step_in_epoch == 0 else f"step_{global_step:07d}.pt"


def save_checkpoint(run_dir: Path, ckpt: dict[str, Any], *, is_best: bool) -> Path:
    """Write ``ckpt`` (all :data:`REQUIRED_KEYS`) under ``run_dir/checkpoints``, then ``last.pt`` (+ ``best.pt``)."""
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise TrainingError(f"checkpoint lacks {', '.join(missing)}", reason="CHECKPOINT_FORMAT")
    full = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "step_in_epoch": 0, **ckpt}
    path = (
        run_dir
        / CHECKPOINTS_DIR
        / checkpoint_name(int(full["epoch"]), int(full["step_in_epoch"]), int(full["global_step"]))
    )
    _atomic_save(full, path)
    _atomic_copy(path, run_dir / LAST)
    if is_best:
        _atomic_copy(path, run_dir / BEST)
    return path


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """After an end-of-epoch save: drop mid-epoch ``step_*.pt`` files (superseded) and, with ``keep`` > 0,
    all but the newest ``keep`` ``epoch_*.pt`` files (``best.pt`` and ``last.pt`` are copies, never pruned)."""
    folder = run_dir / CHECKPOINTS_DIR
    doomed = sorted(folder.glob("step_*.pt"))
    if keep > 0:
        doomed += sorted(folder.glob("epoch_*.pt"))[:-keep]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a training checkpoint (format, version, keys); raises :class:`TrainingError`."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no such checkpoint", reason="CHECKPOINT_FORMAT")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise TrainingError(f"{path}: not a readable training checkpoint: {err}", reason="CHECKPOINT_FORMAT") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a {CHECKPOINT_FORMAT} file", reason="CHECKPOINT_FORMAT")
    if ckpt.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise TrainingError(
            f"{path}: checkpoint format version {ckpt.get('format_version')!r}, this facesearch reads "
            f"{CHECKPOINT_FORMAT_VERSION}",
            reason="CHECKPOINT_FORMAT",
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise TrainingError(f"{path}: checkpoint lacks {', '.join(missing)}", reason="CHECKPOINT_FORMAT")
    return ckpt


def check_resume(ckpt: dict[str, Any], expected_fingerprint: str, path: Path) -> None:
    """Refuse to resume a run whose config, data or base bundle differ from the checkpoint's."""
    if ckpt["fingerprint"] != expected_fingerprint:
        raise TrainingError(
            f"{path} was written by a run with a different config, data or base bundle "
            f"(fingerprint {str(ckpt['fingerprint'])[:12]}..., this run {expected_fingerprint[:12]}...); "
            "use a new --out directory or the original options",
            reason="CHECKPOINT_MISMATCH",
        )
