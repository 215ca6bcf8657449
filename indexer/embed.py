"""The embedding stage: photos -> one face embedding per photo, in resumable shards.

The stage is a job of :mod:`facesearch.jobs.runner`: a local ``spawn`` process pool by
default, or, with ``--ray``, a Ray Data actor pool (indexer.ray_embed) running the same
:class:`ShardEmbedder`. Either way the shards are those of :mod:`facesearch.jobs.shards` under
``ROOT/.work/embed``, and a killed run resumes where it stopped (``--restart`` discards it).

Per photo, bad rows are data, not errors (:mod:`facesearch.vision.selection`, batch wording):
MISSING_FILE, UNDECODABLE (the decoder's reason in the detail), TOO_LARGE, NO_FACE,
MULTIPLE_FACES (under the default ``multi_face=dominant``: several faces and none clearly the
largest; ``largest`` always keeps the largest, ``reject`` rejects every photo with several
faces), LOW_QUALITY (blur under ``min_blur``), or ERROR (anything unexpected, with the message).
MISSING_FILE, UNDECODABLE, TOO_LARGE and ERROR are *failed* rows
(:func:`facesearch.vision.selection.is_failure`; ``EmbedStats.failed``): the build goes on and
publishes, and ``facesearch-index`` exits 1.

Shard arrays (no pickles): ``rows`` (input row of each accepted face), ``embeddings``,
``boxes``, ``det_scores``, ``face_sizes``, ``blurs``, optional ``chips``; and for skipped rows
``reject_rows``, ``reject_reasons``, ``reject_details``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import IndexBuildError
from facesearch.jobs.embed import check_detector, pipeline_mode
from facesearch.jobs.inputs import ImageRow
from facesearch.jobs.runner import Executor, ShardJob, WorkerSpec, run_shards
from facesearch.jobs.shards import fingerprint, open_workdir, read_shard, shard_ranges
from facesearch.vision.pipeline import DetectorMode, Face, FacePipeline, PipelineConfig
from facesearch.vision.selection import (
    Policy,
    QualityGate,
    Rejection,
    choose_face,
    is_failure,
    policy_key,
    process_photo,
)
from indexer.config import EmbedOptions
from indexer.ingest import RejectsWriter
from indexer.read import InputChunk

log = logging.getLogger(f"facesearch.{__name__}")


@dataclass(frozen=True, slots=True)
class EmbedStats:
    images: int
    shards: int
    resumed_shards: int
    faces: int
    rejected: dict[str, int]

    @property
    def failed(self) -> int:
        """Rows whose photo could not be read or analysed (not a face-choice or quality reject)."""
        return sum(n for reason, n in self.rejected.items() if is_failure(reason))


class ShardEmbedder:
    """Holds one face pipeline; embeds shards of rows (a shard worker, in a process or a Ray actor)."""

    def __init__(self, bundle: str, options: EmbedOptions, *, threads: int | None = 1) -> None:
        self.options = options
        self.bundle = ModelBundle.load(bundle, verify=False)
        self.d = self.bundle.embedding_dim
        config = PipelineConfig(
            min_face=options.min_face,
            threads=threads,
            keep_chips=options.keep_chips,
            detector_mode=pipeline_mode(options.detector),
        )
        self.pipeline = FacePipeline(self.bundle, config)
        self.policy = Policy(options.multi_face)
        self.gate = QualityGate(min_blur=options.min_blur)

    def _face(self, path: str) -> Face | Rejection:
        """The photo's face under the ``multi_face`` policy and the blur gate, or why there is none."""
        found = process_photo(path, lambda image: (image.shape, self.pipeline.analyze(image)))
        if isinstance(found, Rejection):
            return found
        shape, faces = found
        pick = choose_face(faces, self.policy, image_shape=shape)
        if isinstance(pick, Rejection):
            return pick
        return self.gate.check(faces[pick].quality) or faces[pick]

    def __call__(self, start: int, rows: list[ImageRow]) -> dict[str, np.ndarray]:
        acc: dict[str, list[Any]] = {
            k: [] for k in ("rows", "embeddings", "boxes", "det_scores", "face_sizes", "blurs", "chips")
        }
        rejects: list[tuple[int, str, str]] = []
        for r, row in enumerate(rows, start):
            face = self._face(row.path)
            if isinstance(face, Rejection):
                rejects.append((r, face.reason, face.detail))
                continue
            acc["rows"].append(r)
            acc["embeddings"].append(face.embedding)
            acc["boxes"].append(face.box)
            acc["det_scores"].append(face.score)
            acc["face_sizes"].append(face.quality.face_size)
            acc["blurs"].append(face.quality.blur)
            if self.options.keep_chips and face.chip is not None:
                acc["chips"].append(face.chip)
        out: dict[str, np.ndarray] = {
            "rows": np.asarray(acc["rows"], dtype=np.int64),
            "embeddings": np.asarray(acc["embeddings"], dtype=np.float32).reshape(-1, self.d),
            "boxes": np.asarray(acc["boxes"], dtype=np.float32).reshape(-1, 4),
            "det_scores": np.asarray(acc["det_scores"], dtype=np.float32),
            "face_sizes": np.asarray(acc["face_sizes"], dtype=np.float32),
            "blurs": np.asarray(acc["blurs"], dtype=np.float32),
            "reject_rows": np.asarray([r for r, _, _ in rejects], dtype=np.int64),
            "reject_reasons": np.asarray([x for _, x, _ in rejects], dtype=str),
            "reject_details": np.asarray([x for _, _, x in rejects], dtype=str),
        }
        if self.options.keep_chips:
            size = self.bundle.chip_size
            out["chips"] = np.asarray(acc["chips"], dtype=np.uint8).reshape(-1, size, size, 3)
        return out


def stage_fingerprint(rows: list[ImageRow], contract_id: str, options: EmbedOptions) -> str:
    config = [
        "facesearch-index embed",
        contract_id,
        options.min_face,
        options.min_blur,
        options.keep_chips,
        options.shard_size,
        policy_key(Policy(options.multi_face)),
    ]
    if options.detector is not DetectorMode.BUDGET:  # the default keeps the fingerprint it always had
        config.append(f"detector={options.detector.value}")
    return fingerprint(config, ([r.path, r.identity_id, r.name, r.metadata] for r in rows))


def run_stage(
    rows: list[ImageRow],
    bundle: Path,
    contract_id: str,
    options: EmbedOptions,
    work: Path,
    *,
    restart: bool,
    progress: bool,
) -> EmbedStats:
    """Embed every row into shards under ``work`` (resuming finished shards)."""
    info = {
        "contract_id": contract_id,
        "images": len(rows),
        "shard_size": options.shard_size,
        "options": {
            "min_face": options.min_face,
            "min_blur": options.min_blur,
            "keep_chips": options.keep_chips,
            "multi_face": policy_key(Policy(options.multi_face)),
            "detector": options.detector.value,
        },
    }
    check_detector(ModelBundle.load(bundle, verify=False), options.detector, "--embed-options detector")
    open_workdir(work, stage_fingerprint(rows, contract_id, options), info, restart=restart)
    job = ShardJob(
        work=work,
        items=rows,
        shard_size=options.shard_size,
        worker=WorkerSpec(ShardEmbedder, (str(bundle), options)),
        workers=options.workers,
        desc="embed",
        progress=progress,
        failure=IndexBuildError,
    )
    execute: Executor | None = None
    if options.ray_address:
        from indexer.ray_embed import ray_executor  # noqa: PLC0415 - Ray is optional

        execute = ray_executor(rows, str(bundle), options, work)
    done = run_shards(job, execute)
    faces, rejected = 0, dict[str, int]()
    for s, e in done.ranges:
        shard = read_shard(work, s, e)
        faces += len(shard["rows"])
        for reason in shard["reject_reasons"].tolist():
            rejected[reason] = rejected.get(reason, 0) + 1
    return EmbedStats(len(rows), len(done.ranges), done.resumed, faces, rejected)


def shard_chunks(
    rows: list[ImageRow], work: Path, shard_size: int, rejects: RejectsWriter | None
) -> Iterator[InputChunk]:
    """The accepted faces of every shard as ingest chunks (and their rejects, once, to ``rejects``)."""
    for s, e in shard_ranges(len(rows), shard_size):
        shard = read_shard(work, s, e)
        if rejects is not None:
            for r, reason, detail in zip(
                shard["reject_rows"].tolist(),
                shard["reject_reasons"].tolist(),
                shard["reject_details"].tolist(),
                strict=True,
            ):
                rejects.write(r, reason, identity_id=rows[r].identity_id, source=rows[r].path, detail=detail)
        idx = shard["rows"].tolist()
        if not idx:
            continue
        chips = shard.get("chips")
        yield InputChunk(
            start=s,
            embeddings=shard["embeddings"],
            identities=[rows[r].identity_id for r in idx],
            names=[rows[r].name for r in idx],
            sources=[rows[r].path for r in idx],
            boxes=shard["boxes"],
            det_scores=shard["det_scores"],
            face_sizes=shard["face_sizes"],
            blurs=shard["blurs"],
            metadata=[rows[r].metadata for r in idx],
            chips=list(chips) if chips is not None else None,
            row_numbers=shard["rows"],
        )
