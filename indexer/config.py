"""Frozen job configs: flags become one of these, ``run(config)`` does the work."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from facesearch.errors import InvalidInputError
from facesearch.vision.pipeline import DetectorMode
from facesearch.vision.selection import MULTI_FACE_SETTINGS, Policy
from indexer.plan import IndexOptions

INPUT_KINDS = ("images", "manifest", "embeddings")


@dataclass(frozen=True, slots=True)
class InputSpec:
    kind: str  # images | manifest | embeddings
    path: Path

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise InvalidInputError(f"input kind {self.kind!r}: expected one of {INPUT_KINDS}")


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    """The embedding stage (``--images``/``--manifest`` inputs)."""

    min_face: int = 40  # px; the detector's smallest face
    min_blur: float = 0.0  # reject faces whose chip's Laplacian variance is below this (0 = off)
    workers: int = 0  # local processes (0 = one per core)
    shard_size: int = 64  # images per shard file
    ray_address: str | None = None  # run the stage on Ray Data ("local" or ray://host:port or auto)
    keep_chips: bool = False  # store aligned face chips (opt-in: they are photo pixels)
    #: A photo with several faces: keep the "dominant" one (the largest, when clearly larger than the
    #: next; else reject), always the "largest", or "reject" the photo (facesearch.vision.selection).
    multi_face: str = Policy.DOMINANT.value
    #: How faces are found: budget (the default) or cascade (facesearch.jobs.embed.detector_mode).
    detector: DetectorMode = DetectorMode.BUDGET

    def __post_init__(self) -> None:
        if self.multi_face not in MULTI_FACE_SETTINGS:
            raise InvalidInputError(f"multi_face={self.multi_face!r}: expected one of {', '.join(MULTI_FACE_SETTINGS)}")
        if self.shard_size < 1:
            raise InvalidInputError(f"shard size must be >= 1, got {self.shard_size}")
        if self.workers < 0:
            raise InvalidInputError(f"--workers must be >= 0, got {self.workers}")


@dataclass(frozen=True, slots=True)
class BuildConfig:
    out: Path
    input: InputSpec | None  # None: build --from-store (indexer.store_build)
    bundle: Path | None
    memory_budget: int
    index: IndexOptions = field(default_factory=IndexOptions)
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    keep_versions: int = 3
    threads: int = 0  # FAISS threads (0 = all cores)
    restart: bool = False  # discard an unfinished embedding stage instead of resuming it
    progress: bool = True

    def __post_init__(self) -> None:
        if self.input is not None and self.input.kind != "embeddings" and self.bundle is None:
            raise InvalidInputError(f"--{self.input.kind} needs --bundle DIR (the model that embeds the faces)")
        if self.keep_versions < 1:
            raise InvalidInputError(f"--keep-versions must be >= 1, got {self.keep_versions}")


@dataclass(frozen=True, slots=True)
class AddConfig:
    root: Path
    input: InputSpec
    bundle: Path | None
    memory_budget: int
    retrain: bool = False
    index: IndexOptions = field(default_factory=IndexOptions)
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    keep_versions: int = 3
    threads: int = 0
    restart: bool = False
    progress: bool = True


@dataclass(frozen=True, slots=True)
class RemoveConfig:
    root: Path
    identities: tuple[str, ...]
    memory_budget: int
    keep_versions: int = 3
    threads: int = 0
    progress: bool = True
    bundle: Path | None = None  # only for the open-set parameters (default: the parent version's)

    def __post_init__(self) -> None:
        if not self.identities:
            raise InvalidInputError("remove: name at least one identity (--identity ID or --identities-file FILE)")


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    root: Path
    version: str | None = None  # default: CURRENT
    queries: int = 0  # held-out queries (0: as many as the build used)
    recall: bool = True  # also re-measure recall against exact search
    seed: int = -1  # query sample seed (-1: the build's, to reproduce its figures)
    threads: int = 0
    progress: bool = True


def to_jsonable(value: Any) -> Any:
    """Config dataclasses -> plain JSON values (paths as strings)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def fingerprint(*parts: Any) -> str:
    text = json.dumps([to_jsonable(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
