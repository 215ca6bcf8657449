"""``facesearch-index build|add`` with a PostgreSQL store (``--store URL`` or ``FACESEARCH_STORE``).

The store is the truth: a version serves only what the store holds, and records the log position it
absorbed (``live_journal_id`` = the store's id, ``live_seq`` = the high water of the snapshot it was
made from), so every replica hot-swaps to it and drops exactly that part of its in-memory tail.

* ``build --images|--manifest|--embeddings`` (1) runs the embedding stage as without a store
  (resumable: ``ROOT/.work/embed``), (2) ingests the rows into a scratch identity store
  (``ROOT/.work/import``: validation, rejects, rows of subjects erased in the store's ledger or the
  root's skipped), (3) writes them to the store in batches of :data:`IMPORT_BATCH` faces
  (:func:`facesearch.store.postgres.imports.import_faces`: durable enrollments in the change log, one
  transaction a batch; a face the identity already holds is skipped, so a rerun after an interruption
  writes only the rest and a rebuild from the same photos adds no copies), then (4) trains a new index
  over *everything* the store holds (its faces, whoever enrolled them) and publishes it, as
  ``build --from-store`` does. A build adds to the store; it never deletes (faces in the store and not
  in the input stay: delete them through a replica's ``DeleteIdentity``/``DeleteFaces``).
* ``build --from-store``: step (4) alone: the index retrained over the store's contents (e.g. after
  many deletions, or to change index options). ``compact`` stays the incremental job (the current
  version plus the log after it); both publish through :func:`indexer.compact.publish_compacted`.
* ``add ROOT --images|...``: steps (1)-(3), then a store compaction (:mod:`indexer.store_compact`):
  the current version plus the log after it, the index updated incrementally (``--retrain``, or a
  gallery that outgrew it, trains anew).

Erasures: rows of erased subjects are never imported (checked again inside each batch's transaction),
and every version purges what the store's ledger and the root's ledger erased.

``remove ROOT --identity ID ...`` (:func:`run_remove`): each identity is deleted through the store, as a
replica's ``DeleteIdentity`` does (the erasure in the store's ledger, the log entry, the tombstones of
its faces in the store and in the current version, the audit entry: one transaction each; replicas
apply it within milliseconds), then a store compaction publishes a version without them.

Refused (exit 2): ``--keep-chips`` (the store holds no photo pixels) and ``compact --live-dir`` (the
store has no journal directory).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from facesearch.errors import InvalidInputError, NotFoundError, PreconditionError, Reason
from facesearch.store.erasure_ledger import ErasedFace, os_principal, purge_store, read_erasures
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, current_version, load_index, resolve_version_dir
from facesearch.store.live_journal import NewFace
from facesearch.store.postgres import PgStore
from facesearch.store.postgres.admin import store_status
from facesearch.store.postgres.imports import Imported, ImportFace, import_faces
from facesearch.store.postgres.retention import prune_store
from facesearch.store.store_marker import mark_store_root
from indexer.build import WORK_DIR, OpenedInput, ingest_stats_json, open_input
from indexer.compact import CompactConfig, CompactResult, publish_compacted
from indexer.config import AddConfig, BuildConfig, InputSpec, RemoveConfig
from indexer.index_stage import set_threads
from indexer.ingest import IngestStats, RejectsWriter, ingest
from indexer.plan import chunk_rows, plan_index
from indexer.publish import locked
from indexer.store_flag import refuse_with_store

__all__ = ["IMPORT_BATCH", "Removed", "StoreJob", "copy_into", "run_add", "run_build", "run_remove"]

log = logging.getLogger(f"facesearch.{__name__}")

#: Faces written to the store per transaction (the store's append lock is held for one batch).
IMPORT_BATCH = 1000
IMPORT_DIR = "import"


@dataclass(frozen=True, slots=True)
class StoreJob:
    """What a build or add with the store did: the compaction's result and the import's counts."""

    result: CompactResult
    imported: Imported | None  # None: build --from-store


def _compact_config(root: Path, config: BuildConfig | AddConfig, *, retrain: bool = False) -> CompactConfig:
    return CompactConfig(
        root,
        memory_budget=config.memory_budget,
        keep_versions=config.keep_versions,
        threads=config.threads,
        progress=config.progress,
        index=config.index,
        bundle=config.bundle,
        retrain=retrain,
    )


def run_build(config: BuildConfig, url: str) -> StoreJob:
    """Import ``config.input`` into the store (none: ``--from-store``), then publish a version of
    everything the store holds, trained anew."""
    if config.embed.keep_chips:
        refuse_with_store("--keep-chips", "the store holds embeddings, never photo pixels")
    set_threads(config.threads)
    t0 = time.perf_counter()
    root = config.out
    with locked(root):
        done = _import(root, config.input, config, url, expected_contract=None) if config.input is not None else None
        status = store_status(url)
        if status.contract_id is None or status.d is None:
            raise PreconditionError(
                f"the store {status.store} holds nothing yet: build from --images, --manifest or --embeddings",
                reason=Reason.EMPTY_INDEX,
            )
        with PgStore.open(url, contract_id=status.contract_id, d=status.d) as store:
            mark_store_root(root, store.store_id)  # before the version: see facesearch.store.store_marker
            snap = store.snapshot()
            erased = store.erased()
        result = publish_compacted(
            _compact_config(root, config),
            None,
            snap,
            contract_id=status.contract_id,
            d=status.d,
            t0=t0,
            store_erased=erased,
            facts=done.facts() if done is not None else {},
            rejects_from=done.rejects if done is not None else None,
        )
        with PgStore.open(url, contract_id=status.contract_id, d=status.d) as store:
            log.info("%s", prune_store(store, root).describe())
        _cleanup(root, done)
    return StoreJob(result, done.imported if done is not None else None)


def run_add(config: AddConfig, url: str) -> StoreJob:
    """Import ``config.input`` into the store, then compact: the current version plus the log after it."""
    if config.embed.keep_chips:
        refuse_with_store("--keep-chips", "the store holds embeddings, never photo pixels")
    set_threads(config.threads)
    t0 = time.perf_counter()
    root = config.root
    with locked(root):
        base = load_index(resolve_version_dir(root)) if current_version(root) else None
        expected = base.manifest.contract_id if base is not None else None
        done = _import(root, config.input, config, url, expected_contract=expected)
        from indexer.store_compact import compact_locked  # noqa: PLC0415 - a cycle otherwise (it imports this)

        result = compact_locked(
            _compact_config(root, config, retrain=config.retrain),
            url,
            t0=t0,
            facts=done.facts(),
            rejects_from=done.rejects,
            always=config.retrain,
        )
        _cleanup(root, done)
    return StoreJob(result, done.imported)


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What the input stage of a build or add with the store did."""

    opened: OpenedInput
    ingest: IngestStats
    imported: Imported
    rejects: Path  # the skipped input rows, copied into the version
    import_s: float

    def facts(self) -> dict[str, object]:
        """The manifest's ``build`` entries (as a build without the store writes, plus the import's)."""
        return {
            "embed_s": self.opened.embed_s,
            "ingest_s": self.import_s,
            **ingest_stats_json(self.ingest, self.opened.embed),
            **self.imported.facts(),
        }


def _import(
    root: Path,
    spec: InputSpec,
    config: BuildConfig | AddConfig,
    url: str,
    *,
    expected_contract: str | None,
) -> ImportOutcome:
    """Embed (or read) the input, ingest it into a scratch store, write it to the PostgreSQL store."""
    opened: OpenedInput = open_input(
        spec,
        config.bundle,
        config.embed,
        root,
        expected_contract=expected_contract,
        restart=config.restart,
        progress=config.progress,
    )
    plan_index(max(opened.total, 1), opened.d, config.memory_budget, config.index)  # fail early on memory
    t1 = time.perf_counter()
    work = root / WORK_DIR / IMPORT_DIR
    shutil.rmtree(work, ignore_errors=True)  # a scratch copy: the store itself says what was written
    work.mkdir(parents=True)
    with PgStore.open(url, contract_id=opened.contract_id, d=opened.d) as store:
        erased = store.erased()
        scratch = IdentityStore.create(work / "store.sqlite", contract_id=opened.contract_id, d=opened.d)
        rejects = RejectsWriter(work / "rejects.jsonl")
        try:
            stats = ingest(
                opened.chunks(rejects, chunk_rows(opened.d, config.memory_budget)),
                scratch,
                rejects,
                total=opened.total,
                progress=config.progress,
                erased=erased,
            )
            purge_store(scratch, read_erasures(root))  # a root used without the store may have erased some too
            if stats.accepted == 0:
                raise InvalidInputError(f"{opened.describe}: no usable faces (see {work / 'rejects.jsonl'})")
            imported = copy_into(scratch, store, principal=os_principal(), via=f"facesearch-index {_verb(config)}")
            imported.erased += stats.erased  # skipped by the ingest already (the rest: erased meanwhile)
        finally:
            scratch.close()
            rejects.close()
    log.info(
        "imported into the store: %d faces (%d identities created), %d already held, %d of erased subjects skipped, "
        "up to seq %d",
        imported.faces,
        imported.identities,
        imported.duplicates,
        imported.erased,
        imported.last_seq,
    )
    return ImportOutcome(opened, stats, imported, work / "rejects.jsonl", round(time.perf_counter() - t1, 2))


def _verb(config: BuildConfig | AddConfig) -> str:
    return "build" if isinstance(config, BuildConfig) else "add"


def copy_into(
    scratch: IdentityStore, store: PgStore, *, principal: str, via: str, batch: int = IMPORT_BATCH
) -> Imported:
    """Every face of ``scratch`` into ``store``, ``batch`` faces a transaction (see the module docstring)."""
    total = Imported()
    infos = _identity_infos(scratch)
    for vids, x, _ in scratch.iter_embeddings(batch):
        rows = scratch.faces(vids.tolist())
        items = []
        for row, e in zip(rows, x, strict=True):
            assert row is not None
            box = row.box if row.box is not None and all(math.isfinite(v) for v in row.box) else None
            items.append(
                ImportFace(
                    row.identity_id,
                    NewFace(e.copy(), row.source, box, _num(row.det_score), _num(row.face_size), _num(row.blur)),
                )
            )
        named = {i.identity_id: infos[i.identity_id] for i in items}
        total.add(import_faces(store, items, named, principal=principal, via=via))
    return total


def _identity_infos(scratch: IdentityStore, page: int = 10_000) -> dict[str, tuple[str | None, dict[str, str] | None]]:
    """Name and metadata of every identity of ``scratch``, read a page at a time."""
    out: dict[str, tuple[str | None, dict[str, str] | None]] = {}
    after = ""
    while rows := scratch.identities_after(after, page):
        out.update((r.identity_id, (r.name, r.metadata or None)) for r in rows)
        after = rows[-1].identity_id
    return out


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _cleanup(root: Path, done: ImportOutcome | None) -> None:
    """The scratch store and the embedding stage's shards: the store and the version hold what they held."""
    shutil.rmtree(root / WORK_DIR / IMPORT_DIR, ignore_errors=True)
    if done is not None and done.opened.work is not None:
        shutil.rmtree(done.opened.work, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Removed:
    result: CompactResult
    removed: tuple[str, ...]
    not_found: tuple[str, ...]
    faces: int
    last_seq: int


def run_remove(config: RemoveConfig, url: str) -> Removed:
    """Delete ``config.identities`` through the store, then compact (see the module docstring)."""
    set_threads(config.threads)
    t0 = time.perf_counter()
    root = config.root
    with locked(root):
        status = store_status(url)
        if status.contract_id is None or status.d is None:
            raise NotFoundError(f"the store {status.store} holds nothing yet", reason=Reason.IDENTITY_NOT_FOUND)
        base_dir = resolve_version_dir(root) if current_version(root) else None
        removed, missing, faces, last = [], [], 0, 0
        version_faces = _version_faces(base_dir, config.identities)
        with PgStore.open(url, contract_id=status.contract_id, d=status.d) as store:
            for identity_id in config.identities:
                try:
                    gone = store.delete_identity(
                        identity_id,
                        known_faces=version_faces.get(identity_id, []),
                        principal=os_principal(),
                        via="facesearch-index remove",
                    )
                except NotFoundError:
                    missing.append(identity_id)
                    continue
                removed.append(identity_id)
                faces += len(gone.vector_ids)
                last = gone.seq
        if not removed:
            raise NotFoundError(
                f"none of the identities to remove are in the store or the current version: {missing[:10]}",
                reason=Reason.IDENTITY_NOT_FOUND,
            )
        from indexer.store_compact import compact_locked  # noqa: PLC0415 - a cycle otherwise (it imports this)

        compact = CompactConfig(
            root,
            memory_budget=config.memory_budget,
            keep_versions=config.keep_versions,
            threads=config.threads,
            progress=config.progress,
            bundle=config.bundle,
        )
        facts = {"removed_identity_count": len(removed), "removed_faces": faces}  # never the ids: erased
        result = compact_locked(compact, url, t0=t0, facts=facts)
    return Removed(result, tuple(removed), tuple(missing), faces, last)


def _version_faces(base_dir: Path | None, identity_ids: Sequence[str]) -> dict[str, list[ErasedFace]]:
    """The faces of each of ``identity_ids`` in the current version (the store's tombstones must cover
    them), read in one pass."""
    found: dict[str, list[ErasedFace]] = {}
    if base_dir is None:
        return found
    with IdentityStore.open(base_dir / STORE_FILE, readonly=True) as store:
        for f in store.faces_of_identities(list(identity_ids)):
            found.setdefault(f.identity_id, []).append(ErasedFace(f.vector_id, f.source))
    return found
