"""The PostgreSQL store's SQL, row by row: what its transactions run and how rows become domain types.

Every function here runs on a connection inside the caller's transaction (:class:`PgStore` opens
and commits them); none commits. ``append_change`` is the one place a change log entry is written,
with its ``NOTIFY``, and must run under the store's append lock.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from facesearch.errors import InvalidInputError, Reason
from facesearch.store.live_journal import LiveFace, LiveIdentity, NewFace
from facesearch.store.postgres.records import ChangeKind, Enrolled

__all__ = [
    "APPEND_LOCK",
    "CURRENT_SEQ",
    "EPOCH",
    "IDENTITY_SELECT",
    "NOTIFY_CHANNEL",
    "append_change",
    "audit",
    "bind_meta",
    "embedding_rows",
    "face_count",
    "face_of",
    "high_water",
    "identity_of",
    "pruned_upto",
    "queue_change",
    "replayed",
    "request_key",
    "tombstone",
]

#: pg_advisory_xact_lock key held by every write from before its seq is drawn until it commits.
APPEND_LOCK = int.from_bytes(b"fsappend", "big") - (1 << 63)
#: LISTEN/NOTIFY channel; the payload is the committed change's seq.
NOTIFY_CHANNEL = "facesearch_changes"
#: The seq of the change this transaction appended (after :func:`queue_change`).
CURRENT_SEQ = "currval('changes_seq_seq')"
#: A timestamptz column as unix seconds.
EPOCH = "extract(epoch FROM {})::float8"

IDENTITY_SELECT = (
    f"SELECT identity_id, seq, deleted, name, metadata, {EPOCH.format('created_at')}, "
    f"{EPOCH.format('updated_at')} FROM identities"
)


def identity_of(r: Sequence[Any]) -> LiveIdentity:
    return LiveIdentity(r[0], int(r[1]), bool(r[2]), r[3], dict(r[4] or {}), float(r[5]), float(r[6]))


def face_of(r: Sequence[Any]) -> LiveFace:
    box = None if r[4] is None else (float(r[4]), float(r[5]), float(r[6]), float(r[7]))
    return LiveFace(int(r[0]), int(r[1]), r[2], r[3], box, r[8], r[9], r[10], float(r[11]))


def embedding_rows(faces: Sequence[NewFace], d: int) -> list[bytes]:
    out = []
    for f in faces:
        e = np.ascontiguousarray(f.embedding, dtype="<f4")
        if e.shape != (d,) or not np.all(np.isfinite(e)):
            raise InvalidInputError(f"an embedding of shape {e.shape} (finite values of shape ({d},) expected)")
        out.append(e.tobytes())
    return out


def high_water(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
    return max(int(row[0]) if row else 0, pruned_upto(conn))


def pruned_upto(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT value FROM store_meta WHERE key = 'pruned_upto'").fetchone()
    return int(row[0]) if row else 0


def face_count(conn: psycopg.Connection[Any], identity_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM faces WHERE identity_id = %s", (identity_id,)).fetchone()
    return int(row[0]) if row else 0


def append_change(
    conn: psycopg.Connection[Any], kind: ChangeKind, identity_id: str | None, vids: list[int], principal: str | None
) -> tuple[int, float]:
    """The log entry (under :data:`APPEND_LOCK`) and its NOTIFY (delivered at commit): ``(seq, time)``."""
    row = queue_change(conn, kind, identity_id, vids, principal).fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def queue_change(
    conn: psycopg.Connection[Any], kind: ChangeKind, identity_id: str | None, vids: list[int], principal: str | None
) -> psycopg.Cursor[Any]:
    """:func:`append_change` without waiting for its result (in a pipeline: later statements of the
    transaction name the new seq as :data:`CURRENT_SEQ`); the cursor's row is ``(seq, time)``."""
    cur = conn.execute(
        f"INSERT INTO changes (kind, identity_id, vector_ids, principal) VALUES (%s, %s, %s, %s) "
        f"RETURNING seq, {EPOCH.format('at')}",
        (str(kind), identity_id, vids, principal),
    )
    conn.execute(f"SELECT pg_notify(%s, {CURRENT_SEQ}::text)", (NOTIFY_CHANNEL,))
    return cur


def tombstone(conn: psycopg.Connection[Any], rows: Sequence[tuple[int, str | None]], seq: int) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tombstones (vector_id, seq, identity_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (vector_id) DO UPDATE SET seq = excluded.seq, identity_id = excluded.identity_id",
            [(v, seq, who) for v, who in rows],
        )


def audit(
    conn: psycopg.Connection[Any],
    action: str,
    identity_id: str | None,
    *,
    change_seq: int | None,
    principal: str | None,
    detail: Mapping[str, object],
    current: bool = False,
) -> None:
    """An audit entry; ``current``: of the change this transaction appended (``change_seq`` ignored)."""
    seq = CURRENT_SEQ if current else "%s"
    conn.execute(
        f"INSERT INTO audit_log (principal, action, identity_id, change_seq, detail) VALUES (%s, %s, %s, {seq}, %s)",
        (principal, action, identity_id, *(() if current else (change_seq,)), Jsonb(_present(detail))),
    )


def _present(detail: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in detail.items() if v is not None}


def replayed(
    row: Sequence[Any] | None, request_id: str, fingerprint: str, identity: LiveIdentity | None, identity_id: str
) -> Enrolled | None:
    """The first result of ``request_id`` from its ``idempotency_keys`` row (None: a new request);
    a different request under a known id is refused (``REQUEST_ID_REUSED``)."""
    if row is None:
        return None
    if row[0] != fingerprint:
        raise InvalidInputError(
            f"request_id {request_id!r} was used for a different enroll (other identity, photos, options or "
            "principal); use a new request_id for a new request",
            reason=Reason.REQUEST_ID_REUSED,
        )
    first = row[1]
    return Enrolled(
        int(first["seq"]),
        np.asarray(first["vector_ids"], dtype=np.int64),
        bool(first["created"]),
        int(first["face_count"]),
        identity or LiveIdentity(identity_id, 0, True, None, {}, 0, 0),
        replayed=True,
    )


def request_key(request_id: str) -> str:
    """The stored key of a client's request id: its SHA-256 (the id itself is never stored, as in the journal)."""
    return hashlib.sha256(request_id.encode()).hexdigest()


def bind_meta(conn: psycopg.Connection[Any], contract_id: str, d: int) -> dict[str, Any]:
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
