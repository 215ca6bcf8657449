"""``facesearch-train``: fine-tune the face embedder on your own labelled faces.

  facesearch-train --data TREE_OR_MANIFEST --bundle BASE_BUNDLE --out RUN_DIR [--epochs N]

--data is an identity-folder tree (TREE/<identity>/<photo>) or a CSV/JSONL manifest with
path and identity_id columns. Chips are made with the base bundle's own detection and
alignment and cached: one face per photo, the dominant one in a photo with several
(--multi-face; a photo where no face dominates is rejected). A photo that cannot be read
(missing, empty, truncated, undecodable, too large) is listed in rejects.csv and skipped.
An existing RUN_DIR is RESUMED from RUN_DIR/last.pt (the same options are required: a
different config, data or base bundle is refused); use a new --out to start over. Writes
RUN_DIR/best.pt (best validation verification accuracy; epoch 0 is the base model), last.pt,
checkpoints/, log.csv, log.json, curves.png, class_balance.json, rejects.csv, split.json,
summary.json. Exit codes: 0 ok; 1 trained, but some photos could not be read (rejects.csv);
2 bad input; 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from facesearch.errors import ExitCode, FaceSearchError, exit_code
from facesearch.vision.selection import is_failure
from training.config import ARCHS, FREEZE_DEFAULTS, HEAD_DEFAULTS, HEADS, MULTI_FACE, OPTIMIZERS, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facesearch-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="identity-folder tree or CSV/JSONL manifest")
    parser.add_argument(
        "--bundle",
        type=Path,
        required=True,
        help="base model bundle (its detection + alignment make the chips; its weights start dlib_resnet)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory (an existing one is resumed)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget of this invocation: stop after the epoch that crosses it",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--arch",
        choices=ARCHS,
        default="dlib_resnet",
        help="dlib_resnet fine-tunes the base bundle's dlib ResNet (default); resnet18/50 train "
        "from scratch (large data sets)",
    )
    model.add_argument("--embedding-dim", type=int, default=128, help="resnet18/50 only (default 128)")
    model.add_argument("--head", choices=HEADS, default="arcface", help="margin softmax head (default arcface)")
    model.add_argument(
        "--margin",
        type=float,
        default=None,
        help="margin (default " + ", ".join(f"{k} {v[0]}" for k, v in HEAD_DEFAULTS.items()) + ")",
    )
    model.add_argument(
        "--scale",
        type=float,
        default=None,
        help="logit scale (default " + ", ".join(f"{k} {v[1]}" for k, v in HEAD_DEFAULTS.items()) + ")",
    )
    model.add_argument(
        "--freeze-stages",
        type=int,
        default=None,
        help="freeze the stem and the first N residual stages (dlib_resnet has 5: 3x32, 4x64, 3x128, "
        "3x256, 1x256 filters; resnet18/50 have 4). Default "
        + ", ".join(f"{k} {v}" for k, v in FREEZE_DEFAULTS.items())
        + " (dlib_resnet: train the last stage + final fc)",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    optim.add_argument("--lr", type=float, default=1e-4, help="backbone learning rate (default 1e-4)")
    optim.add_argument("--head-lr", type=float, default=1e-3, help="head learning rate (default 1e-3)")
    optim.add_argument("--weight-decay", type=float, default=1e-4)
    optim.add_argument("--batch-size", type=int, default=32)
    optim.add_argument("--warmup-epochs", type=float, default=0.5, help="linear warm-up, then cosine decay")
    optim.add_argument("--patience", type=int, default=3, help="early stopping: epochs without a better val accuracy")
    optim.add_argument("--seed", type=int, default=0)

    data = parser.add_argument_group("data")
    data.add_argument("--val-fraction", type=float, default=0.2, help="share of identities held out (default 0.2)")
    data.add_argument("--min-images", type=int, default=2, help="drop identities with fewer usable photos (default 2)")
    data.add_argument("--pairs-per-fold", type=int, default=300, help="validation pairs per fold, 10 folds")
    data.add_argument("--min-face", type=int, default=40, help="smallest face the detector finds (px)")
    data.add_argument(
        "--multi-face",
        choices=MULTI_FACE,
        default=MULTI_FACE[0],
        help="a photo with several faces, as the indexer: keep the dominant face (default: the largest when "
        "clearly larger than the next, else reject the photo), always the largest, or reject the photo",
    )
    data.add_argument("--chips-cache", type=Path, default=None, help="chip cache folder (default RUN_DIR/chips)")

    run = parser.add_argument_group("running")
    run.add_argument("--workers", type=int, default=0, help="chip preparation processes (0 = one per core)")
    run.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    run.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every K steps (0 = per epoch)")
    run.add_argument(
        "--keep-checkpoints",
        type=int,
        default=0,
        help="keep the newest K checkpoints/epoch_*.pt (default 0 = all; best.pt, last.pt always)",
    )
    run.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: interrupt
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data,
        bundle=args.bundle,
        out=args.out,
        epochs=args.epochs,
        arch=args.arch,
        embedding_dim=args.embedding_dim,
        head=args.head,
        margin=args.margin,
        scale=args.scale,
        freeze_stages=args.freeze_stages,
        optimizer=args.optimizer,
        lr=args.lr,
        head_lr=args.head_lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        warmup_epochs=args.warmup_epochs,
        patience=args.patience,
        seed=args.seed,
        val_fraction=args.val_fraction,
        min_images=args.min_images,
        pairs_per_fold=args.pairs_per_fold,
        min_face=args.min_face,
        multi_face=args.multi_face,
        workers=args.workers,
        threads=args.threads,
        chips_cache=args.chips_cache,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        max_minutes=args.max_minutes,
        stop_after_steps=args.stop_after_steps,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        from training.loop import run  # noqa: PLC0415 (torch loads after the arguments are checked)

        summary = run(config)
    except FaceSearchError as err:
        print(f"facesearch-train: error: {err} [{err.reason}]", file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        print("facesearch-train: interrupted (rerun the same command to resume)", file=sys.stderr)
        return ExitCode.INTERRUPTED
    status = chips_status(summary.run_dir / "rejects.csv")
    if summary.stopped == "stop_after_steps":
        print(f"stopped after --stop-after-steps; rerun with the same --out to resume ({summary.run_dir / 'last.pt'})")
        return status
    print(
        f"validation verification accuracy: base model {summary.base_val_accuracy:.4f}, "
        f"best {summary.best_val_accuracy:.4f} at epoch {summary.best_epoch} "
        f"({summary.epochs_done} epochs, {summary.stopped}{', resumed' if summary.resumed else ''})"
    )
    print(f"best checkpoint: {summary.best_path}")
    print(f"next: facesearch-export checkpoint {summary.best_path} --out DIR")
    return status


def chips_status(rejects: Path) -> ExitCode:
    """OK when every photo was read; FAILED (with a note on stderr) when some could not be read or
    analysed (``rejects.csv`` rows of a failure reason, not face-choice rejects)."""
    with rejects.open(newline="") as fh:
        failed = [row for row in csv.DictReader(fh) if is_failure(row["reason"])]
    if not failed:
        return ExitCode.OK
    print(f"facesearch-train: {len(failed)} photos could not be read and were skipped; see {rejects}", file=sys.stderr)
    return ExitCode.FAILED


if __name__ == "__main__":
    sys.exit(main())
