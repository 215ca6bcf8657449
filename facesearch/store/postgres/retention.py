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

__all__ = ["AUDIT_RETENTION_ENV", "REQUEST_TTL_ENV", "RetentionWindows", "StorePruned", "prune_store"]

REQUEST_TTL_ENV = "FACESEARCH_ENROLL_REQUEST_TTL_S"
AUDIT_RETENTION_ENV = "FACESEARCH_AUDIT_RETENTION_DAYS"
DEFAULT_REQUEST_TTL_S = 86400.0


@dataclass(frozen=True, slots=True)
class RetentionWindows:
    request_ttl_s: float = DEFAULT_REQUEST_TTL_S
    audit_retention_days: float = DEFAULT_RETENTION_DAYS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetentionWindows:
        values = os.environ if env is None else env
        return cls(
            _non_negative(values, REQUEST_TTL_ENV, DEFAULT_REQUEST_TTL_S),
            _non_negative(values, AUDIT_RETENTION_ENV, DEFAULT_RETENTION_DAYS),
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


def prune_store(store: PgStore, root: Path, windows: RetentionWindows | None = None) -> StorePruned:
    """Forget what every kept version of ``root`` absorbed, and keys / audit rows past ``windows``."""
    w = windows or RetentionWindows.from_env()
    upto = retained_from(root, store.store_id)
    changes = store.prune(upto) if upto > store.pruned_upto() else 0
    return StorePruned(
        store.pruned_upto(),
        changes,
        store.expire_request_ids(w.request_ttl_s),
        store.expire_audit(w.audit_retention_days),
    )
