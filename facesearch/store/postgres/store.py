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
  serialised in the database (one short transaction each: a few ms and one commit flush), which is
  also what decides two replicas enrolling one identity at once: they run one after the other; a
  create-only enroll of the second gets ``IDENTITY_EXISTS``, an appending one adds its faces after
  the first's. The identity row's primary key is the backstop.
* a write is durable when it returns (``synchronous_commit`` on, PostgreSQL's default): the caller
  acknowledges only after that.
* PostgreSQL down or restarting: ``STORE_UNAVAILABLE`` (nothing written; the pool reconnects by
  itself, no restart of the store object); the connection lost during ``COMMIT``:
  ``STORE_OUTCOME_UNKNOWN`` (an enroll retried with the same ``request_id`` returns the first
  result, a deletion retried is a no-op).

Reads (:meth:`PgStore.snapshot`) run in one ``REPEATABLE READ`` read-only transaction: a consistent
cut with its high-water seq, as :class:`~facesearch.store.live_journal.JournalSnapshot`.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
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
from facesearch.store.erasure_ledger import Digester, ErasedFace, Erasure, ErasureKind, ErasureSet, fold
from facesearch.store.live_journal import JournalSnapshot, LiveFace, LiveIdentity, NewFace, Tombstone
from facesearch.store.postgres.failures import commit, store_errors, unavailable
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
from facesearch.store.store_location import redact

__all__ = ["APPEND_LOCK", "NOTIFY_CHANNEL", "PgStore"]

#: pg_advisory_xact_lock key held by every write from before its seq is drawn until it commits.
APPEND_LOCK = int.from_bytes(b"fsappend", "big") - (1 << 63)
#: LISTEN/NOTIFY channel; the payload is the committed change's seq.
NOTIFY_CHANNEL = "facesearch_changes"

_FACE_COLUMNS = "vector_id, seq, identity_id, source, x1, y1, x2, y2, det_score, face_size, blur"
_EPOCH = "extract(epoch FROM {})::float8"


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
        self.digester = Digester(bytes.fromhex(str(meta["erasure_key"])))
        self._erased = ErasureSet(0, self.digester)
        self._erased_lock = threading.Lock()

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
                meta = _bind_meta(conn, contract_id, d)
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
    def _conn(self, what: str) -> Iterator[psycopg.Connection[Any]]:
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
    def _write(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """One write transaction holding :data:`APPEND_LOCK`; committed by :func:`commit` (durable on exit)."""
        full = f"PostgreSQL store {self.where}: {what}"
        with self._conn(what) as conn:
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                yield conn
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
            commit(conn, full)

    # -- reads -------------------------------------------------------------------------
    def high_water(self) -> int:
        with self._conn("high water") as conn:
            return _high_water(conn)

    def pruned_upto(self) -> int:
        with self._conn("pruned position") as conn:
            return _pruned_upto(conn)

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Log entries with ``seq`` above ``seq``, in order (at most ``limit``)."""
        with self._conn("read the change log") as conn:
            rows = conn.execute(
                f"SELECT seq, kind, identity_id, vector_ids, {_EPOCH.format('at')}, principal FROM changes "
                "WHERE seq > %s ORDER BY seq LIMIT %s",
                (seq, limit),
            ).fetchall()
        return [Change(r[0], ChangeKind(r[1]), r[2], tuple(r[3]), r[4], r[5]) for r in rows]

    def identity(self, identity_id: str) -> LiveIdentity | None:
        with self._conn("read an identity") as conn:
            row = conn.execute(_IDENTITY_SELECT + " WHERE identity_id = %s", (identity_id,)).fetchone()
        return None if row is None else _identity(row)

    def face_count(self, identity_id: str) -> int:
        with self._conn("count faces") as conn:
            return _face_count(conn, identity_id)

    def snapshot(self, after_seq: int = 0) -> JournalSnapshot:
        """Every change with ``seq > after_seq`` as one consistent cut (identities touched, faces
        enrolled with their embeddings, tombstones), with the cut's high water.

        ``after_seq`` 0 is the whole store (every identity, every face not deleted). An ``after_seq``
        below what :meth:`prune` removed is refused (``STORE_LOG_PRUNED``): deletions in the pruned
        range are gone from the log, so a version that old cannot be brought up to date from it.
        """
        with self._conn("snapshot") as conn:
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            try:
                with conn.transaction():
                    pruned = _pruned_upto(conn)
                    if 0 < after_seq < pruned:
                        raise PreconditionError(
                            f"PostgreSQL store {self.where}: changes after seq {after_seq} were asked, but the log "
                            f"is pruned up to {pruned}: serve a newer index version (or compact one from the store)",
                            reason=Reason.STORE_LOG_PRUNED,
                        )
                    high = _high_water(conn)
                    identities = [
                        _identity(r)
                        for r in conn.execute(
                            _IDENTITY_SELECT + " WHERE seq > %s ORDER BY identity_id", (after_seq,)
                        ).fetchall()
                    ]
                    rows = conn.execute(
                        f"SELECT {_FACE_COLUMNS}, {_EPOCH.format('created_at')}, embedding FROM faces "
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
            finally:
                conn.read_only = False
                conn.isolation_level = None
        faces = [_face(r) for r in rows]
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
    ) -> Enrolled:
        """Add ``faces`` to ``identity_id`` (creating it); durable on return.

        ``name``/``metadata`` None or empty keep the identity's. Refused: an erased identity
        (``IDENTITY_ERASED``), an existing one when ``create_only`` (``IDENTITY_EXISTS``; an identity only
        in a published version is the caller's to check), a ``request_id`` already used for another
        request. A known ``request_id`` returns the first result (``replayed``), writing nothing.
        """
        embeddings = _embedding_rows(faces, self.d)
        meta = dict(metadata or {})
        print_ = enroll_fingerprint(identity_id, name, meta, faces, create_only=create_only, principal=principal)
        with self._write(f"enroll {identity_id!r}") as conn:
            if request_id is not None:
                first = _replay(conn, request_id, print_, identity_id)
                if first is not None:
                    return first
            if self._erased_now(conn, identity_id):
                raise PreconditionError(
                    f"identity {identity_id!r} was erased; unerase it first (facesearch-index unerase) to enroll it "
                    "again",
                    reason=Reason.IDENTITY_ERASED,
                )
            prior = conn.execute(_IDENTITY_SELECT + " WHERE identity_id = %s FOR UPDATE", (identity_id,)).fetchone()
            existing = None if prior is None else _identity(prior)
            alive = existing is not None and not existing.deleted
            if alive and create_only:
                raise AlreadyExistsError(f"identity {identity_id!r} already exists", reason=Reason.IDENTITY_EXISTS)
            vids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT nextval('face_vector_ids') FROM generate_series(1, %s)", (len(faces),)
                ).fetchall()
            ]
            seq, now = _append(conn, ChangeKind.ENROLL, identity_id, vids, principal)
            kept_name = name or (existing.name if alive and existing else None)
            kept_meta = meta or (dict(existing.metadata) if alive and existing else {})
            created_at = existing.created_at if alive and existing else now
            conn.execute(
                "INSERT INTO identities (identity_id, name, metadata, deleted, seq, created_at, updated_at) "
                "VALUES (%s, %s, %s, false, %s, to_timestamp(%s), to_timestamp(%s)) "
                "ON CONFLICT (identity_id) DO UPDATE SET name = excluded.name, metadata = excluded.metadata, "
                "deleted = false, seq = excluded.seq, created_at = excluded.created_at, "
                "updated_at = excluded.updated_at",
                (identity_id, kept_name, Jsonb(kept_meta), seq, created_at, now),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO faces (vector_id, identity_id, seq, embedding, source, x1, y1, x2, y2, det_score, "
                    "face_size, blur, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                    "to_timestamp(%s))",
                    [
                        (
                            v,
                            identity_id,
                            seq,
                            e,
                            f.source,
                            *(f.box or (None,) * 4),
                            f.det_score,
                            f.face_size,
                            f.blur,
                            now,
                        )
                        for v, e, f in zip(vids, embeddings, faces, strict=True)
                    ],
                )
            count = _face_count(conn, identity_id)
            result = {
                "seq": seq,
                "identity_id": identity_id,
                "vector_ids": vids,
                "created": not alive,
                "face_count": count,
            }
            _audit(
                conn,
                "enroll",
                identity_id,
                change_seq=seq,
                principal=principal,
                detail={"faces": len(vids)},
            )
            if request_id is not None:
                conn.execute(
                    "INSERT INTO idempotency_keys (request_key, fingerprint, change_seq, result) "
                    "VALUES (%s, %s, %s, %s)",
                    (request_key(request_id), print_, seq, Jsonb(result)),
                )
            row = LiveIdentity(identity_id, seq, False, kept_name, kept_meta, created_at, now)
        return Enrolled(seq, np.asarray(vids, dtype=np.int64), not alive, count, row)

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
        with self._write(f"delete {identity_id!r}") as conn:
            prior = conn.execute(_IDENTITY_SELECT + " WHERE identity_id = %s FOR UPDATE", (identity_id,)).fetchone()
            alive = prior is not None and not prior[2]
            if not alive and not known_faces:
                raise NotFoundError(f"identity {identity_id!r} does not exist", reason=Reason.IDENTITY_NOT_FOUND)
            stored = conn.execute(
                "SELECT vector_id, source FROM faces WHERE identity_id = %s ORDER BY vector_id", (identity_id,)
            ).fetchall()
            doomed = {int(v): s for v, s in stored}
            doomed.update({int(f.vector_id): f.source for f in known_faces if int(f.vector_id) not in doomed})
            erased = [ErasedFace(v, s) for v, s in sorted(doomed.items())]
            self._record_erasure(conn, ErasureKind.IDENTITY, identity_id, erased, via=via, principal=principal)
            vids = sorted(doomed)
            seq, now = _append(conn, ChangeKind.DELETE_IDENTITY, identity_id, vids, principal)
            conn.execute(
                "INSERT INTO identities (identity_id, name, metadata, deleted, seq, created_at, updated_at) "
                "VALUES (%s, NULL, '{}', true, %s, to_timestamp(%s), to_timestamp(%s)) "
                "ON CONFLICT (identity_id) DO UPDATE SET name = NULL, metadata = '{}', deleted = true, "
                "seq = excluded.seq, updated_at = excluded.updated_at",
                (identity_id, seq, now, now),
            )
            conn.execute("DELETE FROM faces WHERE identity_id = %s", (identity_id,))
            _tombstone(conn, [(v, identity_id) for v in vids], seq)
            _audit(
                conn,
                "delete_identity",
                identity_id,
                change_seq=seq,
                principal=principal,
                detail={"faces": len(vids), "via": via},
            )
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
        with self._write("delete faces") as conn:
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
                self._record_erasure(conn, ErasureKind.FACES, who, erased, via=via, principal=principal)
            seq, _ = _append(conn, ChangeKind.DELETE_FACES, None, asked, principal)
            conn.execute("DELETE FROM faces WHERE vector_id = ANY(%s)", (asked,))
            _tombstone(conn, [(v, owner[v][0]) for v in asked], seq)
            for who, erased in sorted(by_identity.items()):
                conn.execute("UPDATE identities SET seq = %s, updated_at = now() WHERE identity_id = %s", (seq, who))
                _audit(
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
        with self._write("prune") as conn:
            removed = conn.execute("DELETE FROM changes WHERE seq <= %s", (upto_seq,)).rowcount
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
        with self._conn("expire request ids") as conn, conn.transaction():
            cur = conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %s)", (older_than_s,)
            )
            return int(cur.rowcount)

    # -- erasures ----------------------------------------------------------------------
    def _record_erasure(
        self,
        conn: psycopg.Connection[Any],
        kind: ErasureKind,
        identity_id: str,
        faces: Sequence[ErasedFace],
        *,
        via: str,
        principal: str | None,
    ) -> None:
        digests = sorted({d for f in faces if (d := self.digester.face(identity_id, f.source)) is not None})
        who = (principal, via)
        conn.execute(
            "INSERT INTO erasures (kind, subject, vector_ids, faces, principal, via) VALUES (%s, %s, %s, %s, %s, %s)",
            (str(kind), self.digester.subject(identity_id), sorted({int(f.vector_id) for f in faces}), digests, *who),
        )

    def _erased_now(self, conn: psycopg.Connection[Any], identity_id: str) -> bool:
        row = conn.execute(
            "SELECT kind FROM erasures WHERE subject = %s AND kind IN ('identity', 'unerase') "
            "ORDER BY seq DESC LIMIT 1",
            (self.digester.subject(identity_id),),
        ).fetchone()
        return row is not None and row[0] == ErasureKind.IDENTITY

    def erasures(self, after: int = 0) -> list[Erasure]:
        with self._conn("read erasures") as conn:
            rows = conn.execute(
                f"SELECT seq, kind, subject, vector_ids, faces, {_EPOCH.format('at')}, principal, via FROM erasures "
                "WHERE seq > %s ORDER BY seq",
                (after,),
            ).fetchall()
        return [Erasure(r[0], ErasureKind(r[1]), r[2], tuple(r[3]), tuple(r[4]), r[5], r[6], r[7]) for r in rows]

    def erased(self) -> ErasureSet:
        """What is erased now (as :meth:`facesearch.store.erasure_ledger.ErasureLedger.current`)."""
        with self._erased_lock:
            known = self._erased
            new = self.erasures(after=known.position)
            if new:
                self._erased = known = fold(new, self.digester, known)
            return known

    def is_erased(self, identity_id: str) -> bool:
        return self.erased().identity_erased(identity_id)

    def unerase(self, identity_id: str, *, via: str, principal: str | None = None) -> int:
        """Permit ``identity_id`` to be enrolled again (``NOT_ERASED`` when it is not erased); returns
        the ledger seq. Faces erased before stay erased."""
        with self._write(f"unerase {identity_id!r}") as conn:
            if not self._erased_now(conn, identity_id):
                raise NotFoundError(f"identity {identity_id!r} is not erased", reason=Reason.NOT_ERASED)
            row = conn.execute(
                "INSERT INTO erasures (kind, subject, principal, via) VALUES ('unerase', %s, %s, %s) RETURNING seq",
                (self.digester.subject(identity_id), principal, via),
            ).fetchone()
            _audit(conn, "unerase", identity_id, change_seq=None, principal=principal, detail={"via": via})
        return int(row[0]) if row else 0

    # -- audit -------------------------------------------------------------------------
    def audit_entries(self, after: int = 0, identity_id: str | None = None, limit: int = 10_000) -> list[AuditEntry]:
        with self._conn("read the audit log") as conn:
            rows = conn.execute(
                f"SELECT seq, {_EPOCH.format('at')}, principal, action, identity_id, change_seq, detail FROM audit_log "
                "WHERE seq > %s AND (%s::text IS NULL OR identity_id = %s) ORDER BY seq LIMIT %s",
                (after, identity_id, identity_id, limit),
            ).fetchall()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]


# -- helpers (run inside a transaction) --------------------------------------------------
_IDENTITY_SELECT = (
    f"SELECT identity_id, seq, deleted, name, metadata, {_EPOCH.format('created_at')}, "
    f"{_EPOCH.format('updated_at')} FROM identities"
)


def _identity(r: Sequence[Any]) -> LiveIdentity:
    return LiveIdentity(r[0], int(r[1]), bool(r[2]), r[3], dict(r[4] or {}), float(r[5]), float(r[6]))


def _face(r: Sequence[Any]) -> LiveFace:
    box = None if r[4] is None else (float(r[4]), float(r[5]), float(r[6]), float(r[7]))
    return LiveFace(int(r[0]), int(r[1]), r[2], r[3], box, r[8], r[9], r[10], float(r[11]))


def _embedding_rows(faces: Sequence[NewFace], d: int) -> list[bytes]:
    out = []
    for f in faces:
        e = np.ascontiguousarray(f.embedding, dtype="<f4")
        if e.shape != (d,) or not np.all(np.isfinite(e)):
            raise InvalidInputError(f"an embedding of shape {e.shape} (finite values of shape ({d},) expected)")
        out.append(e.tobytes())
    return out


def _high_water(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
    return max(int(row[0]) if row else 0, _pruned_upto(conn))


def _pruned_upto(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT value FROM store_meta WHERE key = 'pruned_upto'").fetchone()
    return int(row[0]) if row else 0


def _face_count(conn: psycopg.Connection[Any], identity_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM faces WHERE identity_id = %s", (identity_id,)).fetchone()
    return int(row[0]) if row else 0


def _append(
    conn: psycopg.Connection[Any], kind: ChangeKind, identity_id: str | None, vids: list[int], principal: str | None
) -> tuple[int, float]:
    """The log entry (under :data:`APPEND_LOCK`) and its NOTIFY (delivered at commit): ``(seq, time)``."""
    row = conn.execute(
        f"INSERT INTO changes (kind, identity_id, vector_ids, principal) VALUES (%s, %s, %s, %s) "
        f"RETURNING seq, {_EPOCH.format('at')}",
        (str(kind), identity_id, vids, principal),
    ).fetchone()
    assert row is not None
    seq, at = int(row[0]), float(row[1])
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(seq)))
    return seq, at


def _tombstone(conn: psycopg.Connection[Any], rows: Sequence[tuple[int, str | None]], seq: int) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tombstones (vector_id, seq, identity_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (vector_id) DO UPDATE SET seq = excluded.seq, identity_id = excluded.identity_id",
            [(v, seq, who) for v, who in rows],
        )


def _audit(
    conn: psycopg.Connection[Any],
    action: str,
    identity_id: str | None,
    *,
    change_seq: int | None,
    principal: str | None,
    detail: Mapping[str, object],
) -> None:
    conn.execute(
        "INSERT INTO audit_log (principal, action, identity_id, change_seq, detail) VALUES (%s, %s, %s, %s, %s)",
        (principal, action, identity_id, change_seq, Jsonb({k: v for k, v in detail.items() if v is not None})),
    )


def _replay(conn: psycopg.Connection[Any], request_id: str, fingerprint: str, identity_id: str) -> Enrolled | None:
    """The first result of ``request_id`` (None: new); a different request under it is refused."""
    row = conn.execute(
        "SELECT fingerprint, result FROM idempotency_keys WHERE request_key = %s", (request_key(request_id),)
    ).fetchone()
    if row is None:
        return None
    if row[0] != fingerprint:
        raise InvalidInputError(
            f"request_id {request_id!r} was used for a different enroll (other identity, photos, options or "
            "principal); use a new request_id for a new request",
            reason=Reason.REQUEST_ID_REUSED,
        )
    first = row[1]
    ident = conn.execute(_IDENTITY_SELECT + " WHERE identity_id = %s", (identity_id,)).fetchone()
    identity = _identity(ident) if ident is not None else LiveIdentity(identity_id, 0, True, None, {}, 0, 0)
    return Enrolled(
        int(first["seq"]),
        np.asarray(first["vector_ids"], dtype=np.int64),
        bool(first["created"]),
        int(first["face_count"]),
        identity,
        replayed=True,
    )


def request_key(request_id: str) -> str:
    """The stored key of a client's request id: its SHA-256 (the id itself is never stored, as in the journal)."""
    return hashlib.sha256(request_id.encode()).hexdigest()


def _bind_meta(conn: psycopg.Connection[Any], contract_id: str, d: int) -> dict[str, Any]:
    """The store's meta, binding it to ``contract_id``/``d`` and making its ids and key on first use."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO store_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                [
                    ("store_id", Jsonb(uuid.uuid4().hex)),
                    ("contract_id", Jsonb(contract_id)),
                    ("d", Jsonb(d)),
                    ("erasure_key", Jsonb(secrets.token_hex(32))),
                ],
            )
        return {str(k): v for k, v in conn.execute("SELECT key, value FROM store_meta").fetchall()}
