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

Two views of one file: :func:`save_checkpoint` / :func:`load_checkpoint` write and read the dict
(checking the format, version and keys), and :class:`Checkpoint` types it (sections
:class:`BaseBundleRef`, :class:`BestEpoch`, :class:`TrainingData`; model, optimiser and RNG
states stay torch's own dicts). ``Checkpoint.from_dict(d).to_dict()`` equals ``d`` for what
``facesearch-train`` writes. Export reads the dict: it copies a run's records into the bundle's
provenance verbatim, whatever optional keys they hold.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facesearch.errors import Reason, TrainingError
from facesearch.util.fs import atomic_path

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


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    if not isinstance(value, Mapping):
        raise TrainingError(f"checkpoint section {name!r} is not a dict", reason=Reason.CHECKPOINT_FORMAT)
    return value


@dataclass(frozen=True, slots=True)
class BaseBundleRef:
    """``base_bundle``: the bundle a run started from (its folder, contract, manifest digest, and
    whether its embeddings are flip-averaged, which validation follows)."""

    path: str
    contract_id: str
    manifest_sha256: str
    flip_average: bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaseBundleRef:
        return cls(str(data["path"]), str(data["contract_id"]), str(data["manifest_sha256"]), data["flip_average"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "contract_id": self.contract_id,
            "manifest_sha256": self.manifest_sha256,
            "flip_average": self.flip_average,
        }


@dataclass(frozen=True, slots=True)
class BestEpoch:
    """``best``: the best epoch so far by ``metric`` (``value``), and how many epochs since did not
    improve on it (early stopping counts them)."""

    epoch: int
    metric: str
    value: float
    stale_epochs: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BestEpoch:
        return cls(int(data["epoch"]), str(data["metric"]), data["value"], int(data.get("stale_epochs", 0)))

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "metric": self.metric, "value": self.value, "stale_epochs": self.stale_epochs}


@dataclass(frozen=True, slots=True)
class TrainingData:
    """``data``: the chip set a run trained on (its manifest digest) and the sizes of its split."""

    chips_manifest_sha256: str
    train_identities: int
    val_identities: int
    train_chips: int
    val_chips: int
    val_pairs: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingData:
        return cls(
            str(data["chips_manifest_sha256"]),
            *(int(data[k]) for k in ("train_identities", "val_identities", "train_chips", "val_chips", "val_pairs")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "chips_manifest_sha256": self.chips_manifest_sha256,
            "train_identities": self.train_identities,
            "val_identities": self.val_identities,
            "train_chips": self.train_chips,
            "val_chips": self.val_chips,
            "val_pairs": self.val_pairs,
        }


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One training checkpoint, typed (see the module docstring for the keys).

    ``metrics`` is the epoch's validation metrics (a log row for a mid-epoch checkpoint);
    ``history`` the log rows so far; ``partial`` the running sums of an unfinished epoch.
    """

    arch: dict[str, Any]
    model_state: dict[str, Any]
    head_state: dict[str, Any]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    epoch: int
    global_step: int
    rng_state: dict[str, Any]
    config: dict[str, Any]
    fingerprint: str
    base_bundle: BaseBundleRef
    metrics: dict[str, Any]
    best: BestEpoch
    data: TrainingData
    step_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | str = "checkpoint") -> Checkpoint:
        """Type a checkpoint dict (as :func:`load_checkpoint` returns it); TrainingError if malformed."""
        try:
            return cls(
                arch=dict(_section(data, "arch")),
                model_state=dict(_section(data, "model_state")),
                head_state=dict(_section(data, "head_state")),
                optimizer_state=dict(_section(data, "optimizer_state")),
                scheduler_state=dict(_section(data, "scheduler_state")),
                epoch=int(data["epoch"]),
                global_step=int(data["global_step"]),
                rng_state=dict(_section(data, "rng_state")),
                config=dict(_section(data, "config")),
                fingerprint=str(data["fingerprint"]),
                base_bundle=BaseBundleRef.from_dict(_section(data, "base_bundle")),
                metrics=dict(_section(data, "metrics")),
                best=BestEpoch.from_dict(_section(data, "best")),
                data=TrainingData.from_dict(_section(data, "data")),
                step_in_epoch=int(data.get("step_in_epoch", 0)),
                history=list(data.get("history", [])),
                partial=dict(data.get("partial") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise TrainingError(f"{path}: malformed checkpoint: {err!r}", reason=Reason.CHECKPOINT_FORMAT) from err

    def to_dict(self) -> dict[str, Any]:
        """The dict :func:`save_checkpoint` writes (without ``format``/``format_version``, which it adds)."""
        return {
            "arch": self.arch,
            "model_state": self.model_state,
            "head_state": self.head_state,
            "optimizer_state": self.optimizer_state,
            "scheduler_state": self.scheduler_state,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "step_in_epoch": self.step_in_epoch,
            "rng_state": self.rng_state,
            "config": self.config,
            "fingerprint": self.fingerprint,
            "base_bundle": self.base_bundle.to_dict(),
            "metrics": self.metrics,
            "best": self.best.to_dict(),
            "data": self.data.to_dict(),
            "history": self.history,
            "partial": self.partial,
        }


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
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _atomic_copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def checkpoint_name(epoch: int, step_in_epoch: int = 0, global_step: int = 0) -> str:
    return f"epoch_{epoch:03d}.pt" if step_in_epoch == 0 else f"step_{global_step:07d}.pt"


def save_checkpoint(run_dir: Path, ckpt: Mapping[str, Any], *, is_best: bool) -> Path:
    """Write ``ckpt`` (all :data:`REQUIRED_KEYS`) under ``run_dir/checkpoints``, then ``last.pt`` (+ ``best.pt``)."""
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise TrainingError(f"checkpoint lacks {', '.join(missing)}", reason=Reason.CHECKPOINT_FORMAT)
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
        raise TrainingError(f"{path}: no such checkpoint", reason=Reason.CHECKPOINT_FORMAT)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise TrainingError(
            f"{path}: not a readable training checkpoint: {err}", reason=Reason.CHECKPOINT_FORMAT
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a {CHECKPOINT_FORMAT} file", reason=Reason.CHECKPOINT_FORMAT)
    if ckpt.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise TrainingError(
            f"{path}: checkpoint format version {ckpt.get('format_version')!r}, this facesearch reads "
            f"{CHECKPOINT_FORMAT_VERSION}",
            reason=Reason.CHECKPOINT_FORMAT,
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise TrainingError(f"{path}: checkpoint lacks {', '.join(missing)}", reason=Reason.CHECKPOINT_FORMAT)
    return ckpt


def check_resume(ckpt: Mapping[str, Any], expected_fingerprint: str, path: Path) -> None:
    """Refuse to resume a run whose config, data or base bundle differ from the checkpoint's."""
    if ckpt["fingerprint"] != expected_fingerprint:
        raise TrainingError(
            f"{path} was written by a run with a different config, data or base bundle "
            f"(fingerprint {str(ckpt['fingerprint'])[:12]}..., this run {expected_fingerprint[:12]}...); "
            "use a new --out directory or the original options",
            reason=Reason.CHECKPOINT_MISMATCH,
        )
