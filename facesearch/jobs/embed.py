"""``facesearch embed``: embeddings for many images, resumable, on all cores.

The job runs on :mod:`facesearch.jobs.runner`: shards of ``shard_size`` images under
``OUT.parts/`` (the work directory of :mod:`facesearch.jobs.shards`; a rerun with the same
inputs, model and options skips finished shards, one with others is refused: delete the folder
to start over), merged into ``OUT`` when all are done, and the parts removed.

Per image: one face chosen by ``face`` (:class:`facesearch.vision.selection.Policy`): by default
the face nearest the image centre (``NEAREST_CENTRE``, the embed contract), or ``DOMINANT`` or
``LARGEST``; or every face with ``all_faces``. An image without a face gives one row with
``found=False``, and so does one where ``DOMINANT`` finds no face clearly larger than the others.
An image that cannot be read or analysed (a missing, empty, truncated, undecodable or oversized
file, or any failure of the pipeline on it) also gives one row with ``found=False``, with
``errors`` = ``"<reason>: <message>"`` (``"ERROR: <exception type>: <message>"`` for an
unexpected failure): a *failed row*. One bad image never stops the job; ``EmbedSummary.errors``
counts the failed rows, and ``facesearch embed`` exits 1 when there are any.

Nearest-centre stays the default: on lfw-dev it identifies as well as the dominant face and never
drops a photo (``bench/results/face_selection.md``).

``detector`` chooses how faces are found (:func:`detector_mode`, shared with the server's
FACESEARCH_DETECTOR and the indexer's ``--embed-options detector=``): ``budget`` (the default) or
``cascade`` (BlazeFace proposals confirmed by MMOD, ``bench/results/cascade.md``), which needs a
bundle with the proposal model (:func:`check_detector`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import FaceSearchError, InvalidInputError, Reason
from facesearch.jobs.runner import ShardJob, WorkerSpec, run_shards
from facesearch.jobs.shards import fingerprint, open_workdir, read_shard
from facesearch.util.fs import atomic_path
from facesearch.vision.decode import DecodeLimits, load_image
from facesearch.vision.pipeline import (
    DEFAULT_DETECTOR_MODE,
    DetectorMode,
    Face,
    FacePipeline,
    PipelineConfig,
)
from facesearch.vision.selection import Policy, Rejection, choose_face, policy_key, rejection_for_error

#: The shard arrays, one row per face (or per image without one); also the output's row columns.
COLUMNS = ("image_index", "embeddings", "found", "boxes", "scores", "errors")
_BATCH = 8  # images whose faces are embedded in one batch


def check_detector(bundle: ModelBundle, mode: DetectorMode, what: str) -> None:
    """Refuse ``cascade`` for a bundle without the proposal model (it would silently run ``budget``)."""
    if mode is DetectorMode.CASCADE and bundle.proposals_model() is None:
        raise InvalidInputError(
            f"{what}=cascade needs a model bundle with the face-proposal model, and {bundle.root} has none "
            "(exported before the cascade existed): export it again with `facesearch-export dlib`, or use "
            f"{what}={DEFAULT_DETECTOR_MODE}",
            reason=Reason.BAD_CONFIG,
        )


def pipeline_mode(mode: DetectorMode) -> DetectorMode | None:
    """``PipelineConfig.detector_mode`` for a chosen mode: None for the default, so that the
    config's own rule stands (EXACT when there is no detection budget)."""
    return None if mode.value == DEFAULT_DETECTOR_MODE else mode


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
    face: Policy = Policy.NEAREST_CENTRE  # the face of each image (without all_faces)
    detector: DetectorMode = DetectorMode.BUDGET  # how faces are found (budget or cascade)

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise InvalidInputError(f"--shard-size must be >= 1, got {self.shard_size}", reason=Reason.BAD_CONFIG)
        if self.workers < 0:
            raise InvalidInputError(f"--workers must be >= 0, got {self.workers}", reason=Reason.BAD_CONFIG)

    def fingerprint(self, contract: str) -> str:
        config: list[object] = ["facesearch embed", contract, self.all_faces, self.min_face, self.shard_size]
        if self.face is not Policy.NEAREST_CENTRE:  # the default keeps the fingerprint it always had
            config.append(policy_key(self.face))
        if self.detector.value != DEFAULT_DETECTOR_MODE:  # likewise: the default's fingerprint is unchanged
            config.append(f"detector={self.detector.value}")
        return fingerprint(config, ([str(p)] for p in self.paths))


@dataclass(frozen=True, slots=True)
class EmbedSummary:
    images: int
    found: int
    faces: int
    errors: int  # failed rows: images that could not be read or analysed
    out: Path


class EmbedWorker:
    """One face pipeline; embeds a shard of image paths into rows (one process of the job)."""

    def __init__(self, pipeline: FacePipeline, all_faces: bool, face: Policy = Policy.NEAREST_CENTRE) -> None:
        self.pipeline = pipeline
        self.all_faces = all_faces
        self.face = face

    @classmethod
    def load(
        cls,
        bundle_root: str,
        min_face: int,
        all_faces: bool,
        face: str,
        detector: str = DEFAULT_DETECTOR_MODE,
        *,
        threads: int | None,
    ) -> EmbedWorker:
        bundle = ModelBundle.load(bundle_root, verify=False)
        config = PipelineConfig(min_face=min_face, threads=threads, detector_mode=pipeline_mode(DetectorMode(detector)))
        return cls(FacePipeline(bundle, config), all_faces, Policy(face))

    def __call__(self, start: int, paths: list[str]) -> dict[str, np.ndarray]:
        dim = self.pipeline.embedder.dim
        errors: dict[int, str] = {}
        faces_per_image: dict[int, list[Face]] = {}
        for offset in range(0, len(paths), _BATCH):  # a few images decoded at a time, embedded in one batch
            images, indices = [], []
            for i in range(offset, min(offset + _BATCH, len(paths))):
                try:
                    images.append(load_image(Path(paths[i]), DecodeLimits()))
                    indices.append(i)
                except Exception as err:  # one bad image must not cost the others
                    errors[i] = _error_text(err)
            for idx, faces, image in zip(indices, self._analyze(images, indices, errors), images, strict=True):
                faces_per_image[idx] = faces if self.all_faces else self._one(faces, image.shape)
        rows: dict[str, list[Any]] = {k: [] for k in COLUMNS}
        for i in range(len(paths)):
            faces = faces_per_image.get(i, [])
            if not faces:  # unreadable, or no face: one row with found=False
                _append(rows, start + i, None, dim, errors.get(i, ""))
            for face in faces:
                _append(rows, start + i, face, dim, "")
        return {
            "image_index": np.asarray(rows["image_index"], np.int64),
            "embeddings": np.asarray(rows["embeddings"], np.float32).reshape(-1, dim),
            "found": np.asarray(rows["found"], bool),
            "boxes": np.asarray(rows["boxes"], np.float32).reshape(-1, 4),
            "scores": np.asarray(rows["scores"], np.float32),
            "errors": np.asarray(rows["errors"], dtype=str),
        }

    def _analyze(self, images: list[np.ndarray], indices: list[int], errors: dict[int, str]) -> list[list[Face]]:
        """Faces of each image, in one batch; if the batch fails, image by image (failures -> ``errors``)."""
        try:
            return [list(faces) for faces in self.pipeline.analyze_many(images)]
        except Exception:  # find the bad image: one must not cost the others
            out: list[list[Face]] = []
            for idx, image in zip(indices, images, strict=True):
                try:
                    out.append(self.pipeline.analyze(image))
                except Exception as err:
                    errors[idx] = _error_text(err)
                    out.append([])
            return out

    def _one(self, faces: list[Face], shape: tuple[int, ...]) -> list[Face]:
        pick = choose_face(faces, self.face, image_shape=shape)
        return [] if isinstance(pick, Rejection) else [faces[pick]]


def _error_text(err: Exception) -> str:
    """``"<reason>: <message>"``: a facesearch error's own reason (``IMAGE_TRUNCATED``, ...), else
    the batch rejection's (``ERROR: <exception type>: <message>``)."""
    if isinstance(err, FaceSearchError):
        return f"{err.reason}: {err}"
    rejection = rejection_for_error(err)
    return f"{rejection.reason}: {rejection.detail}"


def _append(rows: dict[str, list[Any]], index: int, face: Face | None, dim: int, error: str) -> None:
    rows["image_index"].append(index)
    rows["embeddings"].append(face.embedding if face is not None else np.zeros(dim, np.float32))
    rows["found"].append(face is not None)
    rows["boxes"].append(face.box if face is not None else (0.0, 0.0, 0.0, 0.0))
    rows["scores"].append(face.score if face is not None else 0.0)
    rows["errors"].append(error)


# -- the job ---------------------------------------------------------------------------
def parts_dir(out: Path) -> Path:
    """The work directory of the job writing ``out``."""
    return out.with_name(out.name + ".parts")


def _config_json(config: EmbedConfig) -> dict[str, Any]:
    data = asdict(config)
    data["paths"] = len(config.paths)
    data["face"] = config.face.value
    data["detector"] = config.detector.value
    return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def run(config: EmbedConfig) -> EmbedSummary:
    bundle = ModelBundle.load(config.bundle)
    check_detector(bundle, config.detector, "--detector")
    parts = parts_dir(config.out)
    info = {"config": _config_json(config), "contract_id": bundle.contract_id}
    open_workdir(parts, config.fingerprint(bundle.contract_id), info, restart=False, remedy="delete it to start over")
    job = ShardJob(
        work=parts,
        items=[str(p) for p in config.paths],
        shard_size=config.shard_size,
        worker=WorkerSpec(
            EmbedWorker.load,
            (str(config.bundle), config.min_face, config.all_faces, config.face.value, config.detector.value),
        ),
        workers=config.workers,
        desc="embed",
        progress=config.progress,
    )
    ranges = run_shards(job).ranges
    shards = [read_shard(parts, s, e) for s, e in ranges]
    merged = {k: np.concatenate([shard[k] for shard in shards]) for k in COLUMNS}
    write_embeddings(config.out, config.paths, merged, bundle.contract_id)
    shutil.rmtree(parts)
    return EmbedSummary(
        images=len(config.paths),
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
    payload: dict[str, Any] = {"paths": row_paths, "contract_id": np.asarray(contract), **rows}
    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            _write_parquet(tmp, payload)
        else:
            with tmp.open("wb") as fh:
                np.savez(fh, **payload)


def _write_parquet(path: Path, payload: dict[str, Any]) -> None:
    import pyarrow as pa  # noqa: PLC0415 - only for Parquet output
    import pyarrow.parquet as pq  # noqa: PLC0415

    dim = payload["embeddings"].shape[1]
    table = pa.table(
        {
            "path": payload["paths"],
            "image_index": payload["image_index"],
            "embedding": pa.FixedSizeListArray.from_arrays(payload["embeddings"].reshape(-1), dim),
            "found": payload["found"],
            "box": pa.FixedSizeListArray.from_arrays(payload["boxes"].reshape(-1), 4),
            "score": payload["scores"],
            "error": payload["errors"],
        },
        metadata={b"contract_id": str(payload["contract_id"]).encode()},
    )
    pq.write_table(table, path)


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
