"""``facesearch-index add|remove``: a new version derived from the current one.

add: new faces (and identities) go into a copy of the current store and are added to the
current trained index, without retraining while the data still fits it. It does not fit
(and the job rebuilds from the store, training anew) when the gallery outgrew exact search,
when it grew past what the trained ``nlist`` was sized for (4x), when the new faces sit
farther from the coarse centroids than the training data did (1.5x), or on ``--retrain``.

remove: identities are deleted from a copy of the store (faces, chips) and their vectors are
removed from the index; the published version holds neither (the store is VACUUMed, the
index and re-ranking store are rewritten without them). A removal is an erasure: it is recorded
in the root's erasure ledger first, so no later build, add or compaction brings the identity back
(``facesearch-index unerase`` lifts it).

Both skip or purge what the erasure ledger holds (:mod:`indexer.absorb`): rows of erased subjects
are not added, and erased identities and faces the current version still holds are removed from the
new one.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from facesearch.errors import NotFoundError
from facesearch.store.audit_log import AuditLog, AuditOp
from facesearch.store.erasure_ledger import ErasedFace, ErasureKind, ErasureLedger, os_principal, read_erasures
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import REJECTS_FILE, STORE_FILE, LoadedIndex, load_index, resolve_version_dir
from indexer.absorb import settle
from indexer.build import (
    JobResult,
    finish_version,
    ingest_stats_json,
    open_input,
    version_manifest,
)
from indexer.config import AddConfig, RemoveConfig, to_jsonable
from indexer.index_stage import IndexOutcome, run_index_stage, set_threads
from indexer.ingest import RejectsWriter, ingest
from indexer.open_set_stage import resolve_spec
from indexer.plan import IndexOptions, choose_nlist, chunk_rows, plan_index
from indexer.publish import locked, next_version, staging_dir

log = logging.getLogger(f"facesearch.{__name__}")

GROWTH_LIMIT = 4
DRIFT_LIMIT = 1.5


def retrain_reason(base: LoadedIndex, n_total: int, budget: int, options: IndexOptions, retrain: bool) -> str | None:
    """Why the current trained index no longer fits ``n_total`` faces (None: it still fits)."""
    if retrain:
        return "--retrain"
    m = base.manifest
    wanted = plan_index(n_total, m.d, budget, options)
    if m.nlist == 0:
        return None if wanted.kind == "flat" else f"{n_total:,} faces outgrew exact search (flat_max)"
    if choose_nlist(n_total) >= GROWTH_LIMIT * m.nlist:
        return f"{n_total:,} faces want nlist {choose_nlist(n_total)}, the index was trained with {m.nlist}"
    return None


def run_add(config: AddConfig) -> JobResult:
    set_threads(config.threads)
    t0 = time.perf_counter()
    root = config.root
    with locked(root):
        base_dir = resolve_version_dir(root)
        base = load_index(base_dir)
        open_set = resolve_spec(config.bundle, base_dir)
        options = config.index if config.index != IndexOptions() else _options_of(base)
        opened = open_input(
            config.input,
            config.bundle,
            config.embed,
            root,
            expected_contract=base.manifest.contract_id,
            restart=config.restart,
            progress=config.progress,
        )
        version = next_version(root)
        erased = read_erasures(root)
        with staging_dir(root, version) as staged:
            shutil.copyfile(base_dir / STORE_FILE, staged / STORE_FILE)
            store = IdentityStore.open(staged / STORE_FILE, readonly=False)
            store.check_contract(opened.contract_id)
            first_new = int(store.meta("next_vector_id"))
            rejects = RejectsWriter(staged / REJECTS_FILE)
            t1 = time.perf_counter()
            stats = ingest(
                opened.chunks(rejects, chunk_rows(opened.d, config.memory_budget)),
                store,
                rejects,
                total=opened.total,
                progress=config.progress,
                erased=erased,
            )
            store.commit()
            settled = settle(store, erased)
            ingest_s = round(time.perf_counter() - t1, 2)
            n_total = store.count_faces()
            reason = retrain_reason(base, n_total, config.memory_budget, options, config.retrain)
            if reason is None:
                outcome = run_index_stage(
                    store,
                    budget=config.memory_budget,
                    options=options,
                    progress=config.progress,
                    base=base,
                    add_from=first_new,
                    remove_ids=_readded(base, first_new, settled.purged.face_ids),
                    staged=staged,
                )
                reason = _drift(base, outcome)
            if reason is not None:
                log.info("retraining: %s", reason)
                outcome = run_index_stage(
                    store,
                    budget=config.memory_budget,
                    options=options,
                    progress=config.progress,
                    staged=staged,
                )
            build = {
                "embed_s": opened.embed_s,
                "ingest_s": ingest_s,
                "retrained": reason,
                **ingest_stats_json(stats, opened.embed),
                **settled.facts(),
            }
            manifest = version_manifest(
                version=version,
                parent=base.manifest.version,
                contract_id=opened.contract_id,
                d=opened.d,
                store=store,
                outcome=outcome,
                input_fp=opened.fingerprint,
                config=replace(config, index=options),
                build=build,
            )
            result = finish_version(
                root=root,
                staged=staged,
                version=version,
                store=store,
                rejects=rejects,
                outcome=outcome,
                manifest=manifest,
                keep=config.keep_versions,
                started=t0,
                open_set=open_set,
                budget=config.memory_budget,
                progress=config.progress,
            )
        if opened.work is not None:
            shutil.rmtree(opened.work, ignore_errors=True)
    return result


def _drift(base: LoadedIndex, outcome: IndexOutcome) -> str | None:
    trained = base.manifest.build.get("train_distortion")
    new = outcome.facts.get("new_distortion")
    if trained and new and new > DRIFT_LIMIT * trained:
        return f"new faces sit {new / trained:.2f}x farther from the coarse centroids than the training data"
    return None


def run_remove(config: RemoveConfig) -> JobResult:
    set_threads(config.threads)
    t0 = time.perf_counter()
    root = config.root
    with locked(root):
        base_dir = resolve_version_dir(root)
        base = load_index(base_dir)
        open_set = resolve_spec(config.bundle, base_dir)
        version = next_version(root)
        with staging_dir(root, version) as staged:
            shutil.copyfile(base_dir / STORE_FILE, staged / STORE_FILE)
            store = IdentityStore.open(staged / STORE_FILE, readonly=False)
            present = store.existing_identities(config.identities)
            missing = sorted(set(config.identities) - present)
            if not present:
                raise NotFoundError(f"none of the identities to remove are in {base_dir}: {missing[:10]}")
            if store.count_faces() == len(store.faces_of_identities(sorted(present))):
                raise NotFoundError("removing these identities would leave an empty index; build a new one instead")
            _record_removals(root, store, sorted(present))
            before, _ = store.vector_identity_keys()
            settled = settle(store, read_erasures(root))
            after, _ = store.vector_identity_keys()
            removed = np.setdiff1d(before, after)
            rejects = RejectsWriter(staged / REJECTS_FILE)
            if store.count_faces() == 0:
                raise NotFoundError("removing these identities would leave an empty index; build a new one instead")
            options = _options_of(base)
            outcome = run_index_stage(
                store,
                budget=config.memory_budget,
                options=options,
                progress=config.progress,
                base=base,
                add_from=np.iinfo(np.int64).max,
                remove_ids=removed,
                staged=staged,
            )
            build = {
                "removed_identity_count": len(present),  # never the ids: they are erased (ledger)
                "not_found": missing,
                "removed_faces": len(removed),
                **settled.facts(),
            }
            manifest = version_manifest(
                version=version,
                parent=base.manifest.version,
                contract_id=base.manifest.contract_id,
                d=base.manifest.d,
                store=store,
                outcome=outcome,
                input_fp=base.manifest.input_fingerprint,
                config={**to_jsonable(config), "identities": len(config.identities), "index": to_jsonable(options)},
                build=build,
            )
            result = finish_version(
                root=root,
                staged=staged,
                version=version,
                store=store,
                rejects=rejects,
                outcome=outcome,
                manifest=manifest,
                keep=config.keep_versions,
                started=t0,
                open_set=open_set,
                budget=config.memory_budget,
                progress=config.progress,
            )
    return result


def _readded(base: LoadedIndex, first_new: int, purged: np.ndarray) -> np.ndarray | None:
    """Vector ids to remove from ``base``'s index before the faces with id >= ``first_new`` are added:
    the purged ones, and faces of ``base`` already at or above it (live-enrolled faces a compaction or
    a fresh build absorbed: their ids are far above the indexer's), which are added again once."""
    again = base.vector_ids[base.vector_ids >= first_new]
    ids = np.union1d(purged, again)
    return ids if len(ids) else None


def _record_removals(root: Path, store: IdentityStore, identity_ids: list[str]) -> None:
    """Record each identity to remove, with its faces, in the root's erasure ledger (durable first)."""
    faces = store.faces_of_identities(identity_ids)
    with ErasureLedger.open(root) as ledger, AuditLog.open(root, ledger.digester) as audit:
        for identity_id in identity_ids:
            mine = [ErasedFace(f.vector_id, f.source) for f in faces if f.identity_id == identity_id]
            ledger.record(
                ErasureKind.IDENTITY, identity_id, mine, via="facesearch-index remove", principal=os_principal()
            )
            audit.record(  # the audit log keeps the erasure, and only the id's digest from now on
                AuditOp.ERASE,
                identity_id,
                principal=os_principal(),
                faces=len(mine),
                via="facesearch-index remove",
                erased=True,
            )


def _options_of(base: LoadedIndex) -> IndexOptions:
    """The index options of the build that made ``base`` (targets, queries, seed)."""
    raw = base.manifest.config.get("index") or {}
    known = {k: v for k, v in raw.items() if k in IndexOptions.__dataclass_fields__}
    return IndexOptions(**known)
