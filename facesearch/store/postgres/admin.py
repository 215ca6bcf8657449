"""Operator commands on a PostgreSQL store (``facesearch-index db migrate|status``), on one connection.

:func:`migrate_store` applies the pending migrations (:func:`~facesearch.store.postgres.migrations.migrate`);
:func:`store_status` reports the schema version against this code's, and what the store holds.
Both connect directly (no pool) and fail with ``STORE_UNAVAILABLE`` when PostgreSQL cannot be reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from facesearch.store.postgres.failures import store_errors
from facesearch.store.postgres.migrations import LATEST, MigrationReport, current_version, migrate
from facesearch.store.store_location import redact

__all__ = ["StoreStatus", "migrate_store", "store_status"]


@dataclass(frozen=True, slots=True)
class StoreStatus:
    store: str  # the URL, password hidden
    schema_version: int
    code_version: int  # the newest schema this code knows (LATEST)
    store_id: str | None = None
    contract_id: str | None = None
    d: int | None = None
    high_water: int = 0
    pruned_upto: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    #: each registered server: id, applied log position, seconds since its heartbeat (database clock)
    replicas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def current(self) -> bool:
        return self.schema_version == self.code_version

    @property
    def state(self) -> str:
        if self.schema_version == 0:
            return "not migrated: run facesearch-index db migrate"
        if self.schema_version < self.code_version:
            return f"migrations {self.schema_version + 1}..{self.code_version} pending: run facesearch-index db migrate"
        if self.schema_version > self.code_version:
            return f"newer than this facesearch (reads up to {self.code_version}): upgrade facesearch"
        return "current"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "current": self.current, "state": self.state}


@contextmanager
def _connect(url: str, what: str, timeout_s: int) -> Iterator[psycopg.Connection[Any]]:
    with (
        store_errors(f"PostgreSQL store {redact(url)}: {what}"),
        psycopg.connect(url, connect_timeout=timeout_s, application_name="facesearch-index") as conn,
    ):
        yield conn


def migrate_store(url: str, *, timeout_s: int = 10) -> MigrationReport:
    with _connect(url, "migrate", timeout_s) as conn:
        return migrate(conn, redact(url))


def store_status(url: str, *, timeout_s: int = 10) -> StoreStatus:
    with _connect(url, "status", timeout_s) as conn:
        version = current_version(conn)
        status = StoreStatus(redact(url), version, LATEST)
        if version == 0:
            return status
        meta = {str(k): v for k, v in conn.execute("SELECT key, value FROM store_meta").fetchall()}
        counts = {}
        for table in ("identities", "faces", "changes", "tombstones", "erasures", "audit_log", "idempotency_keys"):
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            counts[table] = int(row[0]) if row else 0
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
        pruned = int(meta.get("pruned_upto", 0))
        replicas = [
            {"replica_id": r[0], "applied_seq": int(r[1]), "heartbeat_age_s": round(float(r[2]), 3)}
            for r in conn.execute(
                "SELECT replica_id, applied_seq, extract(epoch FROM now() - heartbeat_at)::float8 FROM replicas "
                "ORDER BY replica_id"
            ).fetchall()
        ]
        return StoreStatus(
            status.store,
            version,
            LATEST,
            store_id=meta.get("store_id"),
            contract_id=meta.get("contract_id"),
            d=None if meta.get("d") is None else int(meta["d"]),
            high_water=max(int(row[0]) if row else 0, pruned),
            pruned_upto=pruned,
            counts=counts,
            replicas=replicas,
        )
