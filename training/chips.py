"""Face chips for training, made exactly as serving makes them, cached on disk.

Inputs are an identity-folder tree (``TREE/<identity>/<photo>``) or a CSV/JSONL manifest with
``path`` and ``identity_id`` columns: the indexer's readers (:mod:`facesearch.jobs.inputs`).

Each photo goes through the base bundle's :class:`facesearch.vision.pipeline.FacePipeline`: detect
(MMOD, ``min_face``), 5-point landmarks, the 150x150 aligned chip (dlib's ``get_face_chip``).
A photo with several faces gives one chip under the indexer's ``multi_face`` policy
(:mod:`facesearch.vision.selection`): ``"dominant"`` by default (the largest face when clearly
larger than the next, else the photo is rejected), ``"largest"`` or ``"reject"``. Rejects, with
reasons (the batch wording the indexer uses): ``NO_FACE``, ``MULTIPLE_FACES``, and the *failed*
rows, photos that could not be read or analysed: ``MISSING_FILE``, ``UNDECODABLE`` (the
decoder's reason in the detail), ``TOO_LARGE``, ``ERROR``. A failed row never stops the
preparation (:attr:`ChipSet.failed` counts them; ``facesearch-train`` then exits 1).

Cache: ``CACHE/<fingerprint[:16]>/`` where the fingerprint
(:func:`facesearch.jobs.shards.fingerprint`) covers the bundle contract id, ``min_face``,
``multi_face`` (with the dominance ratio) and every input (path, identity, size, mtime). The work is a job of
:mod:`facesearch.jobs.runner` with shards of ``shard_size`` photos under ``parts/``, so a killed
preparation resumes; when all are done they are merged into ``chips.npy`` (uint8
``(n, 150, 150, 3)``, read back memory-mapped), ``index.json`` (per chip: path, identity;
rejects) and ``manifest.json`` (config, counts, sha256 of both), whose own sha256 names the
chip set in checkpoints. A rerun with unchanged inputs and config reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.bundle.manifest import ModelBundle, sha256_file
from facesearch.errors import InvalidInputError, Reason
from facesearch.jobs.inputs import ImageRow, rows_from_manifest, rows_from_tree
from facesearch.jobs.runner import ShardJob, WorkerSpec, run_shards
from facesearch.jobs.shards import fingerprint, open_workdir, read_shard
from facesearch.util.fs import atomic_path, write_atomic
from facesearch.vision.pipeline import FacePipeline, PipelineConfig
from facesearch.vision.selection import Policy, Rejection, choose_face, is_failure, policy_key, process_photo

CHIPS_FORMAT = "facesearch-train-chips"
CHIPS_FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def read_rows(data: Path) -> list[ImageRow]:
    """(path, identity) rows of ``--data``: a folder tree or a .csv/.tsv/.jsonl manifest."""
    if data.is_dir():
        return rows_from_tree(data)
    if data.is_file():
        return rows_from_manifest(data)
    raise InvalidInputError(f"--data {data}: no such folder or manifest file", reason=Reason.BAD_DATA)


@dataclass(frozen=True, slots=True)
class ChipSet:
    root: Path
    chips: np.ndarray  # (n, 150, 150, 3) uint8, memory-mapped
    paths: tuple[str, ...]
    identities: tuple[str, ...]
    rejects: tuple[dict[str, str], ...]
    manifest: dict[str, Any]
    manifest_sha256: str

    @property
    def failed(self) -> tuple[dict[str, str], ...]:
        """The rejects whose photo could not be read or analysed (not a face-choice reject)."""
        return tuple(r for r in self.rejects if is_failure(r["reason"]))


def _stamp(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def chips_fingerprint(rows: list[ImageRow], contract: str, min_face: int, multi_face: str) -> str:
    """Names the cache folder (its first 16 hex digits) and is recorded in the chip manifest."""
    config = [CHIPS_FORMAT_VERSION, contract, min_face, policy_key(Policy(multi_face))]
    return fingerprint(config, ([row.path, row.identity_id, *_stamp(row.path)] for row in rows))


def chip_for(pipe: FacePipeline, path: str, multi_face: str) -> np.ndarray | Rejection:
    """The aligned chip of the photo's face under the ``multi_face`` policy, or why there is none."""

    def detect_one(image: np.ndarray) -> np.ndarray | Rejection:
        dets = pipe.detect(image)
        pick = choose_face(dets, Policy(multi_face), image_shape=image.shape)
        if isinstance(pick, Rejection):
            return pick
        _, chips = pipe.align(image, [dets[pick].box])
        return np.asarray(chips[0])

    return process_photo(path, detect_one)


class ChipWorker:
    """One face pipeline; cuts the chips of a shard of photo paths (one process of the job)."""

    def __init__(self, bundle_root: str, min_face: int, multi_face: str, *, threads: int | None) -> None:
        bundle = ModelBundle.load(bundle_root, verify=False)
        self.pipeline = FacePipeline(bundle, PipelineConfig(min_face=min_face, threads=threads))
        self.multi_face = multi_face

    def __call__(self, start: int, paths: list[str]) -> dict[str, np.ndarray]:
        size = self.pipeline.bundle.chip_size
        rows, chips, reject_rows, reasons, details = [], [], [], [], []
        for r, path in enumerate(paths, start):
            chip = chip_for(self.pipeline, path, self.multi_face)
            if isinstance(chip, Rejection):
                reject_rows.append(r)
                reasons.append(chip.reason)
                details.append(chip.detail)
            else:
                rows.append(r)
                chips.append(chip)
        return {
            "rows": np.asarray(rows, np.int64),
            "chips": np.asarray(chips, np.uint8).reshape(-1, size, size, 3),
            "reject_rows": np.asarray(reject_rows, np.int64),
            "reject_reasons": np.asarray(reasons, dtype=str),
            "reject_details": np.asarray(details, dtype=str),
        }


def prepare_chips(
    rows: list[ImageRow],
    bundle: ModelBundle,
    cache: Path,
    *,
    min_face: int = 40,
    multi_face: str = Policy.DOMINANT.value,
    workers: int = 0,
    shard_size: int = 64,
    progress: bool = True,
) -> ChipSet:
    """Chips for ``rows`` under ``cache`` (reused when inputs and config are unchanged)."""
    fp = chips_fingerprint(rows, bundle.contract_id, min_face, multi_face)
    root = cache / fp[:16]
    if (root / MANIFEST).is_file():
        return load_chips(root)
    work = root / "parts"
    info = {"contract_id": bundle.contract_id, "images": len(rows), "min_face": min_face, "multi_face": multi_face}
    open_workdir(work, fp, info, restart=False, remedy="delete it to start over")
    job = ShardJob(
        work=work,
        items=[r.path for r in rows],
        shard_size=shard_size,
        worker=WorkerSpec(ChipWorker, (str(bundle.root), min_face, multi_face)),
        workers=workers,
        desc="chips",
        progress=progress,
    )
    ranges = run_shards(job).ranges
    _merge(rows, bundle, root, work, ranges=ranges, fp=fp, min_face=min_face, multi_face=multi_face)
    shutil.rmtree(work)
    return load_chips(root)


def _merge(
    rows: list[ImageRow],
    bundle: ModelBundle,
    root: Path,
    work: Path,
    *,
    ranges: list[tuple[int, int]],
    fp: str,
    min_face: int,
    multi_face: str,
) -> None:
    kept = 0
    for s, e in ranges:
        kept += len(read_shard(work, s, e, keys=("rows",))["rows"])
    size = bundle.chip_size
    chip_rows: list[int] = []
    rejects: list[dict[str, str]] = []
    with atomic_path(root / "chips.npy") as tmp_chips:
        out = np.lib.format.open_memmap(tmp_chips, mode="w+", dtype=np.uint8, shape=(kept, size, size, 3))
        for s, e in ranges:
            shard = read_shard(work, s, e)
            k = len(shard["rows"])
            out[len(chip_rows) : len(chip_rows) + k] = shard["chips"]
            chip_rows += shard["rows"].tolist()
            for r, reason, detail in zip(
                shard["reject_rows"].tolist(),
                shard["reject_reasons"].tolist(),
                shard["reject_details"].tolist(),
                strict=True,
            ):
                rejects.append(
                    {"path": rows[r].path, "identity": rows[r].identity_id, "reason": reason, "detail": detail}
                )
        out.flush()
        del out
    index = {
        "paths": [rows[r].path for r in chip_rows],
        "identities": [rows[r].identity_id for r in chip_rows],
        "rejects": rejects,
    }
    _write_json(root / "index.json", index)
    reasons: dict[str, int] = {}
    for rej in rejects:
        reasons[rej["reason"]] = reasons.get(rej["reason"], 0) + 1
    manifest = {
        "format": CHIPS_FORMAT,
        "format_version": CHIPS_FORMAT_VERSION,
        "fingerprint": fp,
        "config": {
            "bundle_contract_id": bundle.contract_id,
            "min_face": min_face,
            "multi_face": multi_face,
            "chip_size": size,
            "chip_padding": bundle.chip_padding,
            "preprocessing_version": bundle.manifest.get("preprocessing_version"),
        },
        "images": len(rows),
        "chips": kept,
        "rejected": len(rejects),
        "reject_reasons": reasons,
        "files": {"chips.npy": sha256_file(root / "chips.npy"), "index.json": sha256_file(root / "index.json")},
    }
    _write_json(root / MANIFEST, manifest)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def load_chips(root: Path) -> ChipSet:
    manifest_path = root / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    index = json.loads((root / "index.json").read_text())
    chips = np.load(root / "chips.npy", mmap_mode="r")
    return ChipSet(
        root=root,
        chips=chips,
        paths=tuple(index["paths"]),
        identities=tuple(index["identities"]),
        rejects=tuple(index["rejects"]),
        manifest=manifest,
        manifest_sha256=sha256_file(manifest_path),
    )
