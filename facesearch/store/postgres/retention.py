"""What the PostgreSQL store may forget, and forgetting it: its change log up to the oldest kept
version's absorbed position, idempotency keys past the Enroll request window, audit rows past the
audit retention.

The log rule is the SQLite journal's (:func:`facesearch.store.journal_retention.retained_from`): the
least ``live_seq`` that any kept version of the shared index root absorbed of this store (0 for a
version built from photos or compacted from another store, which keeps everything). So a rollback
to any kept version still replays its tail from the log; a version deleted by
``facesearch-index prune`` lets the log shrink, and a version older than the pruned point is refused
(``STORE_LOG_PRUNED``). Run by the indexer under the root's lock (after a store compaction publishes,
and by ``facesearch-index prune``), never by a replica.

Keys and audit rows past their windows (:func:`expire`, the one place both are expired) go at every
indexer run above, and without one: each replica's :class:`~facesearch.store.postgres.follower.LogFollower`
calls :func:`expire_if_free` every ``FACESEARCH_STORE_EXPIRE_S`` (300 s; 0 turns it off), which runs
only when no other replica is running it (``pg_try_advisory_xact_lock`` on :data:`EXPIRE_LOCK`; the
deletes are idempotent anyway), so a key past its window disappears within that interval even when
no indexer job ever runs.

The windows are the server's settings, read from the same environment variables:
``FACESEARCH_ENROLL_REQUEST_TTL_S`` (as the SQLite journal's request ids) and
``FACESEARCH_AUDIT_RETENTION_DAYS`` (the rule of :func:`facesearch.store.audit_log.retention_cutoff`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from facesearch.errors import InvalidInputError
from facesearch.store.audit_log import DEFAULT_RETENTION_DAYS
from facesearch.store.journal_retention import retained_from
from facesearch.store.postgres.store import PgStore

__all__ = [
    "AUDIT_RETENTION_ENV",
    "EXPIRE_ENV",
    "EXPIRE_LOCK",
    "REQUEST_TTL_ENV",
    "Expired",
    "RetentionWindows",
    "StorePruned",
    "expire",
    "expire_if_free",
    "prune_store",
]

REQUEST_TTL_ENV = "FACESEARCH_ENROLL_REQUEST_TTL_S"
AUDIT_RETENTION_ENV = "FACESEARCH_AUDIT_RETENTION_DAYS"
EXPIRE_ENV = "FACESEARCH_STORE_EXPIRE_S"
DEFAULT_REQUEST_TTL_S = 86400.0
DEFAULT_EXPIRE_S = 300.0
#: pg_try_advisory_xact_lock key of a replica's expiry run ("fsexpire" as 8 bytes): one replica at a time.
EXPIRE_LOCK = int.from_bytes(b"fsexpire", "big") - (1 << 63)


@dataclass(frozen=True, slots=True)
class RetentionWindows:
    request_ttl_s: float = DEFAULT_REQUEST_TTL_S
    audit_retention_days: float = DEFAULT_RETENTION_DAYS
    expire_every_s: float = DEFAULT_EXPIRE_S  # how often a replica expires keys and audit rows (0: never)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetentionWindows:
        values = os.environ if env is None else env
        return cls(
            _non_negative(values, REQUEST_TTL_ENV, DEFAULT_REQUEST_TTL_S),
            _non_negative(values, AUDIT_RETENTION_ENV, DEFAULT_RETENTION_DAYS),
            _non_negative(values, EXPIRE_ENV, DEFAULT_EXPIRE_S),
        )


def _non_negative(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidInputError(f"{name}={text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{name}={text!r} must be a finite number >= 0")
    return value


@dataclass(frozen=True, slots=True)
class StorePruned:
    pruned_upto: int  # the store's pruned position now (every kept version absorbed up to it)
    changes: int  # log entries removed now
    request_ids: int
    audit_rows: int

    def describe(self) -> str:
        return (
            f"store log pruned up to seq {self.pruned_upto} ({self.changes} changes removed), "
            f"{self.request_ids} request ids and {self.audit_rows} audit rows past their retention deleted"
        )


@dataclass(frozen=True, slots=True)
class Expired:
    request_ids: int
    audit_rows: int
    pseudonymised: int = 0  # audit rows of erased identities rewritten to keep only the digest


def expire(store: PgStore, windows: RetentionWindows) -> Expired:
    """Delete idempotency keys and audit rows past ``windows``, and keep only the digest in the audit
    rows of erased identities (:meth:`PgLedger.pseudonymise_erased`); idempotent."""
    return Expired(
        store.expire_request_ids(windows.request_ttl_s),
        store.expire_audit(windows.audit_retention_days),
        store.ledger.pseudonymise_erased(),
    )


def expire_if_free(store: PgStore, windows: RetentionWindows) -> Expired | None:
    """:func:`expire`, unless another process is running it now (None); for replicas."""
    with store.connection("expiry lock") as conn, conn.transaction():
        row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (EXPIRE_LOCK,)).fetchone()
        if not row or not row[0]:
            return None
        return expire(store, windows)  # on other pooled connections, while this one holds the lock


def prune_store(store: PgStore, root: Path, windows: RetentionWindows | None = None) -> StorePruned:
    """Forget what every kept version of ``root`` absorbed, and keys / audit rows past ``windows``."""
    w = windows or RetentionWindows.from_env()
    upto = retained_from(root, store.store_id)
    changes = store.prune(upto) if upto > store.pruned_upto() else 0
    gone = expire(store, w)
    return StorePruned(store.pruned_upto(), changes, gone.request_ids, gone.audit_rows)
