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
- ``replicas``: :class:`ReplicaRegistry`: each replica's applied position and heartbeat; a deletion
  waits until every replica applied it or is fenced. Tests: ``tests/integration/test_pg_replicas.py``.
- ``follower``: :class:`LogFollower`: a replica's catch-up (at start, on NOTIFY, every poll, after
  its own writes) and its fence. Tests: ``tests/integration/test_pg_replicas.py``.
- ``failures``: PostgreSQL errors as ``STORE_UNAVAILABLE`` / ``STORE_OUTCOME_UNKNOWN``; the failpoints
  of the write path (``pg.*``, ``replica.*`` in ``facesearch.util.failpoints``). Tests:
  ``tests/integration/test_pg_faults.py``, ``tests/integration/test_pg_crash_points.py`` (every site
  killed, broken, stalled in real replicas), ``tests/integration/test_pg_restart_load.py``.
- ``ledger``: :class:`PgLedger`: the erasure ledger (same records and HMAC digests as
  ``facesearch.store.erasure_ledger``) and the audit log, written in the deletion's own transaction.
  Tests: ``tests/integration/test_pg_store.py``.
- ``sql``: the statements the store's transactions run, and row decoding. Tests: through its callers.
- ``records``: the result types. Tests: through its callers.
- ``retention``: :func:`prune_store`: the log up to the oldest kept version's position, request ids
  and audit rows past their windows (:func:`expire`, also run by every replica's follower under an
  advisory try-lock: :func:`expire_if_free`). Tests: ``tests/integration/test_pg_retention.py``.
- ``imports``: :func:`import_faces`: a batch of faces written as enrollments (one transaction, one log
  entry per identity), erased subjects and faces already held skipped: what ``facesearch-index
  build|add`` with the store index. Tests: ``tests/integration/test_pg_build.py``.
- ``erasure_status``: :func:`store_erase_status`: ``facesearch-index erase-status`` over the store's
  ledger (the root, replicas' caches, the store's tables). Tests: ``tests/integration/test_pg_erase_status.py``.
- Commands: ``facesearch-index db migrate|status --store URL`` (``indexer/db_commands.py``);
  ``build|add|compact|erase-status|unerase --store URL`` (``indexer/store_build.py``,
  ``indexer/store_compact.py``, ``indexer/erasure_commands.py``).

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
checks for create-only and erased identities are made *inside* the store's transaction, so two
replicas cannot both create one identity: writes are serialised by the store's append lock, see
:mod:`~facesearch.store.postgres.store`), then :meth:`LogFollower.catch_up` before replying: the
replica applies everything up to and including its own write, in seq order (read-your-writes, and
never its own change ahead of another replica's earlier one). Deletions likewise, then
``store.replicas.wait_applied(seq, fence_s=...)`` before the OK (below). Nothing is written locally:
PostgreSQL down means the write fails with ``STORE_UNAVAILABLE`` (``STORE_OUTCOME_UNKNOWN`` if the
connection broke during the commit: the client retries with the same ``request_id``). Reads never
touch PostgreSQL: Identify keeps working from memory through an outage shorter than ``fence_s``.

Propagation. Each replica runs one :class:`LogFollower` thread: :class:`ChangeListener.wait` (LISTEN
on its own connection, woken by the NOTIFY each commit sends with its seq), then
``snapshot(after_seq=applied)``, ``apply``, heartbeat. The log is the truth and the notification only
a wake-up, so a lost notification (the listening connection dropped, PostgreSQL restarted) is caught
up by seq at the next wake-up, at the latest after ``poll_s`` (e.g. 1 s).

Deletion guarantee (the bound; :mod:`~facesearch.store.postgres.replicas`). After
``DeleteIdentity``/``DeleteFaces`` returns OK no replica returns those faces. Two rules, one constant
``fence_s`` (e.g. 10 s, longer than a PostgreSQL restart): (1) a replica serves searches only while
its last successful catch-up started less than ``fence_s`` ago by its own monotonic clock
(:meth:`LogFollower.serving_allowed`; otherwise health NOT_SERVING and searches UNAVAILABLE
``NOT_READY`` until it caught up); (2) the replica that committed a deletion replies OK only after
:meth:`ReplicaRegistry.wait_applied`: every registered replica has applied the deletion's seq, or its
last heartbeat is older than ``fence_s + margin_s`` by the database's clock (so by rule 1 it has
stopped serving; ``margin_s`` covers clock-rate drift and a search already in flight). In practice a
deletion waits one notification round trip (milliseconds) for live replicas, and at most
``fence_s + margin_s`` for one that died or lost PostgreSQL without leaving the registry; a replica
that stops cleanly leaves it (:meth:`LogFollower.stop`). Tested in ``test_pg_replicas.py``.

Compaction and rebuilds. ``facesearch-index compact`` reads ``snapshot()`` (the whole store, or the
tail after the current version's ``live_seq``) with its high water, publishes a version with
``live_seq`` = that high water, and every replica hot-swaps to it and drops exactly its tail up to
``live_seq`` (``Gallery.install`` already does this for a journal). Pruning
(:meth:`PgStore.prune`) goes up to the oldest kept version's ``live_seq``. Rebuilds read
:meth:`PgStore.erased` (the ledger lives in PostgreSQL too, same records and HMAC digests as
``facesearch.store.erasure_ledger``; ``purge_store`` takes the ``ErasureSet`` it returns) so a rebuild
never brings an erased subject back.

Wired in (issue 14): ``server/replica_gallery.py`` (a server with ``FACESEARCH_STORE=postgresql://...``
is a replica: catch-up before SERVING, enroll and delete through the store, the follower thread, the
fence), ``indexer/store_compact.py`` (compaction from the store; every version it publishes also purges
what the store's ledger erased), the client's several targets, and retention (``retention``: after a
store compaction publishes and in ``facesearch-index prune``, the log is pruned up to the oldest kept
version's ``live_seq``; request ids and audit rows past ``FACESEARCH_ENROLL_REQUEST_TTL_S`` /
``FACESEARCH_AUDIT_RETENTION_DAYS`` are deleted there and, without any indexer run, by one replica at a
time every ``FACESEARCH_STORE_EXPIRE_S``; a deletion rewrites the identity's audit rows to the ledger's
digest in its own transaction; tests: ``tests/integration/test_pg_retention.py``). ``facesearch-index
build|add`` with the store (``indexer/store_build.py``): the input is written to the store first
(``imports``: durable enrollments in the log, batches of 1000 faces, resumable: a rerun skips what the
store holds), then ``build`` trains a new index over everything the store holds (``build --from-store``
does only that; ``compact`` stays the incremental job) and ``add`` compacts; the version records
``live_seq`` = the snapshot's high water, so replicas hot-swap and drop exactly that tail; ``remove``
deletes through the store (as ``DeleteIdentity``), then compacts. ``erase-status``/``unerase``/``audit``
with the store (``erasure_status``).
Issue 12's fault and deletion-matrix tests run against the store too: ``test_pg_crash_points.py``, the
PostgreSQL cases of ``test_server_erasure.py`` and ``test_erasure_model_change.py``.
A root published from the store is marked (``ROOT/STORE``, :mod:`facesearch.store.store_marker`):
jobs and servers opening it without the store are refused (``STORE_ROOT``). Measured:
``bench/results/replicas.md`` (the full 5-minute run), ``bench/results/replica_restart.md``.
Not done yet (next sessions): several model contracts in one database (one contract per database
today, refused otherwise: a model change means a new database, rebuilt from photos); a build from
photos also *removing* store faces absent from its input (a build adds; deletions go through a replica
or ``remove``).
"""

from __future__ import annotations

from facesearch.store.postgres.follower import LogFollower
from facesearch.store.postgres.listener import ChangeListener, Wake
from facesearch.store.postgres.migrations import LATEST, MIGRATIONS, Migration, MigrationReport, check_schema, migrate
from facesearch.store.postgres.records import AuditEntry, Change, ChangeKind, Deleted, Enrolled, PoolSettings
from facesearch.store.postgres.replicas import Propagation, ReplicaRegistry, ReplicaState
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
    "LogFollower",
    "Migration",
    "MigrationReport",
    "PgStore",
    "PoolSettings",
    "Propagation",
    "ReplicaRegistry",
    "ReplicaState",
    "Wake",
    "check_schema",
    "migrate",
]
