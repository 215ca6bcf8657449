"""``facesearch-index compact`` with ``FACESEARCH_STORE=postgresql://...``: absorb the shared store's log.

The same job as :mod:`indexer.compact`, reading the PostgreSQL store (:mod:`facesearch.store.postgres`)
instead of the root's live journal: one consistent ``snapshot`` of the log after the position the
current version absorbed (``live_seq`` of a version whose ``live_journal_id`` is the store's id; 0 for
a version built from photos), applied to a copy of the version's identity store, published with
``live_journal_id = store id`` and ``live_seq = the snapshot's high water``. Every replica's index
watcher then hot-swaps to it and drops exactly that part of its in-memory tail
(``Gallery.install`` replays the store from the version's ``live_seq``), so a replica's restart
replays only what came after. Runs while the replicas serve and enroll; writes made after the
snapshot stay in the tail.

After publishing (which drops versions past ``--keep-versions``), the store's log is pruned up to the
oldest kept version's ``live_seq`` and old idempotency keys and audit rows are deleted
(:func:`facesearch.store.postgres.retention.prune_store`): a rollback to any kept version still finds
the changes it lacks. ``facesearch-index prune`` runs the same (:func:`prune_from_store`).

Every version it publishes also purges what the store's erasure ledger erased (a version built from
photos before an erasure may still hold the subject under vector ids the store never had).
``build``/``add`` with the store (:mod:`indexer.store_build`) publish through the same path.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from facesearch.errors import ContractMismatchError
from facesearch.store.index_artifact import current_version, load_index, resolve_version_dir
from facesearch.store.postgres import PgStore
from facesearch.store.postgres.admin import store_status
from facesearch.store.postgres.retention import StorePruned, prune_store
from facesearch.store.store_marker import mark_store_root
from indexer.compact import CompactConfig, CompactResult, absorbed_seq, publish_compacted
from indexer.index_stage import set_threads
from indexer.publish import locked

__all__ = ["compact_locked", "prune_from_store", "run_from_store"]

log = logging.getLogger(__name__)


def run_from_store(config: CompactConfig, url: str) -> CompactResult:
    """Publish ``config.root``'s current version plus the store's log after it (see the module docstring)."""
    set_threads(config.threads)
    t0 = time.perf_counter()
    with locked(config.root):
        return compact_locked(config, url, t0=t0)


def compact_locked(
    config: CompactConfig,
    url: str,
    *,
    t0: float,
    facts: dict[str, Any] | None = None,
    rejects_from: Path | None = None,
    always: bool = False,
) -> CompactResult:
    """:func:`run_from_store` for a caller that holds the root's lock (``add`` with the store);
    ``always``: publish even when the log holds nothing new (``add --retrain``)."""
    root = config.root
    base = load_index(resolve_version_dir(root)) if current_version(root) else None
    status = store_status(url)
    if status.contract_id is None or status.d is None:  # no server or job has used it yet: nothing in it
        log.info("nothing to compact: the store %s holds nothing yet", status.store)
        return CompactResult(None, 0, 0, 0, 0)
    contract_id, d = status.contract_id, status.d
    if base is not None and base.manifest.contract_id != contract_id:
        raise ContractMismatchError(
            f"the store holds model contract {contract_id}, the index {base.manifest.version} "
            f"{base.manifest.contract_id}; they cannot be merged"
        )
    with PgStore.open(url, contract_id=contract_id, d=d) as store:
        mark_store_root(root, store.store_id)  # before the first version from the store: see store_marker
        done = absorbed_seq(base, store.store_id)
        snap = store.snapshot(after_seq=done)
        erased = store.erased()
    if snap.high_water <= done and not always:
        log.info("nothing to compact: the current version holds the store's log up to seq %d", done)
        return CompactResult(None, done, 0, 0, 0)
    result = publish_compacted(
        config,
        base,
        snap,
        contract_id=contract_id,
        d=d,
        t0=t0,
        store_erased=erased,
        facts=facts,
        rejects_from=rejects_from,
    )
    with PgStore.open(url, contract_id=contract_id, d=d) as store:
        log.info("%s", prune_store(store, root).describe())
    return result


def prune_from_store(root: Path, url: str) -> StorePruned | None:
    """Prune the store's log to what the kept versions of ``root`` absorbed, and expire keys and audit
    rows (the caller holds ``root``'s lock). None: the store holds nothing yet."""
    status = store_status(url)
    if status.contract_id is None or status.d is None:
        return None
    with PgStore.open(url, contract_id=status.contract_id, d=status.d) as store:
        return prune_store(store, root)
