"""The audit log of an index root: who enrolled, deleted, erased or unerased whom, and when.

File
    ``ROOT/audit.sqlite`` (WAL, ``synchronous=FULL``, ``secure_delete``), apart from the live
    journal: compaction and journal pruning never touch it. The server appends a row for every
    Enroll that writes, every DeleteIdentity and DeleteFaces, durably before the change commits and
    before the reply; ``facesearch-index unerase`` (and other command-line erasures) append theirs.
    A row whose change then fails is marked ``failed``; a crash between the two leaves an ``ok`` row
    for a change the journal does not hold (the journal is the truth of *what is*, this log of
    *who asked*).

Rows
    ``at`` (unix seconds), ``principal`` (the authenticated caller's name, ``anonymous`` without
    auth, ``os:USER`` for command-line tools), ``operation`` (:class:`AuditOp`), the identity,
    ``faces`` (how many faces the operation added or removed), ``request_id`` (an Enroll's
    idempotency key), ``via`` (the RPC or command) and ``outcome``.

Erasure
    An identity's rows name it by id until it is erased. Its erasure (DeleteIdentity, or a
    command-line removal) rewrites every row of it to keep only ``subject``, the erasure ledger's
    keyed digest of the id (:class:`facesearch.store.erasure_ledger.Digester`), and records the
    erasure itself that way; the rewrite zeroes the old bytes (``secure_delete``) and checkpoints
    the write-ahead log, so no copy of the id is left in the file. The ledger is written first: if a
    crash falls between the two, :meth:`AuditLog.pseudonymise_erased` (run by the server at start
    and by ``facesearch-index audit prune``) finishes the rewrite. Whoever knows the id can still
    find those rows (:meth:`AuditLog.entries` with ``identity`` matches the digest too).

Bounds
    Rows older than the retention (``FACESEARCH_AUDIT_RETENTION_DAYS``, 365 by default) are deleted
    by :meth:`AuditLog.prune`: by the server at start and then at most hourly as it writes, and by
    ``facesearch-index audit prune ROOT``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from facesearch.errors import IndexFormatError, Reason
from facesearch.store.erasure_ledger import Digester
from facesearch.store.sqlite_files import connect_durable
from facesearch.store.storage_errors import storage_errors

__all__ = [
    "AUDIT_FILE",
    "DEFAULT_RETENTION_DAYS",
    "AuditEntry",
    "AuditLog",
    "AuditOp",
    "retention_cutoff",
]

AUDIT_FILE = "audit.sqlite"
SCHEMA_VERSION = 1
DEFAULT_RETENTION_DAYS = 365.0


def retention_cutoff(older_than_days: float, now: float | None = None) -> float:
    """The retention rule, for this log and the PostgreSQL store's: rows with ``at`` (epoch seconds)
    before this are deleted."""
    return (time.time() if now is None else now) - older_than_days * 86400.0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    principal TEXT NOT NULL,
    operation TEXT NOT NULL,
    identity_id TEXT,
    subject TEXT,
    faces INTEGER NOT NULL,
    request_id TEXT,
    via TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_identity ON entries(identity_id);
CREATE INDEX IF NOT EXISTS entries_subject ON entries(subject);
CREATE INDEX IF NOT EXISTS entries_at ON entries(at);
"""


class AuditOp(StrEnum):
    ENROLL = "enroll"
    DELETE_IDENTITY = "delete_identity"
    DELETE_FACES = "delete_faces"
    ERASE = "erase"  # a command-line removal of an identity
    UNERASE = "unerase"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: float
    principal: str
    operation: str
    identity_id: str | None  # None once the identity is erased
    subject: str | None  # the ledger's digest of the id (set when erased)
    faces: int
    request_id: str | None
    via: str
    outcome: str  # ok | failed

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class AuditLog:
    """``ROOT/audit.sqlite``, opened for appending and reading; safe to share between threads."""

    def __init__(self, path: Path, conn: sqlite3.Connection, digester: Digester) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()
        self.digester = digester

    @classmethod
    def open(cls, root: str | Path, digester: Digester) -> AuditLog:
        """Open (creating if needed) the audit log of the index root ``root``; ``digester`` is the
        root's erasure ledger's (the digest rows keep of an erased identity)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        path = root / AUDIT_FILE
        try:
            conn = connect_durable(path, _SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.Error as err:
            raise IndexFormatError(f"audit log {path} cannot be opened: {err}", reason=Reason.LEDGER_INVALID) from err
        if json.loads(row[0]) != SCHEMA_VERSION:
            conn.close()
            raise IndexFormatError(
                f"audit log {path} has schema {row[0]}, this code reads {SCHEMA_VERSION}", reason=Reason.LEDGER_INVALID
            )
        return cls(path, conn, digester)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- appends -----------------------------------------------------------------------
    def record(
        self,
        operation: AuditOp,
        identity_id: str,
        *,
        principal: str,
        faces: int = 0,
        request_id: str | None = None,
        via: str,
        erased: bool = False,
    ) -> int:
        """Append a row; durable on return (one fsync'd WAL commit). ``erased``: the operation erases
        the identity, so this row and every earlier one of it keep only its digest. Returns the row's seq."""
        subject = self.digester.subject(identity_id)
        stored_id, digest = (None, subject) if erased else (identity_id, None)
        with self._lock, storage_errors(f"audit log {self.path}: record {operation}"), self._txn():
            cur = self._conn.execute(
                "INSERT INTO entries (at, principal, operation, identity_id, subject, faces, request_id, via, outcome) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'ok')",
                (
                    time.time(),
                    principal,
                    str(operation),
                    stored_id,
                    digest,
                    faces,
                    request_id,
                    via,
                ),
            )
            if erased:
                self._conn.execute(
                    "UPDATE entries SET identity_id = NULL, subject = ? WHERE identity_id = ?", (subject, identity_id)
                )
            seq = int(cur.lastrowid or 0)
        if erased:
            self._checkpoint()
        return seq

    def pseudonymise(self, identity_id: str) -> int:
        """Rewrite ``identity_id``'s rows to keep only its digest (its erasure); returns how many."""
        subject = self.digester.subject(identity_id)
        with self._lock, storage_errors(f"audit log {self.path}: pseudonymise"), self._txn():
            n = self._conn.execute(
                "UPDATE entries SET identity_id = NULL, subject = ? WHERE identity_id = ?", (subject, identity_id)
            ).rowcount
        self._checkpoint()
        return int(n)

    def pseudonymise_erased(self, subjects: Collection[str]) -> int:
        """Pseudonymise every identity whose digest is in ``subjects`` (the ledger's erased ones) and
        whose rows still name it: what a crash between an erasure's ledger record and its audit row
        left behind. Costs one digest per distinct identity id named in the log; returns the rows changed."""
        if not subjects:
            return 0
        with self._lock:
            named = [
                r[0]
                for r in self._conn.execute("SELECT DISTINCT identity_id FROM entries WHERE identity_id IS NOT NULL")
            ]
        return sum(self.pseudonymise(i) for i in named if self.digester.subject(i) in subjects)

    def failed(self, seq: int) -> None:
        """Mark row ``seq`` failed (its change did not commit); best effort."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.execute("UPDATE entries SET outcome = 'failed' WHERE seq = ?", (seq,))

    def prune(self, *, older_than_days: float, now: float | None = None) -> int:
        """Delete rows older than ``older_than_days``; returns how many."""
        cutoff = retention_cutoff(older_than_days, now)
        with self._lock, storage_errors(f"audit log {self.path}: prune"), self._txn():
            n = self._conn.execute("DELETE FROM entries WHERE at < ?", (cutoff,)).rowcount
        if n:
            self._checkpoint()
        return int(n)

    # -- reads -------------------------------------------------------------------------
    def entries(
        self, *, identity_id: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Rows in order (oldest first): of one identity (by id, or by digest once erased), at or after ``since``."""
        where: list[str] = []
        args: list[object] = []
        if identity_id is not None:
            where.append("(identity_id = ? OR subject = ?)")
            args += [identity_id, self.digester.subject(identity_id)]
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        sql = "SELECT seq, at, principal, operation, identity_id, subject, faces, request_id, via, outcome FROM entries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [AuditEntry(*r) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    # -- internals ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the file and truncate it: the old pages (holding a rewritten
        id) leave the log. A reader holding the log open postpones it to the next checkpoint."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
