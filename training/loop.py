"""The training run: chips -> split -> backbone + margin head -> epochs, checkpointed, resumable.

``run(config)`` is pure apart from its run directory. Determinism: the order of each epoch is
a permutation seeded by (seed, epoch) and every batch's augmentations draw from torch's
generator seeded by (seed, epoch, step), so a run killed at any checkpoint and resumed from it
computes exactly what an uninterrupted run computes (same thread count, same machine). Batches
are read straight from the memory-mapped chip cache in the main process (no DataLoader
workers: 2 cores are better spent on the intra-op threads, and memory stays bounded).

Epoch 0 is the base model before any training: its validation accuracy is the "before" number
and its checkpoint is ``epoch_000.pt``, so ``best.pt`` is never worse than the base model.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from tqdm import tqdm

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import Reason, TrainingError
from facesearch.evaluation.pairs import Pair, evaluate_pairs, pair_scores
from facesearch.nets.backbones import Backbone, build_backbone, freeze_stages, initial_backbone, set_train_mode
from facesearch.nets.checkpoint import (
    BEST,
    LAST,
    BestEpoch,
    Checkpoint,
    TrainingData,
    capture_rng_state,
    check_resume,
    fingerprint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from facesearch.util.fs import atomic_path, write_atomic
from training.augment import augment_batch, chip_augmentation
from training.base import base_bundle_info, base_dlib_weights
from training.chips import ChipSet, prepare_chips, read_rows
from training.config import TrainConfig
from training.curves import draw_curves
from training.heads import MarginHead
from training.split import Split, class_balance, split_identities, validation_pairs

EVAL_BATCH = 64
LOG_FIELDS = (
    "epoch",
    "global_step",
    "train_loss",
    "train_accuracy",
    "lr",
    "val_accuracy",
    "val_accuracy_std",
    "val_roc_auc",
    "val_tar_at_far_1e3",
    "epoch_seconds",
    "elapsed_seconds",
)


@dataclass(frozen=True, slots=True)
class TrainSummary:
    run_dir: Path
    best_path: Path
    best_epoch: int
    best_val_accuracy: float
    base_val_accuracy: float
    epochs_done: int
    stopped: str  # "completed", "early_stopping", "max_minutes", "stop_after_steps"
    resumed: bool


def _step_seed(seed: int, epoch: int, step: int) -> int:
    digest = hashlib.sha256(f"{seed}:{epoch}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _chips_tensor(chips: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """uint8 NHWC rows of the memory-mapped cache -> uint8 NCHW tensor (reads in index order)."""
    order = np.argsort(idx, kind="stable")
    block = np.empty((len(idx), *chips.shape[1:]), np.uint8)
    block[order] = chips[idx[order]]
    return torch.from_numpy(block).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def embed_chips(
    backbone: Backbone,
    chips: np.ndarray,
    indices: list[int],
    *,
    flip_average: bool = False,
    progress: bool = False,
    desc: str = "embed",
) -> np.ndarray:
    """L2-normalised embeddings (n, d) of the given cached chips, no augmentation, eval mode."""
    backbone.eval()
    out = []
    for s in tqdm(range(0, len(indices), EVAL_BATCH), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        x = _chips_tensor(chips, np.asarray(indices[s : s + EVAL_BATCH])).to(torch.float32)
        e = F.normalize(backbone(x), dim=1)
        if flip_average:  # the runtime's test-time flip averaging, when the base bundle uses it
            e = F.normalize(e + F.normalize(backbone(torch.flip(x, dims=[3])), dim=1), dim=1)
        out.append(e)
    return torch.cat(out).numpy() if out else np.zeros((0, backbone.embedding_dim), np.float32)


def validate(
    backbone: Backbone,
    chips: np.ndarray,
    val_chips: list[int],
    pairs: list[Pair],
    *,
    flip_average: bool,
    progress: bool,
) -> dict[str, float]:
    emb = embed_chips(backbone, chips, val_chips, flip_average=flip_average, progress=progress, desc="validate")
    table: dict[str, np.ndarray | None] = {str(i): emb[k] for k, i in enumerate(val_chips)}
    report = evaluate_pairs(pairs, pair_scores(pairs, table), 0, len(val_chips))
    return {
        "val_accuracy": report.accuracy_mean,
        "val_accuracy_std": report.accuracy_std,
        "val_roc_auc": report.roc_auc,
        "val_tar_at_far_1e3": report.tar_at_far_1e3,
        "val_threshold": float(np.mean(report.thresholds)),
        "val_pairs": float(report.pairs),
    }


def _lr_lambda(total_steps: int, warmup_steps: int) -> Any:
    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _write_logs(run_dir: Path, history: list[dict[str, Any]]) -> None:
    _write_json(run_dir / "log.json", history)
    with atomic_path(run_dir / "log.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    draw_curves(history, run_dir / "curves.png", title=f"facesearch-train {run_dir.name}")


def _write_data_reports(run_dir: Path, chipset: ChipSet, split: Split, pairs: list[Pair], config: TrainConfig) -> None:
    balance = class_balance(split, len(chipset.paths), chipset.rejects, config.min_images, pairs)
    balance["chips_cache"] = str(chipset.root.resolve())
    _write_json(run_dir / "class_balance.json", balance)
    _write_json(
        run_dir / "split.json",
        {
            "train": sorted(split.train),
            "val": sorted(split.val),
            "seed": config.seed,
            "val_fraction": config.val_fraction,
        },
    )
    with atomic_path(run_dir / "rejects.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=("path", "identity", "reason", "detail"))
        writer.writeheader()
        writer.writerows(chipset.rejects)


def _optimizer(config: TrainConfig, backbone: Backbone, head: MarginHead) -> torch.optim.Optimizer:
    groups = [
        {"params": [p for p in backbone.parameters() if p.requires_grad], "lr": config.lr},
        {"params": list(head.parameters()), "lr": config.head_lr},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def run(config: TrainConfig) -> TrainSummary:
    started = time.monotonic()
    torch.set_num_threads(config.threads or max(1, os.cpu_count() or 1))
    bundle = ModelBundle.load(config.bundle)
    run_dir = config.out
    run_dir.mkdir(parents=True, exist_ok=True)
    chipset = prepare_chips(
        read_rows(config.data),
        bundle,
        config.chips_dir,
        min_face=config.min_face,
        multi_face=config.multi_face,
        workers=config.workers,
        progress=config.progress,
    )
    split = split_identities(
        chipset.identities, val_fraction=config.val_fraction, min_images=config.min_images, seed=config.seed
    )
    pairs = validation_pairs(split.val, pairs_per_fold=config.pairs_per_fold, seed=config.seed)
    train_idx, train_labels = split.train_labels
    val_chips = split.val_chips
    fp = fingerprint(config.run_defining(), chipset.manifest_sha256, bundle.contract_id)
    base = base_bundle_info(bundle)
    data_info = TrainingData(
        chips_manifest_sha256=chipset.manifest_sha256,
        train_identities=len(split.train),
        val_identities=len(split.val),
        train_chips=len(train_idx),
        val_chips=len(val_chips),
        val_pairs=len(pairs),
    )
    num_classes = len(split.train)
    steps_per_epoch = len(train_idx) // config.batch_size
    if steps_per_epoch < 1:
        raise TrainingError(
            f"{len(train_idx)} training chips: fewer than one batch of --batch-size {config.batch_size}",
            reason=Reason.TRAINING_DATA,
        )
    total_steps = steps_per_epoch * config.epochs

    last = run_dir / LAST
    resumed = last.is_file()
    ckpt: Checkpoint | None = None
    if resumed:
        stored = load_checkpoint(last)
        check_resume(stored, fp, last)
        ckpt = Checkpoint.from_dict(stored, last)
    _write_data_reports(run_dir, chipset, split, pairs, config)
    _write_json(
        run_dir / "config.json",
        {"config": config.as_dict(), "fingerprint": fp, "base_bundle": base.to_dict(), "data": data_info.to_dict()},
    )
    if ckpt is not None:
        arch = ckpt.arch
        backbone = build_backbone(arch)
        backbone.load_state_dict(ckpt.model_state)
    else:
        dat = base_dlib_weights(bundle) if config.arch == "dlib_resnet" else None
        torch.manual_seed(config.seed)  # torchvision init and the head's init
        arch, backbone = initial_backbone(config.arch, dlib_dat=dat, embedding_dim=config.embedding_dim)
    freeze_stages(backbone, config.resolved_freeze)
    head = MarginHead(
        config.head, backbone.embedding_dim, num_classes, margin=config.resolved_margin, scale=config.resolved_scale
    )
    optimizer = _optimizer(config, backbone, head)
    warmup = round(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup))

    def checkpoint(
        epoch: int,
        global_step: int,
        step_in_epoch: int,
        *,
        metrics: dict[str, Any],
        best: BestEpoch,
        history: list[dict[str, Any]],
        partial: dict[str, float],
        is_best: bool,
    ) -> Path:
        state = Checkpoint(
            arch=arch,
            model_state=backbone.state_dict(),
            head_state=head.state_dict(),
            optimizer_state=optimizer.state_dict(),
            scheduler_state=scheduler.state_dict(),
            epoch=epoch,
            global_step=global_step,
            step_in_epoch=step_in_epoch,
            rng_state=capture_rng_state(),
            config=config.as_dict(),
            fingerprint=fp,
            base_bundle=base,
            metrics=metrics,
            best=best,
            data=data_info,
            history=history,
            partial=partial,
        )
        return save_checkpoint(run_dir, state.to_dict(), is_best=is_best)

    empty = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
    if ckpt is not None:
        head.load_state_dict(ckpt.head_state)
        optimizer.load_state_dict(ckpt.optimizer_state)
        scheduler.load_state_dict(ckpt.scheduler_state)
        restore_rng_state(ckpt.rng_state)
        epoch_done, global_step, step_in_epoch = ckpt.epoch, ckpt.global_step, ckpt.step_in_epoch
        best, history = ckpt.best, list(ckpt.history)
        partial = dict(ckpt.partial or empty)
    else:
        if config.arch == "dlib_resnet":  # start each class vector at its identity's mean base embedding
            emb = torch.from_numpy(
                embed_chips(backbone, chipset.chips, train_idx, progress=config.progress, desc="class centres")
            )
            labels = torch.tensor(train_labels)
            centres = torch.zeros(num_classes, emb.shape[1]).index_add_(0, labels, emb)
            head.init_from_centres(centres)
        metrics = validate(
            backbone, chipset.chips, val_chips, pairs, flip_average=base.flip_average, progress=config.progress
        )
        row = {
            "epoch": 0,
            "global_step": 0,
            "train_loss": None,
            "train_accuracy": None,
            "lr": 0.0,
            **metrics,
            "epoch_seconds": 0.0,
            "elapsed_seconds": round(time.monotonic() - started, 1),
        }
        history = [row]
        best = BestEpoch(epoch=0, metric="val_accuracy", value=metrics["val_accuracy"])
        epoch_done, global_step, step_in_epoch, partial = 0, 0, 0, dict(empty)
        checkpoint(0, 0, 0, metrics=metrics, best=best, history=history, partial=partial, is_best=True)
        _write_logs(run_dir, history)

    transform = chip_augmentation()
    labels_all = np.asarray(train_labels, np.int64)
    idx_all = np.asarray(train_idx, np.int64)
    stopped = "completed"
    for epoch in range(epoch_done + 1, config.epochs + 1):
        if best.stale_epochs >= config.patience:
            stopped = "early_stopping"
            break
        perm = torch.randperm(
            len(idx_all), generator=torch.Generator().manual_seed(_step_seed(config.seed, epoch, -1))
        ).numpy()
        set_train_mode(backbone, True)
        head.train()
        t0 = time.monotonic() - partial["seconds"]
        bar = tqdm(
            total=steps_per_epoch,
            initial=step_in_epoch,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        for step in range(step_in_epoch, steps_per_epoch):
            sel = perm[step * config.batch_size : (step + 1) * config.batch_size]
            torch.manual_seed(_step_seed(config.seed, epoch, step))
            x = augment_batch(_chips_tensor(chipset.chips, idx_all[sel]), transform)
            y = torch.from_numpy(labels_all[sel])
            logits, cos = head(backbone(x), y)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            global_step += 1
            partial["loss_sum"] += float(loss.item()) * len(sel)
            partial["correct"] += float((cos.argmax(1) == y).sum().item())
            partial["seen"] += len(sel)
            bar.update(1)
            bar.set_postfix(loss=f"{partial['loss_sum'] / partial['seen']:.3f}")
            mid = step + 1 < steps_per_epoch
            stop_now = config.stop_after_steps is not None and global_step >= config.stop_after_steps
            if mid and (stop_now or (config.checkpoint_every and global_step % config.checkpoint_every == 0)):
                partial["seconds"] = time.monotonic() - t0
                checkpoint(
                    epoch - 1,
                    global_step,
                    step + 1,
                    metrics=history[-1],
                    best=best,
                    history=history,
                    partial=partial,
                    is_best=False,
                )
            if stop_now and mid:
                bar.close()
                return _summary(
                    run_dir, best, history, epochs_done=epoch - 1, stopped="stop_after_steps", resumed=resumed
                )
        bar.close()
        metrics = validate(
            backbone, chipset.chips, val_chips, pairs, flip_average=base.flip_average, progress=config.progress
        )
        improved = metrics["val_accuracy"] > best.value
        best = (
            BestEpoch(epoch=epoch, metric="val_accuracy", value=metrics["val_accuracy"])
            if improved
            else replace(best, stale_epochs=best.stale_epochs + 1)
        )
        history.append(
            {
                "epoch": epoch,
                "global_step": global_step,
                "train_loss": partial["loss_sum"] / partial["seen"],
                "train_accuracy": partial["correct"] / partial["seen"],
                "lr": optimizer.param_groups[0]["lr"],
                **metrics,
                "epoch_seconds": round(time.monotonic() - t0, 1),
                "elapsed_seconds": round(time.monotonic() - started, 1),
            }
        )
        partial, step_in_epoch = dict(empty), 0
        checkpoint(
            epoch, global_step, 0, metrics=metrics, best=best, history=history, partial=partial, is_best=improved
        )
        prune_checkpoints(run_dir, config.keep_checkpoints)
        _write_logs(run_dir, history)
        if config.stop_after_steps is not None and global_step >= config.stop_after_steps:
            stopped = "stop_after_steps"
            break
        if config.max_minutes is not None and time.monotonic() - started > 60.0 * config.max_minutes:
            stopped = "max_minutes"
            break
    summary = _summary(run_dir, best, history, epochs_done=history[-1]["epoch"], stopped=stopped, resumed=resumed)
    _write_json(
        run_dir / "summary.json",
        {
            "best_path": str(summary.best_path),
            "best_epoch": summary.best_epoch,
            "best_val_accuracy": summary.best_val_accuracy,
            "base_val_accuracy": summary.base_val_accuracy,
            "epochs_done": summary.epochs_done,
            "stopped": summary.stopped,
            "resumed": resumed,
            "elapsed_seconds_this_invocation": round(time.monotonic() - started, 1),
        },
    )
    return summary


def _summary(
    run_dir: Path, best: BestEpoch, history: list[dict[str, Any]], *, epochs_done: int, stopped: str, resumed: bool
) -> TrainSummary:
    return TrainSummary(
        run_dir=run_dir,
        best_path=run_dir / BEST,
        best_epoch=best.epoch,
        best_val_accuracy=float(best.value),
        base_val_accuracy=float(history[0]["val_accuracy"]),
        epochs_done=int(epochs_done),
        stopped=stopped,
        resumed=resumed,
    )
