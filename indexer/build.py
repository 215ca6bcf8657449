"""``facesearch-index build``: inputs -> (embedding stage) -> store -> index -> published version.

A fresh build skips the rows of erased subjects (the root's erasure ledger) and keeps what the server
acknowledged: the live-enrolled faces of the current version and the live journal's tail after it
(:mod:`indexer.absorb`), so a rebuild brings no erased subject back and loses no live enrollment.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import ContractMismatchError, InvalidInputError
from facesearch.jobs.inputs import rows_from_manifest, rows_from_tree
from facesearch.store.erasure_ledger import read_erasures
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import REJECTS_FILE, STORE_FILE, IndexManifest
from indexer.absorb import LIVE_DIR, settle_fresh
from indexer.config import BuildConfig, EmbedOptions, InputSpec, fingerprint, to_jsonable
from indexer.embed import EmbedStats, run_stage, shard_chunks
from indexer.index_stage import IndexOutcome, run_index_stage, set_threads
from indexer.ingest import IngestStats, RejectsWriter, ingest
from indexer.open_set_stage import OpenSetSpec, resolve_spec, write_open_set
from indexer.plan import chunk_rows, plan_index
from indexer.publish import (
    first_free_vector_id,
    locked,
    next_version,
    publish,
    seal,
    staging_dir,
    write_index_files,
)
from indexer.read import EmbeddingFile, InputChunk
from indexer.sizes import cpu_seconds, peak_rss

log = logging.getLogger(f"facesearch.{__name__}")

WORK_DIR = ".work"


@dataclass(frozen=True, slots=True)
class OpenedInput:
    contract_id: str
    d: int
    total: int  # rows the ingest stage will see
    describe: str
    fingerprint: str
    chunks: Callable[[RejectsWriter, int], Iterator[InputChunk]]
    work: Path | None  # embedding-stage checkpoint, deleted once the version is published
    embed: EmbedStats | None
    embed_s: float


@dataclass(frozen=True, slots=True)
class JobResult:
    root: Path
    version_dir: Path
    manifest: IndexManifest


def open_input(
    spec: InputSpec,
    bundle_dir: Path | None,
    embed: EmbedOptions,
    root: Path,
    *,
    expected_contract: str | None,
    restart: bool,
    progress: bool,
) -> OpenedInput:
    """Open the input; for photos this runs (or resumes) the embedding stage."""
    bundle = None
    if bundle_dir is not None:
        bundle = ModelBundle.load(bundle_dir)
    if spec.kind == "embeddings":
        src = EmbeddingFile(spec.path)
        if bundle is not None and src.contract_id != bundle.contract_id:
            raise ContractMismatchError(
                f"--embeddings {spec.path} were made with model contract {src.contract_id}, but --bundle "
                f"{bundle_dir} is {bundle.contract_id}; embed them again with this bundle"
            )
        if bundle is not None and src.d != bundle.embedding_dim:
            raise InvalidInputError(f"--embeddings {spec.path} are {src.d}-d, the bundle's are {bundle.embedding_dim}")
        _check_contract(src.contract_id, expected_contract, spec)
        st = spec.path.stat()
        fp = fingerprint(str(spec.path.resolve()), st.st_size, st.st_mtime_ns, src.contract_id, src.n, src.d)
        return OpenedInput(
            src.contract_id,
            src.d,
            src.n,
            str(spec.path),
            fp,
            lambda _rejects, rows: src.chunks(rows),
            None,
            None,
            0.0,
        )
    assert bundle is not None and bundle_dir is not None
    _check_contract(bundle.contract_id, expected_contract, spec)
    rows = rows_from_tree(spec.path) if spec.kind == "images" else rows_from_manifest(spec.path)
    work = root / WORK_DIR / "embed"
    t0 = time.perf_counter()
    stats = run_stage(rows, bundle_dir, bundle.contract_id, embed, work, restart=restart, progress=progress)
    fp = fingerprint(bundle.contract_id, [(r.path, r.identity_id) for r in rows])
    return OpenedInput(
        bundle.contract_id,
        bundle.embedding_dim,
        stats.faces,
        str(spec.path),
        fp,
        lambda rejects, _rows: shard_chunks(rows, work, embed.shard_size, rejects),
        work,
        stats,
        round(time.perf_counter() - t0, 2),
    )


def _check_contract(contract: str, expected: str | None, spec: InputSpec) -> None:
    if expected is not None and contract != expected:
        raise ContractMismatchError(
            f"--{spec.kind} {spec.path}: model contract {contract}, but the index holds {expected}; an "
            "index never mixes models: rebuild with `facesearch-index build` into a new root to change "
            "the model"
        )


def version_manifest(
    *,
    version: str,
    parent: str | None,
    contract_id: str,
    d: int,
    store: IdentityStore,
    outcome: IndexOutcome,
    input_fp: str,
    config: Any,
    build: dict[str, Any],
) -> IndexManifest:
    p = outcome.plan
    index_bytes = p.index_bytes if p.kind else 0
    build = {
        **build,
        **outcome.facts,
        "peak_rss": peak_rss(),
        "cpu_s": cpu_seconds(),
        "index_bytes_estimate": index_bytes,
        "bytes_per_face_estimate": round(index_bytes / max(len(outcome.vector_ids), 1), 1),
        "plan": to_jsonable(p),
        "sweep": [
            {
                **asdict(m.params),
                "recall_at_1": round(m.recall_at_1, 5),
                "recall_at_10": round(m.recall_at_10, 5),
                "identity_agreement": round(m.identity_agreement, 5),
            }
            for m in outcome.sweep
        ],
    }
    return IndexManifest(
        version=version,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        contract_id=contract_id,
        d=d,
        ntotal=int(outcome.index.ntotal),
        n_identities=store.count_identities(),
        factory=p.factory,
        nlist=p.nlist,
        search=outcome.params,
        recall=outcome.recall,
        refine=p.refine,
        input_fingerprint=input_fp,
        parent=parent,
        build=build,
        config=to_jsonable(config),
        exact_on_disk=outcome.exact_on_disk,
    )


def ingest_stats_json(stats: IngestStats, embed: EmbedStats | None) -> dict[str, Any]:
    rejected = dict(stats.rejected)
    out: dict[str, Any] = {"input_rows": stats.rows, "accepted": stats.accepted, "erased_rows": stats.erased}
    if embed is not None:
        for reason, count in embed.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
        out.update(images=embed.images, shards=embed.shards, resumed_shards=embed.resumed_shards)
    out["rejected"] = rejected
    out["rejected_total"] = sum(rejected.values())
    return out


def finish_version(
    *,
    root: Path,
    staged: Path,
    version: str,
    store: IdentityStore,
    rejects: RejectsWriter,
    outcome: IndexOutcome,
    manifest: IndexManifest,
    keep: int,
    started: float,
    open_set: OpenSetSpec,
    budget: int,
    progress: bool,
) -> JobResult:
    """Write the index files and the open-set statistics, seal the manifest (sha256 of every file) and publish."""
    t0 = time.perf_counter()
    store.finalize()
    store.close()
    rejects.close()
    write_index_files(staged, outcome.index, outcome.vector_ids, outcome.refine_rows, outcome.codec)
    manifest.build["write_s"] = round(time.perf_counter() - t0, 2)
    # the index is on disk: let it go before the open-set statistics take their memory
    outcome.index, outcome.refine_rows, outcome.codec = None, None, None
    outcome.vector_ids = outcome.vector_ids[:0]
    facts, store_entry = write_open_set(staged, open_set, budget=budget, progress=progress)
    manifest.build["open_set"] = facts
    manifest.build["open_set_s"] = facts["seconds"]
    manifest.build["total_s"] = round(time.perf_counter() - started, 2)  # hashing and publishing excluded
    sealed = seal(staged, manifest, {STORE_FILE: store_entry})
    final = publish(root, staged, version, keep)
    return JobResult(root, final, sealed)


def run(config: BuildConfig) -> JobResult:
    """Build a new version of the index at ``config.out`` from scratch and publish it."""
    if config.input is None:
        raise InvalidInputError("build --from-store needs a PostgreSQL store (--store URL or FACESEARCH_STORE)")
    set_threads(config.threads)
    t0 = time.perf_counter()
    root = config.out
    open_set = resolve_spec(config.bundle, None)
    with locked(root):
        opened = open_input(
            config.input,
            config.bundle,
            config.embed,
            root,
            expected_contract=None,
            restart=config.restart,
            progress=config.progress,
        )
        plan_index(max(opened.total, 1), opened.d, config.memory_budget, config.index)  # fail early on memory
        version = next_version(root)
        erased = read_erasures(root)
        with staging_dir(root, version) as staged:
            store = IdentityStore.create(staged / STORE_FILE, contract_id=opened.contract_id, d=opened.d)
            store.set_meta("next_vector_id", first_free_vector_id(root))  # ids unique across the root's history
            rejects = RejectsWriter(staged / REJECTS_FILE)
            t1 = time.perf_counter()
            rows = chunk_rows(opened.d, config.memory_budget)
            stats = ingest(
                opened.chunks(rejects, rows),
                store,
                rejects,
                total=opened.total,
                progress=config.progress,
                erased=erased,
            )
            if stats.accepted == 0:
                raise InvalidInputError(f"{opened.describe}: no usable faces (see {staged / REJECTS_FILE})")
            settled = settle_fresh(store, root=root, live_dir=root / LIVE_DIR, erased=erased)
            ingest_s = round(time.perf_counter() - t1, 2)
            outcome = run_index_stage(
                store,
                budget=config.memory_budget,
                options=config.index,
                progress=config.progress,
                staged=staged,
            )
            build = {
                "embed_s": opened.embed_s,
                "ingest_s": ingest_s,
                **ingest_stats_json(stats, opened.embed),
                **settled.facts(),
            }
            manifest = version_manifest(
                version=version,
                parent=None,
                contract_id=opened.contract_id,
                d=opened.d,
                store=store,
                outcome=outcome,
                input_fp=opened.fingerprint,
                config=config,
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
