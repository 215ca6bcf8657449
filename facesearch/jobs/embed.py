"""``facesearch embed``: embeddings for many images, resumable, on all cores.

Work is cut into shards of ``shard_size`` images addressed by ``(start, end)``; each
finished shard is written to ``OUT.parts/shard-<start>-<end>.npz`` (temp file then
``os.replace``, so a file that exists is complete). A rerun with the same inputs
skips finished shards; a rerun with different inputs or model is refused (the parts
directory carries a fingerprint). Worker processes each hold their own ONNX sessions
with one intra-op thread, which uses the cores better than one process with many
threads (decode, landmarks and alignment are single-threaded numpy work).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import FaceSearchError, PreconditionError
from facesearch.vision.decode import DecodeLimits, load_image
from facesearch.vision.onnx_session import default_threads
from facesearch.vision.pipeline import Face, FacePipeline, PipelineConfig, nearest_centre


@dataclass(frozen=True, slots=True)
class EmbedConfig:
    bundle: Path
    paths: tuple[Path, ...]
    out: Path
    all_faces: bool = False
    min_face: int = 40
    workers: int = 0  # 0 = one per core
    shard_size: int = 64
    progress: bool = True

    def fingerprint(self, contract: str) -> str:
        text = json.dumps([contract, [str(p) for p in self.paths], self.all_faces, self.min_face, self.shard_size])
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class EmbedSummary:
    images: int
    found: int
    faces: int
    errors: int
    out: Path


# -- one shard -------------------------------------------------------------------------
_worker_pipeline: FacePipeline | None = None


def _init_worker(bundle_root: str, min_face: int, threads: int) -> None:
    global _worker_pipeline  # noqa: PLW0603 - one pipeline per worker process
    bundle = ModelBundle.load(bundle_root, verify=False)
    _worker_pipeline = FacePipeline(bundle, PipelineConfig(min_face=min_face, threads=threads))


def _embed_shard(task: tuple[int, int, list[str], bool, str]) -> tuple[int, int]:
    start, end, paths, all_faces, shard_path = task
    assert _worker_pipeline is not None
    pipe = _worker_pipeline
    dim = pipe.embedder.dim
    rows: dict[str, list[Any]] = {k: [] for k in ("image_index", "embeddings", "found", "boxes", "scores", "errors")}
    images, indices, errors = [], [], {}
    for i, path in enumerate(paths):
        try:
            images.append(load_image(Path(path), DecodeLimits()))
            indices.append(i)
        except FaceSearchError as err:
            errors[i] = f"{err.reason}: {err}"
    faces_per_image: dict[int, list[Face]] = {}
    for offset in range(0, len(images), 8):  # batch embeddings across a few images
        batch = pipe.analyze_many(images[offset : offset + 8])
        for idx, faces, image in zip(indices[offset : offset + 8], batch, images[offset : offset + 8], strict=True):
            if all_faces:
                faces_per_image[idx] = list(faces)
            else:
                best = nearest_centre(faces, image.shape)
                faces_per_image[idx] = [best] if best is not None else []
    for i in range(len(paths)):
        faces = faces_per_image.get(i, [])
        if not faces:  # undecodable, or no face: one row with found=False
            _append(rows, start + i, None, dim, errors.get(i, ""))
        for face in faces:
            _append(rows, start + i, face, dim, "")
    arrays: dict[str, Any] = {
        "image_index": np.asarray(rows["image_index"], np.int64),
        "embeddings": np.asarray(rows["embeddings"], np.float32).reshape(-1, dim),
        "found": np.asarray(rows["found"], bool),
        "boxes": np.asarray(rows["boxes"], np.float32).reshape(-1, 4),
        "scores": np.asarray(rows["scores"], np.float32),
        "errors": np.asarray(rows["errors"], dtype=str),
    }
    tmp = shard_path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, shard_path)
    return start, end


def _append(rows: dict[str, list[Any]], index: int, face: Face | None, dim: int, error: str) -> None:
    rows["image_index"].append(index)
    rows["embeddings"].append(face.embedding if face is not None else np.zeros(dim, np.float32))
    rows["found"].append(face is not None)
    rows["boxes"].append(face.box if face is not None else (0.0, 0.0, 0.0, 0.0))
    rows["scores"].append(face.score if face is not None else 0.0)
    rows["errors"].append(error)


# -- the job ---------------------------------------------------------------------------
def _shard_path(parts: Path, start: int, end: int) -> Path:
    return parts / f"shard-{start:09d}-{end:09d}.npz"


def _prepare_parts(config: EmbedConfig, contract: str) -> Path:
    parts = config.out.with_name(config.out.name + ".parts")
    marker = parts / "fingerprint.json"
    fingerprint = config.fingerprint(contract)
    if parts.exists():
        try:
            old = json.loads(marker.read_text())["fingerprint"]
        except (OSError, KeyError, json.JSONDecodeError):
            old = None
        if old != fingerprint:
            raise PreconditionError(
                f"{parts} holds a partial run with other inputs or model; delete it to start over",
                reason="RESUME_MISMATCH",
            )
    else:
        parts.mkdir(parents=True)
        marker.write_text(
            json.dumps({"fingerprint": fingerprint, "config": _config_json(config), "contract_id": contract}, indent=2)
        )
    return parts


def _config_json(config: EmbedConfig) -> dict[str, Any]:
    data = asdict(config)
    data["paths"] = len(config.paths)
    return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def _run_shards(config: EmbedConfig, tasks: list[tuple[int, int, list[str], bool, str]]) -> Iterator[tuple[int, int]]:
    workers = config.workers or default_threads()
    workers = max(1, min(workers, len(tasks)))
    if workers == 1:
        _init_worker(str(config.bundle), config.min_face, default_threads())
        yield from map(_embed_shard, tasks)
        return
    ctx = mp.get_context("spawn")  # onnxruntime sessions must not be shared across fork
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(config.bundle), config.min_face, 1)) as pool:
        yield from pool.imap_unordered(_embed_shard, tasks)


def run(config: EmbedConfig) -> EmbedSummary:
    bundle = ModelBundle.load(config.bundle)
    parts = _prepare_parts(config, bundle.contract_id)
    n = len(config.paths)
    ranges = [(s, min(s + config.shard_size, n)) for s in range(0, n, config.shard_size)]
    pending = [(s, e) for s, e in ranges if not _shard_path(parts, s, e).exists()]
    tasks = [
        (s, e, [str(p) for p in config.paths[s:e]], config.all_faces, str(_shard_path(parts, s, e))) for s, e in pending
    ]
    done_images = n - sum(e - s for s, e in pending)
    with tqdm(
        total=n, initial=done_images, unit="img", desc="embed", disable=not config.progress, dynamic_ncols=True
    ) as bar:
        for start, end in _run_shards(config, tasks) if tasks else iter(()):
            bar.update(end - start)
    merged = {
        k: np.concatenate([np.load(_shard_path(parts, s, e))[k] for s, e in ranges])
        for k in ("image_index", "embeddings", "found", "boxes", "scores", "errors")
    }
    write_embeddings(config.out, config.paths, merged, bundle.contract_id)
    shutil.rmtree(parts)
    return EmbedSummary(
        images=n,
        found=len(np.unique(merged["image_index"][merged["found"]])),
        faces=int(merged["found"].sum()),
        errors=int((merged["errors"] != "").sum()),
        out=config.out,
    )


def write_embeddings(out: Path, paths: tuple[Path, ...], rows: dict[str, np.ndarray], contract: str) -> None:
    """The output contract: npz keys paths, embeddings, found, boxes, scores (+ image_index,
    errors, contract_id); Parquet with the same columns when ``out`` ends in .parquet."""
    row_paths = np.asarray([str(paths[i]) for i in rows["image_index"]], dtype=str)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".parquet":
        import pyarrow as pa  # noqa: PLC0415 - only for Parquet output
        import pyarrow.parquet as pq  # noqa: PLC0415

        dim = rows["embeddings"].shape[1]
        table = pa.table(
            {
                "path": row_paths,
                "image_index": rows["image_index"],
                "embedding": pa.FixedSizeListArray.from_arrays(rows["embeddings"].reshape(-1), dim),
                "found": rows["found"],
                "box": pa.FixedSizeListArray.from_arrays(rows["boxes"].reshape(-1), 4),
                "score": rows["scores"],
                "error": rows["errors"],
            },
            metadata={b"contract_id": contract.encode()},
        )
        pq.write_table(table, tmp)
    else:
        with tmp.open("wb") as fh:
            payload: dict[str, Any] = {"paths": row_paths, "contract_id": np.asarray(contract), **rows}
            np.savez(fh, **payload)
    os.replace(tmp, out)


def embed_paths(
    bundle: Path, paths: list[Path] | tuple[Path, ...], *, min_face: int = 40, workers: int = 0, progress: bool = True
) -> dict[str, np.ndarray]:
    """Run the embed job into a temporary file and return its rows (for evaluations)."""
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.npz"
        run(
            EmbedConfig(
                bundle=bundle, paths=tuple(paths), out=out, min_face=min_face, workers=workers, progress=progress
            )
        )
        with np.load(out) as data:
            return {k: data[k] for k in data.files}
