"""The PostgreSQL store shared by several ``facesearch-server`` replicas (issue 14): identities, faces
and an ordered change log, with the erasure ledger, the audit log and idempotency keys beside them.

Selected by ``FACESEARCH_STORE=postgresql://...`` (:mod:`facesearch.store.store_location`, the one
reader of that variable); SQLite stays the default. Needs the ``postgres`` extra (psycopg 3 and
psycopg_pool); importing this package imports the driver, so the SQLite path never imports it.

Modules (and the tests that cover them; all run against a real PostgreSQL that the tests start,
``tests/pg_fixtures.py``):

- ``migrations``: the schema as numbered migrations, ``migrate()`` under an advisory lock in one
  transaction, ``check_schema()`` refusing an older or newer schema (``STORE_SCHEMA``).
  Tests: ``tests/integration/test_pg_migrations.py``.
- ``store``: :class:`PgStore`: the pool, snapshots, enroll / delete / prune, erasures, audit,
  idempotency. Tests: ``tests/integration/test_pg_store.py``, ``tests/integration/test_pg_faults.py``.
- ``listener``: :class:`ChangeListener`: LISTEN/NOTIFY wake-ups. Tests:
  ``tests/integration/test_pg_store.py``, ``tests/integration/test_pg_faults.py``.
- ``failures``: PostgreSQL errors as ``STORE_UNAVAILABLE`` / ``STORE_OUTCOME_UNKNOWN``. Tests:
  ``tests/integration/test_pg_faults.py``.
- ``ledger``: :class:`PgLedger`: the erasure ledger (same records and HMAC digests as
  ``facesearch.store.erasure_ledger``) and the audit log, written in the deletion's own transaction.
  Tests: ``tests/integration/test_pg_store.py``.
- ``sql``: the statements the store's transactions run, and row decoding. Tests: through its callers.
- ``records``: the result types. Tests: through its callers.
- Commands: ``facesearch-index db migrate|status --store URL`` (``indexer/db_commands.py``).

Design: how replicas will use it (to be wired into ``server/gallery.py``)
==========================================================================

What each replica holds. The published FAISS version from the shared index root (every replica
mounts it) plus, in memory, the log's tail since the position that version absorbed: a version built
or compacted from the store records ``live_journal_id = store.store_id`` and ``live_seq = N`` (the
store's high water when it read its snapshot), exactly as versions record the SQLite journal today.
The replica calls ``store.snapshot(after_seq=N)`` (a :class:`~facesearch.store.live_journal.JournalSnapshot`,
the type ``LiveState.load`` already takes) and reports SERVING only after that catch-up. A version
older than what the store pruned is refused (``STORE_LOG_PRUNED``): pruning never goes past the
oldest kept version, as for the journal.

Writes. ``Gallery.enroll`` calls :meth:`PgStore.enroll` (durable in PostgreSQL when it returns; the
check for create-only and erased identities is made *inside* the store's transaction, so two replicas
cannot both create one identity: writes are serialised by the store's append lock, see
:mod:`~facesearch.store.postgres.store`), then applies the returned seq, vector ids and identity row
to its own live state before replying: read-your-writes on the replica that took the write. It must
apply the change at its seq, after every lower seq: the replica first catches up to ``seq - 1`` from
the log if its tail is behind (another replica's writes), then applies its own. Nothing is written
locally: PostgreSQL down means the write fails with ``STORE_UNAVAILABLE`` (``STORE_OUTCOME_UNKNOWN``
if the connection broke during the commit: the client retries with the same ``request_id``).
Reads never touch PostgreSQL: Identify keeps working from memory through an outage.

Propagation. Each replica runs one follower thread: :class:`ChangeListener.wait` (LISTEN on its own
connection, woken by the NOTIFY each commit sends with its seq), then ``snapshot(after_seq=applied)``
and apply. The log is the truth and the notification only a wake-up, so a lost notification (the
listening connection dropped, PostgreSQL restarted) is caught up by seq at the next wake-up or at the
poll interval (``timeout`` of ``wait``, e.g. 1 s) at the latest.

Deletion guarantee (the bound). After ``DeleteIdentity``/``DeleteFaces`` returns OK no replica
returns those faces: each replica serves only while its applied position is fresh, i.e. it has
caught up with the log within the last ``max_lag`` seconds (e.g. 2 s; a catch-up is one snapshot
query, it succeeds within a poll interval whenever PostgreSQL answers). The replica that takes a
deletion commits it, then waits until every *live* replica reports an applied seq >= the deletion's
(each replica records ``(replica_id, applied_seq, heartbeat_at)`` in a ``replicas`` table, a later
migration, on every catch-up; live = heartbeat within ``max_lag``), at most ``max_lag``; a replica
that has not caught up within ``max_lag`` of a change it has not applied stops answering searches
(NOT_SERVING, reason NOT_READY) until it has. So: an OK deletion is invisible on every replica
at once if all are live, and within ``max_lag`` on one that was not (which by then refuses to
search). During a PostgreSQL outage no deletion can be acknowledged (it is a write), so serving
stale-but-complete data from memory is safe: nothing acknowledged is missing from it.

Compaction and rebuilds. ``facesearch-index compact`` reads ``snapshot()`` (the whole store, or the
tail after the current version's ``live_seq``) with its high water, publishes a version with
``live_seq`` = that high water, and every replica hot-swaps to it and drops exactly its tail up to
``live_seq`` (``Gallery.install`` already does this for a journal). Pruning
(:meth:`PgStore.prune`) goes up to the oldest kept version's ``live_seq``. Rebuilds read
:meth:`PgStore.erased` (the ledger lives in PostgreSQL too, same records and HMAC digests as
``facesearch.store.erasure_ledger``; ``purge_store`` takes the ``ErasureSet`` it returns) so a rebuild
never brings an erased subject back.

Not done yet (next sessions): the ``replicas`` table and the wait-for-replicas on delete; wiring into
``server/gallery.py`` and ``server/config.py`` (``FACESEARCH_STORE``); compaction from the store;
several model contracts in one database (one contract per database today, refused otherwise);
audit-log retention; ``bench/replicas.py``.
"""

from __future__ import annotations

from facesearch.store.postgres.listener import ChangeListener, Wake
from facesearch.store.postgres.migrations import LATEST, MIGRATIONS, Migration, MigrationReport, check_schema, migrate
from facesearch.store.postgres.records import AuditEntry, Change, ChangeKind, Deleted, Enrolled, PoolSettings
from facesearch.store.postgres.sql import APPEND_LOCK, NOTIFY_CHANNEL
from facesearch.store.postgres.store import PgStore

__all__ = [
    "APPEND_LOCK",
    "LATEST",
    "MIGRATIONS",
    "NOTIFY_CHANNEL",
    "AuditEntry",
    "Change",
    "ChangeKind",
    "ChangeListener",
    "Deleted",
    "Enrolled",
    "Migration",
    "MigrationReport",
    "PgStore",
    "PoolSettings",
    "Wake",
    "check_schema",
    "migrate",
]
