"""The embedding stage: photos -> one face embedding per photo, in resumable shards.

Local by default: a process pool (``spawn``; one ONNX pipeline per worker with one intra-op
thread, which uses cores better than one process with many threads). With ``--ray`` the same
:class:`ShardEmbedder` runs in a Ray Data actor pool (indexer.ray_embed). Either way the
output is the shard format of facesearch.jobs.shards, and a killed run resumes where it stopped.

Per photo, bad rows are data, not errors: MISSING_FILE, UNDECODABLE (the decoder's reason in
the detail), TOO_LARGE, NO_FACE, MULTIPLE_FACES (a photo of an identity folder must show one
face; ``multi_face=largest`` keeps the largest instead), LOW_QUALITY (blur under ``min_blur``),
or ERROR (anything unexpected, with the message).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import FaceSearchError, ImageDecodeError, ImageTooLargeError, IndexBuildError
from facesearch.jobs.inputs import ImageRow
from facesearch.jobs.shards import is_done, open_workdir, read_shard, shard_ranges, write_shard
from facesearch.vision.decode import load_image
from facesearch.vision.pipeline import FacePipeline, PipelineConfig
from indexer.config import EmbedOptions, fingerprint
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


class ShardEmbedder:
    """Holds one face pipeline; embeds shards of rows and writes them (process or Ray actor)."""

    def __init__(self, bundle: str, options: EmbedOptions, threads: int | None = 1) -> None:
        self.options = options
        self.bundle = ModelBundle.load(bundle, verify=False)
        self.d = self.bundle.embedding_dim
        config = PipelineConfig(min_face=options.min_face, threads=threads, keep_chips=options.keep_chips)
        self.pipeline = FacePipeline(self.bundle, config)

    def embed_rows(self, start: int, rows: list[ImageRow]) -> dict[str, np.ndarray]:
        acc: dict[str, list[Any]] = {
            k: [] for k in ("rows", "embeddings", "boxes", "det_scores", "face_sizes", "blurs", "chips")
        }
        rejects: list[tuple[int, str, str]] = []
        for i, row in enumerate(rows):
            r = start + i
            try:
                if not Path(row.path).is_file():
                    rejects.append((r, "MISSING_FILE", row.path))
                    continue
                faces = self.pipeline.analyze(load_image(row.path))
            except ImageDecodeError as err:
                rejects.append((r, "UNDECODABLE", f"{err.reason}: {err}"))
                continue
            except ImageTooLargeError as err:
                rejects.append((r, "TOO_LARGE", str(err)))
                continue
            except FaceSearchError as err:
                rejects.append((r, err.reason, str(err)))
                continue
            except Exception as err:  # one bad photo must not kill the job
                rejects.append((r, "ERROR", f"{type(err).__name__}: {err}"))
                continue
            if not faces:
                rejects.append((r, "NO_FACE", ""))
                continue
            if len(faces) > 1 and self.options.multi_face == "reject":
                rejects.append((r, "MULTIPLE_FACES", f"{len(faces)} faces"))
                continue
            face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            if face.quality.blur < self.options.min_blur:
                rejects.append((r, "LOW_QUALITY", f"blur {face.quality.blur:.1f} < --min-blur {self.options.min_blur}"))
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

    def run_shard(self, work: str, start: int, end: int, rows: list[ImageRow]) -> tuple[int, int]:
        try:
            write_shard(Path(work), start, end, self.embed_rows(start, rows))
        except Exception as err:
            raise IndexBuildError(f"embedding shard {start}-{end} failed") from err
        return start, end


# -- local process pool --------------------------------------------------------------------
_worker: ShardEmbedder | None = None


def _init_worker(bundle: str, options: EmbedOptions) -> None:
    global _worker  # noqa: PLW0603 - one pipeline per worker process
    _worker = ShardEmbedder(bundle, options, threads=1)


def _run_task(work: str, start: int, end: int, rows: list[ImageRow]) -> tuple[int, int]:
    assert _worker is not None
    return _worker.run_shard(work, start, end, rows)


def stage_fingerprint(rows: list[ImageRow], contract_id: str, options: EmbedOptions) -> str:
    relevant = (
        options.min_face,
        options.min_blur,
        options.keep_chips,
        options.shard_size,
        options.multi_face,
    )
    return fingerprint(contract_id, relevant, [(r.path, r.identity_id, r.name, r.metadata) for r in rows])


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
    ranges = shard_ranges(len(rows), options.shard_size)
    fp = stage_fingerprint(rows, contract_id, options)
    info = {
        "contract_id": contract_id,
        "images": len(rows),
        "shard_size": options.shard_size,
        "options": {
            "min_face": options.min_face,
            "min_blur": options.min_blur,
            "keep_chips": options.keep_chips,
        },
    }
    resumed = open_workdir(work, fp, info, restart=restart)
    pending = [(s, e) for s, e in ranges if not is_done(work, s, e)]
    if resumed:
        log.info("resuming: %d of %d shards already done in %s", len(ranges) - len(pending), len(ranges), work)
    done_images = len(rows) - sum(e - s for s, e in pending)
    with tqdm(
        total=len(rows),
        initial=done_images,
        desc="embed",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        if options.ray_address:
            from indexer.ray_embed import run_ray  # noqa: PLC0415 - Ray is optional

            for s, e in run_ray(rows, pending, str(bundle), options, work):
                bar.update(e - s)
        else:
            for s, e in _run_local(rows, pending, str(bundle), options, work):
                bar.update(e - s)
    faces, rejected = 0, dict[str, int]()
    for s, e in ranges:
        shard = read_shard(work, s, e)
        faces += len(shard["rows"])
        for reason in shard["reject_reasons"].tolist():
            rejected[reason] = rejected.get(reason, 0) + 1
    return EmbedStats(len(rows), len(ranges), len(ranges) - len(pending), faces, rejected)


def _run_local(
    rows: list[ImageRow], pending: list[tuple[int, int]], bundle: str, options: EmbedOptions, work: Path
) -> Iterator[tuple[int, int]]:
    if not pending:
        return
    workers = max(1, min(options.workers or (os.cpu_count() or 1), len(pending)))
    if workers == 1:
        embedder = ShardEmbedder(bundle, options, threads=None)
        for s, e in pending:
            yield embedder.run_shard(str(work), s, e, rows[s:e])
        return
    ctx = mp.get_context("spawn")  # onnxruntime sessions must not cross a fork
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(bundle, options)) as pool:
        todo = iter(pending)
        running: set[Future[tuple[int, int]]] = set()
        for s, e in todo:  # keep at most 2 tasks per worker in flight: bounded memory for huge inputs
            running.add(pool.submit(_run_task, str(work), s, e, rows[s:e]))
            if len(running) >= 2 * workers:
                break
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()
                nxt = next(todo, None)
                if nxt is not None:
                    running.add(pool.submit(_run_task, str(work), nxt[0], nxt[1], rows[nxt[0] : nxt[1]]))


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
