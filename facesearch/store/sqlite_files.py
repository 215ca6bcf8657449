"""The one way the store opens a small SQLite file that must survive a power loss and keep no
deleted bytes (the erasure ledger, the audit log): WAL, ``synchronous = FULL``, ``secure_delete``."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_durable(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating if needed) ``path`` in autocommit mode, shareable across threads (callers lock),
    with the durability pragmas set and ``schema`` (idempotent DDL) applied. Raises ``sqlite3.Error``."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = ON")  # deleted rows are overwritten, not left in free pages
        conn.executescript(schema)
    except sqlite3.Error:
        conn.close()
        raise
    return conn
