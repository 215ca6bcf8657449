"""Face chips for training, made exactly as serving makes them, cached on disk.

Inputs are an identity-folder tree (``TREE/<identity>/<photo>``) or a CSV/JSONL manifest with
``path`` and ``identity_id`` columns: the indexer's readers (:mod:`facesearch.jobs.inputs`).

Each photo goes through the base bundle's :class:`facesearch.vision.pipeline.FacePipeline`: detect
(MMOD, ``min_face``), 5-point landmarks, the 150x150 aligned chip (dlib's ``get_face_chip``).
A photo must show exactly one face. Rejects, with reasons (the indexer's vocabulary):
``MISSING_FILE``, ``UNDECODABLE`` (the decoder's reason in the detail), ``TOO_LARGE``,
``NO_FACE``, ``MULTIPLE_FACES`` (the indexer's policy: ``multi_face="reject"`` by default;
``"largest"`` keeps the largest face instead), ``ERROR``.

Cache: ``CACHE/<fingerprint[:16]>/`` where the fingerprint covers the bundle contract id,
``min_face``, ``multi_face`` and every input (path, identity, size, mtime). Work goes in
shards of ``shard_size`` photos (``shard-<start>-<end>.npz``, temp file + ``os.replace``), so a
killed preparation resumes; when all are done they are merged into ``chips.npy`` (uint8
``(n, 150, 150, 3)``, read back memory-mapped), ``index.json`` (per chip: path, identity;
rejects) and ``manifest.json`` (config, counts, sha256 of both), whose own sha256 names the
chip set in checkpoints. A rerun with unchanged inputs and config reuses it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from facesearch.bundle.manifest import ModelBundle, sha256_file
from facesearch.errors import FaceSearchError, ImageDecodeError, ImageTooLargeError, InvalidInputError
from facesearch.jobs.inputs import ImageRow, rows_from_manifest, rows_from_tree
from facesearch.vision.decode import load_image
from facesearch.vision.pipeline import FacePipeline, PipelineConfig

CHIPS_FORMAT = "facesearch-train-chips"
CHIPS_FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def read_rows(data: Path) -> list[ImageRow]:
    """(path, identity) rows of ``--data``: a folder tree or a .csv/.tsv/.jsonl manifest."""
    if data.is_dir():
        return rows_from_tree(data)
    if data.is_file():
        return rows_from_manifest(data)
    raise InvalidInputError(f"--data {data}: no such folder or manifest file", reason="BAD_DATA")


@dataclass(frozen=True, slots=True)
class ChipSet:
    root: Path
    chips: np.ndarray  # (n, 150, 150, 3) uint8, memory-mapped
    paths: tuple[str, ...]
    identities: tuple[str, ...]
    rejects: tuple[dict[str, str], ...]
    manifest: dict[str, Any]
    manifest_sha256: str


def _fingerprint(rows: list[ImageRow], contract: str, min_face: int, multi_face: str) -> str:
    digest = hashlib.sha256(json.dumps([CHIPS_FORMAT_VERSION, contract, min_face, multi_face]).encode())
    for row in rows:
        try:
            st = os.stat(row.path)
            stamp = [st.st_size, st.st_mtime_ns]
        except OSError:
            stamp = [-1, -1]
        digest.update(json.dumps([row.path, row.identity_id, *stamp]).encode())
    return digest.hexdigest()


# -- one shard, in a worker process ---------------------------------------------------------------
_worker: FacePipeline | None = None


def _init_worker(bundle_root: str, min_face: int, threads: int) -> None:
    global _worker  # noqa: PLW0603 - one pipeline per worker process
    _worker = FacePipeline(
        ModelBundle.load(bundle_root, verify=False), PipelineConfig(min_face=min_face, threads=threads)
    )


def chip_for(pipe: FacePipeline, path: str, multi_face: str) -> tuple[np.ndarray | None, str, str]:
    """``(chip, "", "")`` for a usable photo, else ``(None, REASON, detail)``."""
    if not Path(path).is_file():
        return None, "MISSING_FILE", path
    try:
        image = load_image(path)
        boxes = [d.box for d in pipe.detect(image)]
    except ImageDecodeError as err:
        return None, "UNDECODABLE", f"{err.reason}: {err}"
    except ImageTooLargeError as err:
        return None, "TOO_LARGE", str(err)
    except FaceSearchError as err:
        return None, err.reason, str(err)
    except Exception as err:  # one bad photo must not kill the job
        return None, "ERROR", f"{type(err).__name__}: {err}"
    if not boxes:
        return None, "NO_FACE", ""
    if len(boxes) > 1 and multi_face == "reject":
        return None, "MULTIPLE_FACES", f"{len(boxes)} faces"
    box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    _, chips = pipe.align(image, [box])
    return chips[0], "", ""


def _chip_shard(task: tuple[int, list[str], str, str]) -> int:
    start, paths, multi_face, shard_path = task
    assert _worker is not None
    size = _worker.bundle.chip_size
    rows, chips, reject_rows, reasons, details = [], [], [], [], []
    for i, path in enumerate(paths):
        chip, reason, detail = chip_for(_worker, path, multi_face)
        if chip is None:
            reject_rows.append(start + i)
            reasons.append(reason)
            details.append(detail)
        else:
            rows.append(start + i)
            chips.append(chip)
    tmp = shard_path + ".tmp.npz"
    np.savez(
        tmp,
        rows=np.asarray(rows, np.int64),
        chips=np.asarray(chips, np.uint8).reshape(-1, size, size, 3),
        reject_rows=np.asarray(reject_rows, np.int64),
        reasons=np.asarray(reasons, dtype=str),
        details=np.asarray(details, dtype=str),
    )
    os.replace(tmp, shard_path)
    return len(paths)


def _run(bundle: Path, min_face: int, workers: int, tasks: list[tuple[int, list[str], str, str]]) -> Iterator[int]:
    workers = max(1, min(workers or (os.cpu_count() or 1), len(tasks)))
    if workers == 1:
        _init_worker(str(bundle), min_face, 1)
        yield from map(_chip_shard, tasks)
        return
    ctx = mp.get_context("spawn")  # onnxruntime sessions must not be shared across fork
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(bundle), min_face, 1)) as pool:
        yield from pool.imap_unordered(_chip_shard, tasks)


def _shard_path(work: Path, start: int, end: int) -> Path:
    return work / f"shard-{start:09d}-{end:09d}.npz"


def prepare_chips(
    rows: list[ImageRow],
    bundle: ModelBundle,
    cache: Path,
    *,
    min_face: int = 40,
    multi_face: str = "reject",
    workers: int = 0,
    shard_size: int = 64,
    progress: bool = True,
) -> ChipSet:
    """Chips for ``rows`` under ``cache`` (reused when inputs and config are unchanged)."""
    fp = _fingerprint(rows, bundle.contract_id, min_face, multi_face)
    root = cache / fp[:16]
    if (root / MANIFEST).is_file():
        return load_chips(root)
    work = root / "parts"
    work.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    ranges = [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    pending = [(s, e) for s, e in ranges if not _shard_path(work, s, e).exists()]
    tasks = [(s, [r.path for r in rows[s:e]], multi_face, str(_shard_path(work, s, e))) for s, e in pending]
    done = n - sum(e - s for s, e in pending)
    with tqdm(total=n, initial=done, unit="img", desc="chips", disable=not progress, dynamic_ncols=True) as bar:
        for count in _run(bundle.root, min_face, workers, tasks) if tasks else iter(()):
            bar.update(count)
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
        with np.load(_shard_path(work, s, e)) as shard:
            kept += len(shard["rows"])
    size = bundle.chip_size
    tmp_chips = root / "chips.tmp.npy"
    out = np.lib.format.open_memmap(tmp_chips, mode="w+", dtype=np.uint8, shape=(kept, size, size, 3))
    chip_rows: list[int] = []
    rejects: list[dict[str, str]] = []
    for s, e in ranges:
        with np.load(_shard_path(work, s, e)) as shard:
            k = len(shard["rows"])
            out[len(chip_rows) : len(chip_rows) + k] = shard["chips"]
            chip_rows += shard["rows"].tolist()
            for r, reason, detail in zip(
                shard["reject_rows"].tolist(), shard["reasons"].tolist(), shard["details"].tolist(), strict=True
            ):
                rejects.append(
                    {"path": rows[r].path, "identity": rows[r].identity_id, "reason": reason, "detail": detail}
                )
    out.flush()
    del out
    os.replace(tmp_chips, root / "chips.npy")
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


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
