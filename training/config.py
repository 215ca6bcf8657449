"""``TrainConfig``: every option of a training run, frozen; the run-defining part is fingerprinted."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from facesearch.errors import InvalidInputError, Reason
from facesearch.vision.selection import MULTI_FACE_SETTINGS, Policy

ARCHS = ("dlib_resnet", "resnet18", "resnet50")
HEADS = ("arcface", "cosface")
OPTIMIZERS = ("adamw", "sgd")
MULTI_FACE = MULTI_FACE_SETTINGS  # dominant (default), largest, reject: facesearch.vision.selection
#: Defaults per head: (margin, scale). ArcFace's margin is an angle (radians), CosFace's a cosine.
HEAD_DEFAULTS = {"arcface": (0.3, 32.0), "cosface": (0.25, 32.0)}
#: Default --freeze-stages per architecture: fine-tune only dlib's last residual stage + fc
#: (a CPU budget and a small data set); torchvision nets train from scratch, nothing frozen.
FREEZE_DEFAULTS = {"dlib_resnet": 4, "resnet18": 0, "resnet50": 0}
#: Options that change where or how fast a run goes, never what it computes: not fingerprinted,
#: so a resume may change them.
OPERATIONAL = (
    "out",
    "max_minutes",
    "stop_after_steps",
    "workers",
    "threads",
    "progress",
    "chips_cache",
    "checkpoint_every",
    "keep_checkpoints",
)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    data: Path  # identity-folder tree or CSV/JSONL manifest (path, identity_id)
    bundle: Path  # the base model bundle (detection + alignment for chips; base weights)
    out: Path  # run directory; an existing one is resumed from last.pt
    epochs: int = 8
    arch: str = "dlib_resnet"
    embedding_dim: int = 128  # torchvision archs only (dlib's is 128)
    head: str = "arcface"
    margin: float | None = None  # None: HEAD_DEFAULTS
    scale: float | None = None
    freeze_stages: int | None = None  # None: FREEZE_DEFAULTS
    optimizer: str = "adamw"
    lr: float = 1e-4  # backbone learning rate
    head_lr: float = 1e-3  # margin head learning rate
    weight_decay: float = 1e-4
    batch_size: int = 32
    warmup_epochs: float = 0.5
    patience: int = 3  # early stopping: epochs without a better validation accuracy
    seed: int = 0
    val_fraction: float = 0.2  # of the identities with >= min_images photos
    min_images: int = 2  # identities with fewer usable chips are dropped (reported)
    pairs_per_fold: int = 300  # validation pairs per fold (half matched, half mismatched)
    min_face: int = 40
    multi_face: str = Policy.DOMINANT.value  # a photo with several faces: as the indexer (dominant, largest, reject)
    workers: int = 0  # chip preparation processes (0 = one per core)
    threads: int = 0  # torch intra-op threads (0 = all cores)
    chips_cache: Path | None = None  # default RUN_DIR/chips
    checkpoint_every: int = 0  # also checkpoint every K optimizer steps (0 = per epoch only)
    keep_checkpoints: int = 0  # keep the newest K checkpoints/epoch_*.pt (0 = all; best.pt/last.pt always)
    max_minutes: float | None = None  # stop after the epoch that crosses this wall-clock budget
    stop_after_steps: int | None = None  # debug: checkpoint and stop after this many steps (tests resume)
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.arch in ARCHS, f"--arch {self.arch!r}: one of {', '.join(ARCHS)}"),
            (self.head in HEADS, f"--head {self.head!r}: one of {', '.join(HEADS)}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer {self.optimizer!r}: one of {', '.join(OPTIMIZERS)}"),
            (self.multi_face in MULTI_FACE, f"--multi-face {self.multi_face!r}: one of {', '.join(MULTI_FACE)}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
            (self.lr > 0 and self.head_lr > 0, "--lr and --head-lr must be > 0"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
            (self.patience >= 1, f"--patience must be >= 1, got {self.patience}"),
            (0.0 < self.val_fraction < 1.0, f"--val-fraction must be in (0, 1), got {self.val_fraction}"),
            (self.min_images >= 2, f"--min-images must be >= 2, got {self.min_images}"),
            (self.pairs_per_fold >= 2, f"--pairs-per-fold must be >= 2, got {self.pairs_per_fold}"),
            (self.min_face >= 10, f"--min-face must be >= 10 px, got {self.min_face}"),
            (self.workers >= 0 and self.threads >= 0, "--workers and --threads must be >= 0"),
            (self.checkpoint_every >= 0, "--checkpoint-every must be >= 0"),
            (self.keep_checkpoints >= 0, "--keep-checkpoints must be >= 0"),
            (self.margin is None or 0.0 <= self.margin < 1.5, f"--margin {self.margin}: expected 0 <= m < 1.5"),
            (self.scale is None or self.scale > 0, f"--scale {self.scale}: must be > 0"),
            (self.freeze_stages is None or self.freeze_stages >= 0, "--freeze-stages must be >= 0"),
            (self.max_minutes is None or self.max_minutes > 0, "--max-minutes must be > 0"),
            (self.stop_after_steps is None or self.stop_after_steps >= 1, "--stop-after-steps must be >= 1"),
            (self.embedding_dim >= 2, "--embedding-dim must be >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message, reason=Reason.BAD_CONFIG)

    @property
    def resolved_margin(self) -> float:
        return self.margin if self.margin is not None else HEAD_DEFAULTS[self.head][0]

    @property
    def resolved_scale(self) -> float:
        return self.scale if self.scale is not None else HEAD_DEFAULTS[self.head][1]

    @property
    def resolved_freeze(self) -> int:
        return self.freeze_stages if self.freeze_stages is not None else FREEZE_DEFAULTS[self.arch]

    @property
    def chips_dir(self) -> Path:
        return self.chips_cache if self.chips_cache is not None else self.out / "chips"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings, resolved defaults added."""
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        data.update(
            resolved_margin=self.resolved_margin,
            resolved_scale=self.resolved_scale,
            resolved_freeze_stages=self.resolved_freeze,
        )
        return data

    def run_defining(self) -> dict[str, Any]:
        """The part of the config that the fingerprint covers (what the run computes)."""
        data = self.as_dict()
        for key in (*OPERATIONAL, "data", "bundle"):  # data and bundle enter as content hashes instead
            data.pop(key, None)
        return data
