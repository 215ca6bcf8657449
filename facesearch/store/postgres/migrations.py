"""The PostgreSQL store's schema, as numbered migrations, and the one function that applies them.

``schema_version`` holds one row per applied migration (version, name, when). :func:`migrate`
applies every pending migration in order, all in one transaction that first takes a transaction-level
advisory lock (:data:`MIGRATE_LOCK`): two ``facesearch-index db migrate`` runs at once apply each
migration exactly once (the second waits, then finds nothing to do), and a failure leaves the schema
as it was (PostgreSQL's DDL is transactional). Re-running is a no-op.

:func:`check_schema` is what a store (a server) does at open: a database whose version is older than
:data:`LATEST` is refused with "run ``facesearch-index db migrate``", one whose version is newer (a
newer facesearch migrated it) is refused with "this code reads up to N": a server never reads or
writes a schema it does not know. Both raise :class:`~facesearch.errors.PreconditionError` with
``Reason.STORE_SCHEMA``. Migrations are only ever appended; a released one is never edited.

Tables (version 1 unless noted; times are ``timestamptz``; nothing holds photo pixels):

``store_meta``      key -> jsonb: ``store_id`` (a uuid, what an index version's ``live_journal_id``
                    names), ``contract_id`` and ``d`` of the embeddings, the erasure ledger's HMAC key.
``changes``         the ordered change log: ``seq`` (bigserial; commit order, see the store), kind
                    (``enroll``, ``delete_identity``, ``delete_faces``), identity, vector ids, time,
                    principal. Pruned up to what every kept index version absorbed.
``identities``      every identity the store knows: name, metadata (jsonb), ``deleted``, ``seq`` of its
                    last change. A deleted identity keeps no name or metadata.
``faces``           every face enrolled through the store and not deleted: ``vector_id`` (from the
                    ``face_vector_ids`` sequence, starting at 2**48 like the live journal's), identity,
                    ``seq``, ``embedding`` (bytea, ``d`` little-endian float32), source, box, detector
                    score, face size, blur, metadata (jsonb), time. A deleted face's row is removed.
``tombstones``      deleted faces (of the store or of a published version): vector id, ``seq``,
                    identity; pruned with the log.
``erasures``        the erasure ledger (as ``facesearch.store.erasure_ledger``): HMAC digests only.
``audit_log``       who enrolled, deleted, erased or unerased whom, when; never pruned with the log.
``replicas``        (version 2) each server's ``replica_id``, the log position it has applied, its last
                    heartbeat (the database's clock): what a deletion waits for
                    (:mod:`facesearch.store.postgres.replicas`).
``idempotency_keys`` SHA-256 of an enroll's ``request_id`` -> the digest of what it asked and its result
                    (seq, face ids), so a retry returns the first result; no identity id or name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facesearch.errors import PreconditionError, Reason

__all__ = ["LATEST", "MIGRATE_LOCK", "MIGRATIONS", "Migration", "MigrationReport", "check_schema", "migrate"]

#: pg_advisory_xact_lock key of schema migrations ("fsmigrat" as 8 bytes).
MIGRATE_LOCK = int.from_bytes(b"fsmigrat", "big") - (1 << 63)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


_V1 = """
CREATE TABLE store_meta (
    key text PRIMARY KEY,
    value jsonb NOT NULL
);
CREATE TABLE changes (
    seq bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('enroll', 'delete_identity', 'delete_faces')),
    identity_id text,
    vector_ids bigint[] NOT NULL DEFAULT '{}',
    at timestamptz NOT NULL DEFAULT now(),
    principal text
);
CREATE TABLE identities (
    identity_id text PRIMARY KEY,
    name text,
    metadata jsonb NOT NULL DEFAULT '{}',
    deleted boolean NOT NULL DEFAULT false,
    seq bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX identities_seq ON identities (seq);
CREATE SEQUENCE face_vector_ids START WITH 281474976710656;
CREATE TABLE faces (
    vector_id bigint PRIMARY KEY,
    identity_id text NOT NULL REFERENCES identities (identity_id),
    seq bigint NOT NULL,
    embedding bytea NOT NULL,
    source text,
    x1 real, y1 real, x2 real, y2 real,
    det_score real,
    face_size real,
    blur real,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL
);
CREATE INDEX faces_identity ON faces (identity_id);
CREATE INDEX faces_seq ON faces (seq);
CREATE TABLE tombstones (
    vector_id bigint PRIMARY KEY,
    seq bigint NOT NULL,
    identity_id text
);
CREATE INDEX tombstones_seq ON tombstones (seq);
CREATE TABLE erasures (
    seq bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('identity', 'faces', 'unerase')),
    subject text NOT NULL,
    vector_ids bigint[] NOT NULL DEFAULT '{}',
    faces text[] NOT NULL DEFAULT '{}',
    at timestamptz NOT NULL DEFAULT now(),
    principal text,
    via text NOT NULL
);
CREATE INDEX erasures_subject ON erasures (subject, seq);
CREATE TABLE audit_log (
    seq bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    principal text,
    action text NOT NULL,
    identity_id text,
    change_seq bigint,
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_identity ON audit_log (identity_id);
CREATE TABLE idempotency_keys (
    request_key text PRIMARY KEY,
    fingerprint text NOT NULL,
    change_seq bigint,
    result jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
"""

_V2 = """
CREATE TABLE replicas (
    replica_id text PRIMARY KEY,
    applied_seq bigint NOT NULL DEFAULT 0,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz NOT NULL DEFAULT now(),
    info jsonb NOT NULL DEFAULT '{}'
);
"""

#: Every migration, in order; append only.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "identities, faces, change log, erasures, audit, idempotency", _V1),
    Migration(2, "replicas: each server's applied log position and heartbeat", _V2),
)
LATEST = MIGRATIONS[-1].version

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class MigrationReport:
    before: int
    after: int
    applied: tuple[int, ...]


def current_version(conn: Any) -> int:
    """The schema version of the database (0: never migrated). ``conn``: a psycopg connection."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def _refuse_newer(version: int, where: str, latest: int = LATEST) -> None:
    if version > latest:
        raise PreconditionError(
            f"PostgreSQL store {where} has schema version {version}; this facesearch reads up to {latest}: "
            "upgrade facesearch (a newer one migrated this database)",
            reason=Reason.STORE_SCHEMA,
        )


def migrate(conn: Any, where: str = "", migrations: tuple[Migration, ...] = MIGRATIONS) -> MigrationReport:
    """Apply the pending migrations in one transaction under :data:`MIGRATE_LOCK`; refuse a newer schema.

    ``conn`` is a psycopg connection not in a transaction; ``where`` names the store in messages.
    """
    latest = migrations[-1].version
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute(_VERSION_TABLE)
        before = current_version(conn)
        _refuse_newer(before, where, latest)
        applied = []
        for m in migrations:
            if m.version > before:
                conn.execute(m.sql)
                conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", (m.version, m.name))
                applied.append(m.version)
    return MigrationReport(before, max(before, latest), tuple(applied))


def check_schema(conn: Any, where: str = "") -> int:
    """The database's schema version when it is exactly :data:`LATEST`; else PreconditionError STORE_SCHEMA."""
    version = current_version(conn)
    _refuse_newer(version, where)
    if version < LATEST:
        raise PreconditionError(
            f"PostgreSQL store {where} has schema version {version}, this facesearch needs {LATEST}: run "
            "`facesearch-index db migrate --store URL` first",
            reason=Reason.STORE_SCHEMA,
        )
    return version
