"""``facesearch-index compact ROOT``: publish a version that contains the server's live changes.

Run while the server is up (e.g. nightly). The job reads a consistent snapshot of the live
journal (``ROOT/live``: every change up to sequence number N), applies it to a copy of the
current version's identity store (deleted identities and faces removed, names and metadata
updated, live faces added with the vector ids the server gave them, so face ids stay
valid), updates the trained index incrementally (or retrains when the gallery outgrew it,
as ``add`` does), and publishes the result with ``live_seq = N`` (and the journal's id) in
the store's meta. The server swaps to it and drops exactly the changes with seq <= N;
changes that arrived during the compaction have seq > N and stay in its live delta (and it
keeps the older ones as long as a kept version lacks them: ``facesearch.store.journal_retention``).
Erased subjects (the root's erasure ledger) are purged from the new version as well
(:mod:`indexer.absorb`).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import ContractMismatchError, PreconditionError, Reason
from facesearch.store.erasure_ledger import ErasureSet, purge_store, read_erasures
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import (
    REJECTS_FILE,
    STORE_FILE,
    LoadedIndex,
    current_version,
    load_index,
    resolve_version_dir,
)
from facesearch.store.journal_retention import Absorbed
from facesearch.store.live_journal import JournalSnapshot, LiveJournal, journal_place
from facesearch.store.store_location import store_location
from facesearch.util import failpoints
from indexer.absorb import LIVE_DIR, Settled, apply_snapshot, settle
from indexer.build import JobResult, finish_version, version_manifest
from indexer.config import fingerprint
from indexer.index_stage import run_index_stage, set_threads
from indexer.ingest import RejectsWriter
from indexer.open_set_stage import resolve_spec
from indexer.plan import IndexOptions
from indexer.publish import locked, next_version, staging_dir
from indexer.update import DRIFT_LIMIT, retrain_reason

log = logging.getLogger(f"facesearch.{__name__}")


@dataclass(frozen=True, slots=True)
class CompactConfig:
    root: Path
    live_dir: Path | None = None  # default ROOT/live
    memory_budget: int = 2 << 30
    keep_versions: int = 3
    threads: int = 0
    progress: bool = False
    index: IndexOptions = field(default_factory=IndexOptions)
    bundle: Path | None = None  # only for the open-set parameters (default: the parent version's)
    retrain: bool = False  # train the index anew even when the current one still fits (add --retrain)


@dataclass(frozen=True, slots=True)
class CompactResult:
    job: JobResult | None  # None: nothing to compact (no version published)
    live_seq: int  # the journal sequence number the version contains
    added_faces: int
    removed_faces: int
    deleted_identities: int


def compact(
    root: Path,
    *,
    live_dir: Path | None = None,
    memory_budget: int = 2 << 30,
    keep_versions: int = 3,
    threads: int = 0,
    progress: bool = False,
    bundle: Path | None = None,
) -> CompactResult:
    """Publish ``root``'s current version plus its live changes as a new version."""
    return run(CompactConfig(root, live_dir, memory_budget, keep_versions, threads, progress, bundle=bundle))


def run(config: CompactConfig) -> CompactResult:
    location = store_location()  # G: FACESEARCH_STORE=postgresql://...: absorb the shared store's log instead
    if location.shared and location.url:
        from indexer.store_compact import run_from_store  # noqa: PLC0415 - imports the PostgreSQL driver

        return run_from_store(config, location.url)
    set_threads(config.threads)
    t0 = time.perf_counter()
    root = config.root
    live_dir = config.live_dir or root / LIVE_DIR
    with locked(root):
        base = load_index(resolve_version_dir(root)) if current_version(root) else None
        # The journal of the published model: after a model change each contract has its own.
        directory = journal_place(live_dir, base.manifest.contract_id).directory if base is not None else live_dir
        journal = LiveJournal.open_reader(directory)
        try:
            if base is not None and base.manifest.contract_id != journal.contract_id:
                raise ContractMismatchError(
                    f"the live journal holds model contract {journal.contract_id}, the index "
                    f"{base.manifest.version} {base.manifest.contract_id}; they cannot be merged"
                )
            done = absorbed_seq(base, journal.journal_id)
            snap = journal.snapshot(after_seq=done)
            failpoints.hit("compact.snapshot")
            if snap.high_water <= done:
                log.info("nothing to compact: the current version holds the journal up to seq %d", done)
                return CompactResult(None, done, 0, 0, 0)
            return publish_compacted(config, base, snap, contract_id=journal.contract_id, d=journal.d, t0=t0)
        finally:
            journal.close()


def absorbed_seq(base: LoadedIndex | None, journal_id: str) -> int:
    if base is None:
        return 0
    with IdentityStore.open(base.dir / STORE_FILE, readonly=True) as store:
        return Absorbed.of(store).position_in(journal_id)


def publish_compacted(
    config: CompactConfig,
    base: LoadedIndex | None,
    snap: JournalSnapshot,
    *,
    contract_id: str,
    d: int,
    t0: float,
    store_erased: ErasureSet | None = None,
    facts: dict[str, Any] | None = None,
    rejects_from: Path | None = None,
) -> CompactResult:
    """Apply ``snap`` to a copy of ``base`` (or to nothing: a version of the snapshot alone, trained
    anew) and publish it. ``store_erased``: a shared store's erasure ledger, purged besides the root's;
    ``facts``: more entries for the manifest's ``build``; ``rejects_from``: the input rows a build skipped
    (``rejects.jsonl``), kept in the version."""
    root = config.root
    open_set = resolve_spec(config.bundle, base.dir if base is not None else None)
    version = next_version(root)
    with staging_dir(root, version) as staged:
        store_path = staged / STORE_FILE
        if base is not None:
            shutil.copyfile(base.dir / STORE_FILE, store_path)
            store = IdentityStore.open(store_path, readonly=False)
        else:
            store = IdentityStore.create(store_path, contract_id=contract_id, d=d)
        deleted = apply_snapshot(store, snap)
        # the store's ledger first: settle records the root ledger's position, the one a server's load reads
        store_hits = purge_store(store, store_erased) if store_erased else None
        settled: Settled = settle(store, read_erasures(root))
        n_total = store.count_faces()
        if n_total == 0:
            raise PreconditionError(
                "compaction would publish an empty index (every face was deleted); "
                "the server serves an empty gallery without one",
                reason=Reason.EMPTY_INDEX,
            )
        vids_now, _ = store.vector_identity_keys()
        options = _options_of(base) if base is not None else config.index
        budget = config.memory_budget
        reason = retrain_reason(base, n_total, budget, options, config.retrain) if base else "first version"
        removed = np.setdiff1d(base.vector_ids, vids_now) if base is not None else np.zeros(0, np.int64)
        added = np.setdiff1d(vids_now, base.vector_ids) if base is not None else vids_now
        if reason is None:
            assert base is not None
            add_from = int(added.min()) if len(added) else int(np.iinfo(np.int64).max)
            if len(added) and np.isin(vids_now[vids_now >= add_from], base.vector_ids).any():
                reason = "live vector ids interleave with the version's"
            else:
                outcome = run_index_stage(
                    store,
                    budget=config.memory_budget,
                    options=options,
                    progress=config.progress,
                    base=base,
                    add_from=add_from,
                    remove_ids=removed,
                )
                trained, new = (
                    base.manifest.build.get("train_distortion"),
                    outcome.facts.get("new_distortion"),
                )
                if trained and new and new > DRIFT_LIMIT * trained:
                    reason = f"new faces sit {new / trained:.2f}x farther from the coarse centroids"
        if reason is not None:
            log.info("compact: training a new index (%s)", reason)
            outcome = run_index_stage(store, budget=config.memory_budget, options=options, progress=config.progress)
        build: dict[str, Any] = {
            **settled.facts(),
            "added_faces": len(added),
            "removed_faces": len(removed),
            "deleted_identities": deleted,
            "retrained": reason,
            **({"store_erased_faces_purged": len(store_hits.face_ids)} if store_hits is not None else {}),
            **(facts or {}),
        }
        parent = base.manifest.version if base is not None else None
        fp = fingerprint("compact", parent, snap.journal_id, snap.high_water)
        manifest = version_manifest(
            version=version,
            parent=parent,
            contract_id=contract_id,
            d=d,
            store=store,
            outcome=outcome,
            input_fp=fp,
            config=config,
            build=build,
        )
        if rejects_from is not None and rejects_from.is_file():
            shutil.copyfile(rejects_from, staged / REJECTS_FILE)
        rejects = RejectsWriter(staged / REJECTS_FILE)
        job = finish_version(
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
    log.info(
        "compact: published %s with the live changes up to seq %d (+%d faces, -%d faces)",
        version,
        snap.high_water,
        len(added),
        len(removed),
    )
    return CompactResult(job, snap.high_water, len(added), len(removed), deleted)


def _options_of(base: LoadedIndex) -> IndexOptions:
    raw = base.manifest.config.get("index") or {}
    return IndexOptions(**{k: v for k, v in raw.items() if k in IndexOptions.__dataclass_fields__})
