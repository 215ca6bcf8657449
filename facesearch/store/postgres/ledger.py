"""The erasure ledger and the audit log of a PostgreSQL store, beside its change log.

Same records and digests as :mod:`facesearch.store.erasure_ledger` (``HMAC-SHA256`` of the identity
id, and of identity and source file name, with the store's random key; never an id, name or
embedding), so :func:`~facesearch.store.erasure_ledger.fold`, ``ErasureSet`` and ``purge_store`` work
on both. The difference: here an erasure is written in the *same transaction* as the deletion, its
log entry and its audit entry (:meth:`PgLedger.record` runs inside the store's write), so they are
durable together or not at all.

The audit log (who enrolled, deleted, erased or unerased whom, when, by which change) is never
pruned with the change log. An erased identity's rows keep only the ledger's digest of its id
(``identity_id`` NULL, ``detail.subject`` the digest), as the SQLite audit log's do: the deletion
rewrites them in its own transaction (:meth:`PgLedger.pseudonymise`), so no row names an erased
identity once the deletion commits; :meth:`PgLedger.pseudonymise_erased` finishes the rewrite for rows
an older release left named (run by every expiry of :mod:`facesearch.store.postgres.retention`: a
replica's every ``FACESEARCH_STORE_EXPIRE_S``, ``compact`` and ``prune``).
:meth:`PgLedger.audit_entries` of an identity finds them by digest too.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from facesearch.errors import NotFoundError, Reason
from facesearch.store.erasure_ledger import Digester, ErasedFace, Erasure, ErasureKind, ErasureSet, fold
from facesearch.store.postgres.records import AuditEntry
from facesearch.store.postgres.sql import EPOCH, audit

if TYPE_CHECKING:
    from facesearch.store.postgres.store import PgStore

__all__ = ["PgLedger"]


class PgLedger:
    """A store's erasure ledger and audit log (``store.ledger``); thread-safe."""

    def __init__(self, store: PgStore, digester: Digester) -> None:
        self._store = store
        self.digester = digester
        self._erased = ErasureSet(0, digester)
        self._erased_lock = threading.Lock()

    def record(
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

    def erased_now(self, conn: psycopg.Connection[Any], identity_id: str) -> bool:
        return self.is_erasure(self.query_erased(conn, identity_id).fetchone())

    def query_erased(self, conn: psycopg.Connection[Any], identity_id: str) -> psycopg.Cursor[Any]:
        """The identity's last erasure or unerase (its row: :meth:`is_erasure`), not waited for."""
        return conn.execute(
            "SELECT kind FROM erasures WHERE subject = %s AND kind IN ('identity', 'unerase') "
            "ORDER BY seq DESC LIMIT 1",
            (self.digester.subject(identity_id),),
        )

    @staticmethod
    def is_erasure(row: Sequence[Any] | None) -> bool:
        return row is not None and row[0] == ErasureKind.IDENTITY

    def records(self, after: int = 0) -> list[Erasure]:
        with self._store.connection("read erasures") as conn:
            rows = conn.execute(
                f"SELECT seq, kind, subject, vector_ids, faces, {EPOCH.format('at')}, principal, via FROM erasures "
                "WHERE seq > %s ORDER BY seq",
                (after,),
            ).fetchall()
        return [Erasure(r[0], ErasureKind(r[1]), r[2], tuple(r[3]), tuple(r[4]), r[5], r[6], r[7]) for r in rows]

    def current(self) -> ErasureSet:
        """What is erased now (as :meth:`facesearch.store.erasure_ledger.ErasureLedger.current`)."""
        with self._erased_lock:
            known = self._erased
            new = self.records(after=known.position)
            if new:
                self._erased = known = fold(new, self.digester, known)
            return known

    def unerase(self, identity_id: str, *, via: str, principal: str | None = None) -> int:
        """Permit ``identity_id`` to be enrolled again (``NOT_ERASED`` when it is not erased); returns
        the ledger seq. Faces erased before stay erased."""
        with self._store.writing(f"unerase {identity_id!r}") as conn:
            if not self.erased_now(conn, identity_id):
                raise NotFoundError(f"identity {identity_id!r} is not erased", reason=Reason.NOT_ERASED)
            row = conn.execute(
                "INSERT INTO erasures (kind, subject, principal, via) VALUES ('unerase', %s, %s, %s) RETURNING seq",
                (self.digester.subject(identity_id), principal, via),
            ).fetchone()
            audit(conn, "unerase", identity_id, change_seq=None, principal=principal, detail={"via": via})
        return int(row[0]) if row else 0

    def audit_entries(self, after: int = 0, identity_id: str | None = None, limit: int = 10_000) -> list[AuditEntry]:
        """Rows after ``after``, oldest first: all, or one identity's (by id, or by digest once erased)."""
        subject = None if identity_id is None else self.digester.subject(identity_id)
        with self._store.connection("read the audit log") as conn:
            rows = conn.execute(
                f"SELECT seq, {EPOCH.format('at')}, principal, action, identity_id, change_seq, detail FROM audit_log "
                "WHERE seq > %s AND (%s::text IS NULL OR identity_id = %s OR detail->>'subject' = %s) "
                "ORDER BY seq LIMIT %s",
                (after, identity_id, identity_id, subject, limit),
            ).fetchall()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def pseudonymise_erased(self) -> int:
        """Rewrite the audit rows of every identity erased now to keep only its digest; returns the rows
        changed. Looks only at identities whose deletion is still named in the log (``delete_identity``
        rows with an id): one digest each."""
        erased = self.current()
        if not erased.subjects:
            return 0
        changed = 0
        with self._store.connection("pseudonymise the audit rows of erased identities") as conn, conn.transaction():
            named = conn.execute(
                "SELECT DISTINCT identity_id FROM audit_log "
                "WHERE action = 'delete_identity' AND identity_id IS NOT NULL"
            ).fetchall()
            for (identity_id,) in named:
                if erased.identity_erased(identity_id):
                    changed += self.pseudonymise(conn, identity_id)
        return changed

    def pseudonymise(self, conn: psycopg.Connection[Any], identity_id: str) -> int:
        """Rewrite every audit row of ``identity_id`` to keep only its digest, in the caller's
        transaction (the deletion's: its own row included); returns the rows changed."""
        cur = conn.execute(
            "UPDATE audit_log SET identity_id = NULL, detail = detail || jsonb_build_object('subject', "
            "%s::text) WHERE identity_id = %s",
            (self.digester.subject(identity_id), identity_id),
        )
        return int(cur.rowcount)
