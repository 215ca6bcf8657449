"""``facesearch-index erase-status`` with a PostgreSQL store: where the store's erased subjects' data
still is, in the same report as for an index root (:func:`facesearch.store.erasure_audit.erase_status`).

The subjects are the store's erasure ledger's (:meth:`PgStore.erasures`), and what is looked at is
everything the SQLite report looks at under the shared index root (every kept version, leftovers of
killed jobs, a live journal left from before the store, the byte scan with an id), plus:

* each replica's caches under ``ROOT/replicas/*`` (and ``--live-dir``): open-set statistics
  (``open_set/*.npz``) and checkpoints;
* the store's tables: face rows (embeddings) of an erased subject (none after a deletion, which
  deletes them in its transaction); identity rows, change log entries and tombstones that name an
  erased identity (a deleted identity's row keeps its id until the log is pruned past it:
  ``compact`` then ``prune --keep 1``); audit rows still naming an erased identity (the deletion
  rewrites them to the ledger's digest in its own transaction; rows an older release left named are
  rewritten by a replica's next expiry run, within ``FACESEARCH_STORE_EXPIRE_S``, or by
  ``compact``/``prune``).

The rows are read, not the database's files: PostgreSQL keeps deleted rows in its data files until
VACUUM reuses the space, and in its write-ahead log and backups; those are the database's
administrators' to manage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from facesearch.store.erasure_audit import EraseStatus, LedgerView, erase_status
from facesearch.store.erasure_ledger import Erasure, ErasureKind, ErasureSet
from facesearch.store.postgres.store import PgStore

__all__ = ["REPLICAS_DIR", "store_erase_status"]

#: Where replicas keep their caches by default (``FACESEARCH_LIVE_DIR`` = ``ROOT/replicas/REPLICA_ID``).
REPLICAS_DIR = "replicas"

_Hold = Callable[[str, Path, str], None]


def store_erase_status(
    store: PgStore,
    root: Path,
    *,
    identity_id: str | None = None,
    live_dir: Path | None = None,
    also: Iterable[str] = (),
) -> EraseStatus:
    """Audit ``root`` and ``store`` for every subject the store's ledger erased (or only ``identity_id``)."""
    root = Path(root)
    erased = store.erased()
    replicas = root / REPLICAS_DIR
    caches = sorted(d for d in replicas.iterdir() if d.is_dir()) if replicas.is_dir() else []
    if live_dir is not None:
        caches.append(Path(live_dir))

    records = store.erasures()

    def more(hold: _Hold, hold_identity: _Hold) -> None:
        _store_rows(store, erased, records, hold, hold_identity)

    view = LedgerView(records, erased, store.ledger.digester, tuple(caches), more)
    return erase_status(root, identity_id=identity_id, live_dir=live_dir, also=also, ledger=view)


def _store_rows(store: PgStore, erased: ErasureSet, records: list[Erasure], hold: _Hold, hold_identity: _Hold) -> None:
    digest = store.ledger.digester.subject
    where = f"PostgreSQL store {store.store_id}"

    def table(name: str) -> Path:
        return Path(f"{where}: table {name}")

    vids = sorted(erased.vector_ids)
    face_subjects = {int(v): r.subject for r in records if r.kind is not ErasureKind.UNERASE for v in r.vector_ids}
    with store.connection("erase-status") as conn:
        by_identity = conn.execute("SELECT identity_id, count(*) FROM faces GROUP BY identity_id").fetchall()
        by_vid = conn.execute("SELECT vector_id FROM faces WHERE vector_id = ANY(%s)", (vids,)).fetchall()
        identities = conn.execute("SELECT identity_id, deleted FROM identities").fetchall()
        named = {
            name: conn.execute(
                f"SELECT identity_id, count(*) FROM {name} WHERE identity_id IS NOT NULL GROUP BY identity_id"
            ).fetchall()
            for name in ("changes", "tombstones", "audit_log")
        }
    for identity_id, n in by_identity:
        if (owner := digest(identity_id)) in erased.subjects:
            hold(owner, table("faces"), f"{n} faces (embeddings, sources, boxes)")
    counted: dict[str, int] = {}
    for (vid,) in by_vid:
        if (face_of := face_subjects.get(int(vid))) is not None:
            counted[face_of] = counted.get(face_of, 0) + 1
    for subject, n in counted.items():
        hold(subject, table("faces"), f"{n} erased faces (embeddings, sources, boxes)")
    for identity_id, deleted in identities:
        state = "deleted: its id stays until the log is pruned past it (compact, then prune)" if deleted else "current"
        hold_identity(digest(identity_id), table("identities"), f"identity row ({state})")
    what = {
        "changes": "change log entries naming the identity (pruned with the log: compact, then prune)",
        "tombstones": "tombstones naming the identity (pruned with the log: compact, then prune)",
        "audit_log": "audit rows naming the identity (left by an older release); pending: rewritten to the ledger's "
        "digest by a replica within FACESEARCH_STORE_EXPIRE_S (default 300 s), or by compact / prune",
    }
    for name, rows in named.items():
        for identity_id, n in rows:
            hold_identity(digest(identity_id), table(name), f"{n} {what[name]}")
