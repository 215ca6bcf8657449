"""The PostgreSQL store: identities, faces and the ordered change log shared by several servers.

:class:`PgStore` is opened by each replica (and by ``facesearch-index``) on one database migrated by
``facesearch-index db migrate``; it holds a psycopg_pool connection pool and is safe to share between
threads. Writes:

* every write is one transaction that first takes :data:`APPEND_LOCK` (``pg_advisory_xact_lock``),
  then reads what it decides on, writes the change log entry (``changes.seq``, a bigserial), the
  rows, the erasure record and the audit entry, queues ``NOTIFY facesearch_changes, '<seq>'`` and
  commits. Holding the lock from before the seq is drawn until after the commit makes the log's seq
  order its commit order: a reader that has seen seq N has seen every change below N, so
  ``changes_since(N)`` / ``snapshot(after_seq=N)`` never skip a change committed late. Writes are thus
  serialised in the database (one short transaction each: an enroll holds the lock for two round
  trips, psycopg's pipeline mode sending its reads together and then its writes together, plus the
  commit flush; bench/results/pg_store.md), which is also what decides two replicas enrolling one
  identity at once: they run one after the other; a
  create-only enroll of the second gets ``IDENTITY_EXISTS``, an appending one adds its faces after
  the first's. The identity row's primary key is the backstop.
* a write is durable when it returns (``synchronous_commit`` on, PostgreSQL's default): the caller
  acknowledges only after that.
* PostgreSQL down or restarting: ``STORE_UNAVAILABLE`` (nothing written; the pool reconnects by
  itself, no restart of the store object); the connection lost during ``COMMIT``:
  ``STORE_OUTCOME_UNKNOWN`` (an enroll retried with the same ``request_id`` returns the first
  result; a deletion retried finds it made: NOT_FOUND, with the erasure and tombstones in place).

Reads (:meth:`PgStore.snapshot`) run in one ``REPEATABLE READ`` read-only transaction: a consistent
cut with its high-water seq, as :class:`~facesearch.store.live_journal.JournalSnapshot`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb

from facesearch.errors import (
    AlreadyExistsError,
    ContractMismatchError,
    IndexFormatError,
    InvalidInputError,
    NotFoundError,
    PreconditionError,
    Reason,
)
from facesearch.store.audit_log import retention_cutoff
from facesearch.store.erasure_ledger import Digester, ErasedFace, Erasure, ErasureKind, ErasureSet
from facesearch.store.live_journal import JournalSnapshot, LiveIdentity, NewFace, Tombstone
from facesearch.store.postgres import sql
from facesearch.store.postgres.failures import commit, inject, store_errors, unavailable
from facesearch.store.postgres.ledger import PgLedger
from facesearch.store.postgres.migrations import check_schema
from facesearch.store.postgres.records import (
    AuditEntry,
    Change,
    ChangeKind,
    Deleted,
    Enrolled,
    PoolSettings,
    enroll_fingerprint,
)
from facesearch.store.postgres.replicas import ReplicaRegistry
from facesearch.store.postgres.sql import APPEND_LOCK, EPOCH
from facesearch.store.store_location import redact

__all__ = ["PgStore"]


_FACE_COLUMNS = "vector_id, seq, identity_id, source, x1, y1, x2, y2, det_score, face_size, blur"


class PgStore:
    """One PostgreSQL store (see the module docstring); open with :meth:`open`."""

    def __init__(
        self, pool: psycopg_pool.ConnectionPool, dsn: str, meta: Mapping[str, Any], timeout_s: float = 5.0
    ) -> None:
        self._pool = pool
        self._timeout = timeout_s
        self.dsn = dsn
        self.where = redact(dsn)
        self.store_id = str(meta["store_id"])
        self.contract_id = str(meta["contract_id"])
        self.d = int(meta["d"])
        self.ledger = PgLedger(self, Digester(bytes.fromhex(str(meta["erasure_key"]))))
        self.replicas = ReplicaRegistry(self)

    @property
    def journal_id(self) -> str:
        """The id an index version records as ``live_journal_id`` when it absorbs this store's log."""
        return self.store_id

    # -- lifecycle ---------------------------------------------------------------------
    @classmethod
    def open(cls, dsn: str, *, contract_id: str, d: int, pool: PoolSettings | None = None) -> PgStore:
        """Connect, check the schema (``STORE_SCHEMA`` unless exactly this code's), and bind the store
        to ``contract_id``/``d`` on first use (refusing another contract later). UNAVAILABLE when
        PostgreSQL cannot be reached within the pool's timeout."""
        settings = pool or PoolSettings()
        where = redact(dsn)
        conn_pool = psycopg_pool.ConnectionPool(
            dsn,
            min_size=settings.min_size,
            max_size=settings.max_size,
            timeout=settings.timeout_s,
            reconnect_timeout=settings.reconnect_timeout_s,
            kwargs={"connect_timeout": settings.connect_timeout_s, "application_name": "facesearch"},
            name="facesearch-store",
            open=False,
        )
        try:
            try:
                conn_pool.open(wait=True, timeout=settings.timeout_s)
            except psycopg_pool.PoolTimeout as err:
                raise unavailable(err, f"PostgreSQL store {where}: connect") from err
            with store_errors(f"PostgreSQL store {where}: open"), conn_pool.connection() as conn:
                check_schema(conn, where)
                meta = sql.bind_meta(conn, contract_id, d)
        except BaseException:
            conn_pool.close()
            raise
        if meta["contract_id"] != contract_id or int(meta["d"]) != d:
            conn_pool.close()
            raise ContractMismatchError(
                f"PostgreSQL store {where} holds {meta['d']}-d embeddings of model contract {meta['contract_id']}; "
                f"the loaded model is {contract_id} ({d}-d): use a store of that model"
            )
        return cls(conn_pool, dsn, meta, settings.timeout_s)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def connection(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one unit of work (committed on success, rolled back on error)."""
        with store_errors(f"PostgreSQL store {self.where}: {what}"):
            conn = self._lend()
            try:
                with conn:
                    yield conn
            finally:
                self._pool.putconn(conn)

    def _lend(self) -> psycopg.Connection[Any]:
        """A pooled connection that answers. One that does not (PostgreSQL restarted since it was made)
        goes back to the pool, which closes and replaces it, and the next is tried at once: the pool's
        own check would back off 1, 2, 4... s per dead connection, delaying recovery after a restart."""
        deadline = time.monotonic() + self._timeout
        while True:
            conn = self._pool.getconn(timeout=max(0.001, deadline - time.monotonic()))
            try:
                psycopg_pool.ConnectionPool.check_connection(conn)
            except psycopg.Error:
                self._pool.putconn(conn)
                if time.monotonic() >= deadline:
                    raise
                continue
            return conn

    @contextmanager
    def writing(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """One write transaction holding :data:`APPEND_LOCK`; committed by :func:`commit` (durable on exit)."""
        full = f"PostgreSQL store {self.where}: {what}"
        with self.connection(what) as conn:
            try:
                # pipeline mode: statements are sent without waiting for each other's results, and a
                # result asked for collects all queued before it: the lock costs no round trip of its own
                with conn.pipeline():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                    yield conn
                inject("pg.write")  # failpoint: everything written, before COMMIT
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
            commit(conn, full)

    # -- reads -------------------------------------------------------------------------
    def high_water(self) -> int:
        with self.connection("high water") as conn:
            return sql.high_water(conn)

    def pruned_upto(self) -> int:
        with self.connection("pruned position") as conn:
            return sql.pruned_upto(conn)

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Log entries with ``seq`` above ``seq``, in order (at most ``limit``)."""
        with self.connection("read the change log") as conn:
            rows = conn.execute(
                f"SELECT seq, kind, identity_id, vector_ids, {EPOCH.format('at')}, principal FROM changes "
                "WHERE seq > %s ORDER BY seq LIMIT %s",
                (seq, limit),
            ).fetchall()
        return [Change(r[0], ChangeKind(r[1]), r[2], tuple(r[3]), r[4], r[5]) for r in rows]

    def identity(self, identity_id: str) -> LiveIdentity | None:
        with self.connection("read an identity") as conn:
            row = conn.execute(sql.IDENTITY_SELECT + " WHERE identity_id = %s", (identity_id,)).fetchone()
        return None if row is None else sql.identity_of(row)

    def face_count(self, identity_id: str) -> int:
        with self.connection("count faces") as conn:
            return sql.face_count(conn, identity_id)

    def snapshot(self, after_seq: int = 0) -> JournalSnapshot:
        """Every change with ``seq > after_seq`` as one consistent cut (identities touched, faces
        enrolled with their embeddings, tombstones), with the cut's high water.

        ``after_seq`` 0 is the whole store (every identity, every face not deleted). An ``after_seq``
        below what :meth:`prune` removed is refused (``STORE_LOG_PRUNED``): deletions in the pruned
        range are gone from the log, so a version that old cannot be brought up to date from it.
        """
        with self.connection("snapshot") as conn, conn.transaction():
            # one consistent cut; a pooled connection's settings are left as they were
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            pruned = sql.pruned_upto(conn)
            if 0 < after_seq < pruned:
                raise PreconditionError(
                    f"PostgreSQL store {self.where}: changes after seq {after_seq} were asked, but the log "
                    f"is pruned up to {pruned}: serve a newer index version (or compact one from the store)",
                    reason=Reason.STORE_LOG_PRUNED,
                )
            high = sql.high_water(conn)
            identities = [
                sql.identity_of(r)
                for r in conn.execute(
                    sql.IDENTITY_SELECT + " WHERE seq > %s ORDER BY identity_id", (after_seq,)
                ).fetchall()
            ]
            rows = conn.execute(
                f"SELECT {_FACE_COLUMNS}, {EPOCH.format('created_at')}, embedding FROM faces "
                "WHERE seq > %s ORDER BY vector_id",
                (after_seq,),
            ).fetchall()
            tombstones = [
                Tombstone(r[0], r[1], r[2])
                for r in conn.execute(
                    "SELECT vector_id, seq, identity_id FROM tombstones WHERE seq > %s ORDER BY vector_id",
                    (after_seq,),
                ).fetchall()
            ]
        faces = [sql.face_of(r) for r in rows]
        embeddings = self._embeddings([r[-1] for r in rows], [r[0] for r in rows])
        return JournalSnapshot(self.store_id, high, identities, faces, embeddings, tombstones)

    def _embeddings(self, blobs: Sequence[bytes], vector_ids: Sequence[int]) -> np.ndarray:
        out = np.zeros((len(blobs), self.d), np.float32)
        for i, (blob, vid) in enumerate(zip(blobs, vector_ids, strict=True)):
            if len(blob) != 4 * self.d:
                raise IndexFormatError(
                    f"PostgreSQL store {self.where}: face {vid} holds {len(blob)} embedding bytes, expected "
                    f"{4 * self.d}",
                    reason=Reason.JOURNAL_DAMAGED,
                )
            out[i] = np.frombuffer(blob, dtype="<f4")
        return out

    # -- writes ------------------------------------------------------------------------
    def enroll(
        self,
        identity_id: str,
        faces: Sequence[NewFace],
        *,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        create_only: bool = False,
        request_id: str | None = None,
        principal: str | None = None,
        fingerprint: str | None = None,
    ) -> Enrolled:
        """Add ``faces`` to ``identity_id`` (creating it); durable on return.

        ``name``/``metadata`` None or empty keep the identity's. Refused: an erased identity
        (``IDENTITY_ERASED``), an existing one when ``create_only`` (``IDENTITY_EXISTS``; an identity only
        in a published version is the caller's to check), a ``request_id`` already used for another
        request. A known ``request_id`` returns the first result (``replayed``), writing nothing.
        ``fingerprint``: what identifies the request's content instead of the faces' digest (a server
        passes its digest of the photos: re-embedding a retried photo may differ in the last bits).
        """
        embeddings = sql.embedding_rows(faces, self.d)
        meta = dict(metadata or {})
        print_ = fingerprint or enroll_fingerprint(
            identity_id, name, meta, faces, create_only=create_only, principal=principal
        )
        with self.writing(f"enroll {identity_id!r}") as conn:
            # what the decision needs, in one round trip (pipelined after the append lock)
            known = conn.execute(
                "SELECT fingerprint, result FROM idempotency_keys WHERE request_key = %s",
                (sql.request_key(request_id or ""),),
            )
            erasure = self.ledger.query_erased(conn, identity_id)
            prior = conn.execute(sql.IDENTITY_SELECT + " WHERE identity_id = %s FOR UPDATE", (identity_id,))
            counted = conn.execute("SELECT count(*) FROM faces WHERE identity_id = %s", (identity_id,))
            drawn = conn.execute("SELECT nextval('face_vector_ids') FROM generate_series(1, %s)", (len(faces),))
            row = prior.fetchone()
            existing = None if row is None else sql.identity_of(row)
            if request_id is not None:
                first = sql.replayed(known.fetchone(), request_id, print_, existing, identity_id)
                if first is not None:
                    return first
            if self.ledger.is_erasure(erasure.fetchone()):
                raise PreconditionError(
                    f"identity {identity_id!r} was erased; unerase it first (facesearch-index unerase) to enroll it "
                    "again",
                    reason=Reason.IDENTITY_ERASED,
                )
            alive = existing is not None and not existing.deleted
            if alive and create_only:
                raise AlreadyExistsError(f"identity {identity_id!r} already exists", reason=Reason.IDENTITY_EXISTS)
            vids = [int(r[0]) for r in drawn.fetchall()]
            held = counted.fetchone()
            count = (int(held[0]) if alive and held else 0) + len(faces)
            kept_name = name or (existing.name if alive and existing else None)
            kept_meta = meta or (dict(existing.metadata) if alive and existing else {})
            kept_created = existing.created_at if alive and existing else None
            # every write in one more round trip: they name the new seq as CURRENT_SEQ
            change = sql.queue_change(conn, ChangeKind.ENROLL, identity_id, vids, principal)
            conn.execute(
                "INSERT INTO identities (identity_id, name, metadata, deleted, seq, created_at, updated_at) "
                f"VALUES (%s, %s, %s, false, {sql.CURRENT_SEQ}, coalesce(to_timestamp(%s), now()), now()) "
                "ON CONFLICT (identity_id) DO UPDATE SET name = excluded.name, metadata = excluded.metadata, "
                "deleted = false, seq = excluded.seq, created_at = excluded.created_at, "
                "updated_at = excluded.updated_at",
                (identity_id, kept_name, Jsonb(kept_meta), kept_created),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO faces (vector_id, identity_id, seq, embedding, source, x1, y1, x2, y2, det_score, "
                    f"face_size, blur, created_at) VALUES (%s, %s, {sql.CURRENT_SEQ}, %s, %s, %s, %s, %s, %s, %s, "
                    "%s, %s, now())",
                    [
                        (v, identity_id, e, f.source, *(f.box or (None,) * 4), f.det_score, f.face_size, f.blur)
                        for v, e, f in zip(vids, embeddings, faces, strict=True)
                    ],
                )
            sql.audit(
                conn,
                "enroll",
                identity_id,
                change_seq=None,
                principal=principal,
                detail={"faces": len(vids)},
                current=True,
            )
            if request_id is not None:  # the result, without the identity id (as the journal's request table)
                conn.execute(
                    "INSERT INTO idempotency_keys (request_key, fingerprint, change_seq, result) VALUES (%s, %s, "
                    f"{sql.CURRENT_SEQ}, jsonb_build_object('seq', {sql.CURRENT_SEQ}, 'vector_ids', %s::bigint[], "
                    "'created', %s, 'face_count', %s))",
                    (sql.request_key(request_id), print_, vids, not alive, count),
                )
            written = change.fetchone()
            assert written is not None
            seq, now = int(written[0]), float(written[1])
            identity = LiveIdentity(identity_id, seq, False, kept_name, kept_meta, kept_created or now, now)
        return Enrolled(seq, np.asarray(vids, dtype=np.int64), not alive, count, identity)

    def delete_identity(
        self,
        identity_id: str,
        *,
        known_faces: Sequence[ErasedFace] = (),
        principal: str | None = None,
        via: str = "DeleteIdentity",
    ) -> Deleted:
        """Delete ``identity_id`` and every face of it: the store's, plus ``known_faces`` (faces the
        caller serves from a published version). One transaction records the erasure (HMAC digests),
        the log entry, the tombstones and the audit entry; the store's face rows (their embeddings) are
        deleted. ``IDENTITY_NOT_FOUND`` when neither the store nor ``known_faces`` has the identity."""
        with self.writing(f"delete {identity_id!r}") as conn:
            prior = conn.execute(sql.IDENTITY_SELECT + " WHERE identity_id = %s FOR UPDATE", (identity_id,)).fetchone()
            alive = prior is not None and not prior[2]
            if not alive and not known_faces:
                raise NotFoundError(f"identity {identity_id!r} does not exist", reason=Reason.IDENTITY_NOT_FOUND)
            stored = conn.execute(
                "SELECT vector_id, source FROM faces WHERE identity_id = %s ORDER BY vector_id", (identity_id,)
            ).fetchall()
            doomed = {int(v): s for v, s in stored}
            doomed.update({int(f.vector_id): f.source for f in known_faces if int(f.vector_id) not in doomed})
            erased = [ErasedFace(v, s) for v, s in sorted(doomed.items())]
            self.ledger.record(conn, ErasureKind.IDENTITY, identity_id, erased, via=via, principal=principal)
            vids = sorted(doomed)
            seq, now = sql.append_change(conn, ChangeKind.DELETE_IDENTITY, identity_id, vids, principal)
            conn.execute(
                "INSERT INTO identities (identity_id, name, metadata, deleted, seq, created_at, updated_at) "
                "VALUES (%s, NULL, '{}', true, %s, to_timestamp(%s), to_timestamp(%s)) "
                "ON CONFLICT (identity_id) DO UPDATE SET name = NULL, metadata = '{}', deleted = true, "
                "seq = excluded.seq, updated_at = excluded.updated_at",
                (identity_id, seq, now, now),
            )
            conn.execute("DELETE FROM faces WHERE identity_id = %s", (identity_id,))
            sql.tombstone(conn, [(v, identity_id) for v in vids], seq)
            sql.audit(
                conn,
                "delete_identity",
                identity_id,
                change_seq=seq,
                principal=principal,
                detail={"faces": len(vids), "via": via},
            )
            self.ledger.pseudonymise(conn, identity_id)  # no audit row names an erased identity
        return Deleted(seq, tuple(vids))

    def delete_faces(
        self,
        vector_ids: Sequence[int],
        identity_ids: Sequence[str | None] | None = None,
        *,
        sources: Sequence[str | None] | None = None,
        principal: str | None = None,
        via: str = "DeleteFaces",
    ) -> Deleted:
        """Delete faces by vector id: the store's (their owner and source read from the store) or a
        published version's (``identity_ids``/``sources`` given by the caller, who serves them).
        ``FACE_NOT_FOUND`` for a face neither has (or already deleted)."""
        asked = [int(v) for v in dict.fromkeys(int(v) for v in vector_ids)]
        if not asked:
            raise InvalidInputError("name at least one face id", reason=Reason.NO_FACE_IDS)
        given_owner = dict(zip(vector_ids, identity_ids or [None] * len(vector_ids), strict=True))
        given_source = dict(zip(vector_ids, sources or [None] * len(vector_ids), strict=True))
        with self.writing("delete faces") as conn:
            rows = conn.execute(
                "SELECT vector_id, identity_id, source FROM faces WHERE vector_id = ANY(%s) FOR UPDATE", (asked,)
            ).fetchall()
            owner = {int(r[0]): (r[1], r[2]) for r in rows}
            gone = {
                int(r[0]) for r in conn.execute("SELECT vector_id FROM tombstones WHERE vector_id = ANY(%s)", (asked,))
            }
            for v in asked:
                if v not in owner and given_owner.get(v) is not None and v not in gone:
                    owner[v] = (str(given_owner[v]), given_source.get(v))
            missing = [str(v) for v in asked if v not in owner]
            if missing:
                raise NotFoundError(f"faces do not exist: {', '.join(missing[:10])}", reason=Reason.FACE_NOT_FOUND)
            by_identity: dict[str, list[ErasedFace]] = {}
            for v in asked:
                who, source = owner[v]
                by_identity.setdefault(who, []).append(ErasedFace(v, source))
            for who, erased in sorted(by_identity.items()):
                self.ledger.record(conn, ErasureKind.FACES, who, erased, via=via, principal=principal)
            seq, _ = sql.append_change(conn, ChangeKind.DELETE_FACES, None, asked, principal)
            conn.execute("DELETE FROM faces WHERE vector_id = ANY(%s)", (asked,))
            sql.tombstone(conn, [(v, owner[v][0]) for v in asked], seq)
            for who, erased in sorted(by_identity.items()):
                conn.execute("UPDATE identities SET seq = %s, updated_at = now() WHERE identity_id = %s", (seq, who))
                sql.audit(
                    conn,
                    "delete_faces",
                    who,
                    change_seq=seq,
                    principal=principal,
                    detail={"faces": len(erased), "via": via},
                )
        return Deleted(seq, tuple(asked))

    def prune(self, upto_seq: int) -> int:
        """Forget log entries, tombstones and deleted identities with ``seq <= upto_seq`` (every kept
        index version absorbed them); faces stay (the store is the record of every live face).
        Returns the log entries removed."""
        with self.writing("prune") as conn:
            gone = conn.execute(
                "WITH gone AS (DELETE FROM changes WHERE seq <= %s RETURNING 1) SELECT count(*) FROM gone", (upto_seq,)
            ).fetchone()
            removed = int(gone[0]) if gone else 0
            conn.execute("DELETE FROM tombstones WHERE seq <= %s", (upto_seq,))
            conn.execute("DELETE FROM identities WHERE deleted AND seq <= %s", (upto_seq,))
            conn.execute(
                "INSERT INTO store_meta VALUES ('pruned_upto', %s) ON CONFLICT (key) DO UPDATE SET value = "
                "to_jsonb(greatest((store_meta.value)::bigint, (excluded.value)::bigint))",
                (Jsonb(upto_seq),),
            )
        return int(removed)

    def expire_request_ids(self, older_than_s: float) -> int:
        """Forget idempotency keys older than ``older_than_s`` seconds (a retry after that enrolls again)."""
        with self.connection("expire request ids") as conn, conn.transaction():
            cur = conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %s)", (older_than_s,)
            )
            return int(cur.rowcount)

    def expire_audit(self, older_than_days: float, now: float | None = None) -> int:
        """Delete audit rows past the retention (the rule of :func:`facesearch.store.audit_log.retention_cutoff`)."""
        with self.connection("expire audit rows") as conn, conn.transaction():
            cur = conn.execute(
                "DELETE FROM audit_log WHERE at < to_timestamp(%s)", (retention_cutoff(older_than_days, now),)
            )
            return int(cur.rowcount)

    # -- erasures and audit (facesearch.store.postgres.ledger) ------------------------
    def erased(self) -> ErasureSet:
        """What is erased now (as :meth:`facesearch.store.erasure_ledger.ErasureLedger.current`)."""
        return self.ledger.current()

    def is_erased(self, identity_id: str) -> bool:
        return self.ledger.current().identity_erased(identity_id)

    def unerase(self, identity_id: str, *, via: str, principal: str | None = None) -> int:
        return self.ledger.unerase(identity_id, via=via, principal=principal)

    def erasures(self, after: int = 0) -> list[Erasure]:
        return self.ledger.records(after)

    def audit_entries(self, after: int = 0, identity_id: str | None = None, limit: int = 10_000) -> list[AuditEntry]:
        return self.ledger.audit_entries(after, identity_id, limit)
