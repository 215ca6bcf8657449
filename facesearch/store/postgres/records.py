"""What the PostgreSQL store returns: log entries, write results, audit entries, pool settings.

Snapshots are :class:`~facesearch.store.live_journal.JournalSnapshot` (the live journal's type), so the
server's live state loads a store's changes exactly as it loads a journal's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from facesearch.store.live_journal import LiveIdentity, NewFace

__all__ = [
    "AuditEntry",
    "Change",
    "ChangeKind",
    "Deleted",
    "Enrolled",
    "PoolSettings",
    "enroll_fingerprint",
]


class ChangeKind(StrEnum):
    ENROLL = "enroll"
    DELETE_IDENTITY = "delete_identity"
    DELETE_FACES = "delete_faces"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """The store's connection pool (psycopg_pool): sizes and how long a caller waits.

    ``timeout_s``: how long an operation waits for a working connection before it fails with
    ``STORE_UNAVAILABLE`` (while PostgreSQL is down, every write fails after this long).
    ``reconnect_timeout_s``: how long the pool keeps retrying one reconnection (backing off from 1 s)
    before it gives up and lets the next operation start a fresh attempt; kept short, so that writes
    resume within a few seconds of PostgreSQL coming back however long it was down.
    """

    min_size: int = 1
    max_size: int = 8
    timeout_s: float = 5.0
    connect_timeout_s: int = 5
    reconnect_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log, in ``seq`` order (commit order)."""

    seq: int
    kind: ChangeKind
    identity_id: str | None
    vector_ids: tuple[int, ...]
    at: float  # unix seconds
    principal: str | None


@dataclass(frozen=True, slots=True)
class Enrolled:
    """The result of an enroll. ``replayed``: a retry with a known ``request_id`` got the first result."""

    seq: int
    vector_ids: np.ndarray  # int64, one per face, in the order given
    created: bool  # the identity did not exist (or was deleted) before
    face_count: int  # the identity's faces in the store after the enroll
    identity: LiveIdentity
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Deleted:
    seq: int
    vector_ids: tuple[int, ...]  # every face tombstoned by the deletion


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: float
    principal: str | None
    action: str  # enroll, delete_identity, delete_faces, unerase
    identity_id: str | None
    change_seq: int | None
    detail: Mapping[str, object]


def enroll_fingerprint(
    identity_id: str,
    name: str | None,
    metadata: Mapping[str, str],
    faces: Sequence[NewFace],
    *,
    create_only: bool,
    principal: str | None,
) -> str:
    """What an enroll asked, as a digest: a ``request_id`` reused for a different request is refused."""
    h = hashlib.sha256()
    head = {"i": identity_id, "n": name, "m": dict(sorted(metadata.items())), "c": create_only, "p": principal}
    h.update(json.dumps(head, sort_keys=True).encode())
    for f in faces:
        h.update(np.ascontiguousarray(f.embedding, dtype="<f4").tobytes())
        h.update(json.dumps([f.source, f.box, f.det_score, f.face_size, f.blur]).encode())
    return h.hexdigest()
