"""The open-set statistics of a staged version: ``open_set.npz``, written before it is published.

Every job that publishes a version (build, add, remove, compact) computes the gallery's
templates and cohort (:mod:`facesearch.scoring.gallery_stats`) from the staged identity store and
saves them beside it, recording the store's sha256 inside; :func:`indexer.publish.seal` lists
the file in the manifest with its own sha256, so ``facesearch-index verify`` checks it. The
server loads it with the version instead of computing it (it still computes it for versions
made before this file existed, or made with another ``k``/template rule).

Parameters (``k``, template rule, buffer depth), first match wins: the bundle's open-set
calibration (``--bundle``), the parent version's ``open_set.npz``, the defaults.

Memory: the stage runs after the index files are written and the job has dropped its index;
it needs the templates and cohort resident (:func:`open_set_build_bytes`) and keeps the faces
in memory only if the rest of ``--memory-budget`` holds them (else in a scratch file in the
staging folder, deleted before sealing).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facesearch.errors import MemoryBudgetError
from facesearch.scoring.cohort import GalleryCohort
from facesearch.scoring.gallery_stats import (
    OPEN_SET_FILE,
    open_set_params,
    saved_params,
)
from facesearch.scoring.normalise import DEFAULT_K
from facesearch.scoring.templates import DEFAULT_TEMPLATE
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, FileEntry
from facesearch.store.open_set_build import build_open_set_for_store, open_set_build_bytes
from facesearch.util.fs import sha256_file
from indexer.plan import BASELINE_BYTES
from indexer.sizes import format_size

log = logging.getLogger(f"facesearch.{__name__}")

SCRATCH_DIR = ".open-set-scratch"


@dataclass(frozen=True, slots=True)
class OpenSetSpec:
    """How the version's open-set statistics are made, and where those parameters came from."""

    k: int = DEFAULT_K
    rule: str = DEFAULT_TEMPLATE
    depth: int | None = None  # None: k + slack (GalleryCohort's default)
    origin: str = "default"  # bundle | parent | default


def resolve_spec(bundle: Path | None, parent_dir: Path | None) -> OpenSetSpec:
    """The bundle's calibration parameters, else the parent version's, else the defaults."""
    if bundle is not None:
        k, rule = open_set_params(bundle)
        return OpenSetSpec(k, rule, None, "bundle")
    if parent_dir is not None and (parent_dir / OPEN_SET_FILE).is_file():
        k, rule, depth = saved_params(parent_dir / OPEN_SET_FILE)
        return OpenSetSpec(k, rule, depth, "parent")
    return OpenSetSpec()


def write_open_set(staged: Path, spec: OpenSetSpec, *, budget: int, progress: bool) -> tuple[dict[str, Any], FileEntry]:
    """Compute and save ``staged/open_set.npz``; returns its facts for the manifest and the
    store's file entry (hashed here once, so sealing need not hash it again)."""
    t0 = time.perf_counter()
    store_path = staged / STORE_FILE
    with IdentityStore.open(store_path, readonly=True) as store:
        n, n_ids, d = store.count_faces(), store.count_identities(), store.d
    depth = spec.depth if spec.depth is not None else GalleryCohort(spec.k).depth
    need = BASELINE_BYTES + open_set_build_bytes(n, n_ids, d, depth)
    if need > budget:
        raise MemoryBudgetError(
            f"the open-set statistics of {n_ids:,} identities ({n:,} faces) need about {format_size(need)}, "
            f"more than --memory-budget {format_size(budget)}; raise --memory-budget to at least "
            f"{format_size(need)}"
        )
    store_entry = FileEntry(sha256=sha256_file(store_path), bytes=store_path.stat().st_size)
    scratch = staged / SCRATCH_DIR
    scratch.mkdir(exist_ok=True)
    try:
        data = build_open_set_for_store(
            store_path,
            k=spec.k,
            rule=spec.rule,
            depth=spec.depth,
            resident_bytes=budget - need,
            scratch_dir=scratch,
            progress=progress,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    data.store_sha256 = store_entry.sha256
    data.save(staged / OPEN_SET_FILE)
    facts = {
        "k": data.k,
        "rule": data.rule,
        "depth": data.depth,
        "params_from": spec.origin,
        "identities": len(data),
        "faces": n,
        "faces_resident": n * d * 4 <= budget - need,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info(
        "open-set statistics: %d identities, k=%d, rule %s (from the %s) in %.1fs",
        len(data),
        data.k,
        data.rule,
        spec.origin,
        facts["seconds"],
    )
    return facts, store_entry
