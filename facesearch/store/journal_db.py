"""The live journal's SQLite file: its schema, its meta, and how it is opened.

``journal.sqlite`` runs in WAL mode with ``synchronous = FULL`` (a commit is on disk when it
returns). The tables are described in :mod:`facesearch.store.live_journal`. Schema versions: 1,
before checksummed vectors (``vectors-*.f32``, no ``quarantine`` table); 2, now. The writer's open
migrates 1 to 2; code before checksums refuses 2 (it reads only 1), so it never misreads a new file.

Enroll requests (idempotency): the ``requests`` table maps the digest of a client's request id to the
digest of the request's content and the first result, written in the *same transaction* as the
enrollment it describes (:func:`put_request`), so a retry finds it exactly when the enrollment is
durable. It holds no identity id or name (only SHA-256 digests and face ids), is not part of what
compaction prunes (``seq``-keyed tables), and is bounded by age and count (:func:`expire_requests`).
The table is additive: older code ignores it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.store.journal_vectors import FORMAT_CHECKSUMMED, RecordLayout, file_name, write_file

__all__ = [
    "JOURNAL_FILE",
    "LIVE_VECTOR_ID_BASE",
    "READABLE_SCHEMAS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "StoredRequest",
    "connect",
    "count_requests",
    "expire_requests",
    "find_request",
    "high_water",
    "init_meta",
    "put_request",
    "read_meta",
    "request_key",
]

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # 1: before checksums (vectors-*.f32), migrated by the writer's open
JOURNAL_FILE = "journal.sqlite"
LIVE_VECTOR_ID_BASE = 1 << 48

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    identity_id TEXT,
    created_at REAL NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS identities (
    identity_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    name TEXT,
    metadata TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    vector_id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    identity_id TEXT NOT NULL,
    offset INTEGER NOT NULL,
    source TEXT,
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,
    det_score REAL,
    face_size REAL,
    blur REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_identity ON faces(identity_id);
CREATE TABLE IF NOT EXISTS tombstones (
    vector_id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    identity_id TEXT
);
CREATE TABLE IF NOT EXISTS quarantine (
    vector_id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    identity_id TEXT,
    problem TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_created ON requests(created_at);
"""


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def read_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    try:
        return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.OperationalError:  # no meta table: not a journal (or not initialised)
        return {}


def init_meta(conn: sqlite3.Connection, directory: Path, contract_id: str, d: int) -> dict[str, Any]:
    name = file_name(1)
    write_file(directory / name, RecordLayout(FORMAT_CHECKSUMMED, d), np.zeros(0, np.int64), np.zeros((0, d)))
    meta = {
        "schema_version": SCHEMA_VERSION,
        "contract_id": contract_id,
        "d": d,
        "journal_id": uuid.uuid4().hex,
        "vectors_file": name,
        "next_vector_id": LIVE_VECTOR_ID_BASE,
    }
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return read_meta(conn)


def high_water(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'ops'").fetchone()
    return int(row[0]) if row else 0


# -- enroll requests (idempotency keys) -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoredRequest:
    """A request id's first enrollment: its content digest and its result (JSON, as the writer stored it)."""

    digest: str
    result: str
    created_at: float


def request_key(request_id: str) -> str:
    """The table key of a client's request id: its SHA-256 (the id itself is never stored)."""
    return hashlib.sha256(request_id.encode()).hexdigest()


def find_request(conn: sqlite3.Connection, key: str, *, newer_than: float = 0.0) -> StoredRequest | None:
    """The stored request ``key`` (None: unknown, or recorded at or before ``newer_than``)."""
    try:
        row = conn.execute(
            "SELECT digest, result, created_at FROM requests WHERE key = ? AND created_at > ?", (key, newer_than)
        ).fetchone()
    except sqlite3.OperationalError:  # a journal opened by code before the table: no request recorded
        return None
    return None if row is None else StoredRequest(str(row[0]), str(row[1]), float(row[2]))


def put_request(conn: sqlite3.Connection, key: str, digest: str, result: str, now: float) -> None:
    """Record a request (inside the caller's write transaction: the enrollment's own)."""
    conn.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)", (key, digest, result, now))


def expire_requests(conn: sqlite3.Connection, *, before: float, keep: int) -> int:
    """Forget requests recorded before ``before`` and all but the ``keep`` newest; returns how many."""
    gone = conn.execute("DELETE FROM requests WHERE created_at < ?", (before,)).rowcount
    gone += conn.execute(
        "DELETE FROM requests WHERE key IN (SELECT key FROM requests ORDER BY created_at DESC LIMIT -1 OFFSET ?)",
        (max(0, keep),),
    ).rowcount
    return int(gone)


def count_requests(conn: sqlite3.Connection) -> int:
    try:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
