"""The PostgreSQL store's retention (facesearch.store.postgres.retention), against a real PostgreSQL
(tests/pg_fixtures.py) and real published versions: a store compaction prunes the log up to the
oldest kept version's absorbed position and no further (a rollback to a kept version replays its
tail), ``facesearch-index prune --keep 1`` shrinks it to the current version's and a version older
than that is refused with STORE_LOG_PRUNED; idempotency keys and audit rows past their windows go,
newer ones stay; and they go without any indexer run while only a replica serves (its log follower
expires them every FACESEARCH_STORE_EXPIRE_S, one replica at a time under an advisory try-lock)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import PreconditionError, Reason
from facesearch.store.index_artifact import current_version, list_versions
from facesearch.store.journal_retention import absorbed_by
from facesearch.store.live_journal import NewFace
from facesearch.store.postgres import PgStore, migrate
from facesearch.store.postgres.retention import EXPIRE_LOCK, RetentionWindows, expire_if_free
from facesearch.store.postgres.sql import request_key
from indexer.compact import CompactConfig, run
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import REPO, build_index, start_server, synthetic_embeddings
from tests.integration.server_fixtures import wait_until as until
from tests.pg_fixtures import *  # noqa: F403

CONTRACT = "retention-contract"


def faces(n: int, seed: int, d: int) -> list[NewFace]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        e = rng.standard_normal(d).astype(np.float32)
        out.append(NewFace(e / np.linalg.norm(e), f"photo/{seed}_{i}.jpg", (1.0, 2.0, 30.0, 40.0), 0.9, 28.0, 5.0))
    return out


def index_prune(root: Path, dsn: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "indexer", "prune", str(root), "--keep", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "FACESEARCH_STORE": dsn, **env},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_compact_and_prune_keep_the_log_from_the_oldest_kept_version_and_expire_keys_and_audit(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb, ids = synthetic_embeddings(120, seed=5, prefix="pub")
    d = int(emb.shape[1])
    root = tmp_path / "index"
    build_index(root, emb, ids, CONTRACT, work=tmp_path / "work")  # v1: from photos, absorbed nothing
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
    monkeypatch.setenv("FACESEARCH_STORE", pg_dsn)
    config = CompactConfig(root, keep_versions=2)
    with PgStore.open(pg_dsn, contract_id=CONTRACT, d=d) as store:
        alice = store.enroll("alice", faces(2, 1, d), name="Alice", request_id="old-req")
        first = run(config)  # v2 absorbs alice; v1 (position 0) still kept: nothing pruned
        assert first.live_seq == alice.seq and store.pruned_upto() == 0
        v2 = current_version(root)
        bob = store.enroll("bob", faces(1, 2, d))
        gone = store.delete_faces([int(alice.vector_ids[0])])
        second = run(config)  # v3; v1 dropped, so the log shrinks to v2's position exactly
        assert second.live_seq == gone.seq
        assert list_versions(root)[0] == v2 and absorbed_by(root / v2).seq == alice.seq
        assert store.pruned_upto() == alice.seq
        assert [c.seq for c in store.changes_since(0)] == [bob.seq, gone.seq]
        # a rollback to v2 still replays everything it lacks
        rollback = store.snapshot(after_seq=alice.seq)
        assert {i.identity_id for i in rollback.identities} >= {"bob"} and len(rollback.faces) == 1
        assert {t.vector_id for t in rollback.tombstones} == {int(alice.vector_ids[0])}
        carol = store.enroll("carol", faces(1, 3, d), request_id="new-req")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # age the first key and alice's audit row
            conn.execute(
                "UPDATE idempotency_keys SET created_at = now() - interval '3 hours' WHERE request_key = %s",
                (request_key("old-req"),),
            )
            conn.execute("UPDATE audit_log SET at = now() - interval '3 days' WHERE identity_id = 'alice'")
            keys_before = conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()
            audit_before = conn.execute("SELECT count(*) FROM audit_log").fetchone()
        assert keys_before == (2,) and audit_before is not None and audit_before[0] >= 3
        out = index_prune(root, pg_dsn, FACESEARCH_ENROLL_REQUEST_TTL_S="3600", FACESEARCH_AUDIT_RETENTION_DAYS="1")
        assert f"store log pruned up to seq {gone.seq}" in out, out
        assert store.pruned_upto() == gone.seq
        assert [c.seq for c in store.changes_since(0)] == [carol.seq]
        with pytest.raises(PreconditionError) as old:  # v2 is deleted: nothing can bring it up to date
            store.snapshot(after_seq=alice.seq)
        assert old.value.reason is Reason.STORE_LOG_PRUNED
        tail = store.snapshot(after_seq=gone.seq)  # the current version's tail is whole
        assert [f.identity_id for f in tail.faces] == ["carol"]
        # the store is still the record of every live face
        assert {f.identity_id for f in store.snapshot().faces} == {"alice", "bob", "carol"}
        with psycopg.connect(pg_dsn) as conn:
            keys = conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()
            audit = conn.execute("SELECT count(*) FROM audit_log WHERE identity_id = 'alice'").fetchone()
            left = conn.execute("SELECT count(*) FROM audit_log").fetchone()
        assert keys == (1,) and audit == (0,) and left is not None and left[0] == audit_before[0] - 2
        replay = store.enroll("carol", faces(1, 3, d), request_id="new-req")  # the fresh key still answers
        assert replay.replayed and replay.seq == carol.seq


def _age(dsn: str, request_id: str, hours: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE idempotency_keys SET created_at = now() - make_interval(hours => %s) WHERE request_key = %s",
            (hours, request_key(request_id)),
        )


def _keys(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT request_key FROM idempotency_keys").fetchall()}


def test_expiry_runs_in_one_process_at_a_time(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
    d = 8
    windows = RetentionWindows(request_ttl_s=3600)
    with PgStore.open(pg_dsn, contract_id=CONTRACT, d=d) as store:
        store.enroll("alice", faces(1, 1, d), request_id="old-req")
        _age(pg_dsn, "old-req", 3)
        with psycopg.connect(pg_dsn) as other, other.transaction():  # another replica is expiring now
            other.execute("SELECT pg_advisory_xact_lock(%s)", (EXPIRE_LOCK,))
            assert expire_if_free(store, windows) is None
            assert _keys(pg_dsn) == {request_key("old-req")}
        done = expire_if_free(store, windows)
        assert done is not None and done.request_ids == 1 and _keys(pg_dsn) == set()
        again = expire_if_free(store, windows)  # idempotent
        assert again is not None and again.request_ids == 0


@pytest.mark.slow
def test_a_replica_expires_request_ids_and_audit_rows_without_an_indexer_run(
    pg_dsn: str, tmp_path: Path, server_bundle: Path
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
    bundle = ModelBundle.load(server_bundle, verify=False)
    emb, ids = synthetic_embeddings(40, seed=5, prefix="pub")
    root = tmp_path / "index"
    build_index(root, emb, ids, bundle.contract_id, work=tmp_path / "work")
    d = bundle.embedding_dim
    with PgStore.open(pg_dsn, contract_id=bundle.contract_id, d=d) as store:
        store.enroll("alice", faces(1, 1, d), request_id="old-req")
        store.enroll("bob", faces(1, 2, d), request_id="new-req")
    _age(pg_dsn, "old-req", 3)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE audit_log SET at = now() - interval '3 days' WHERE identity_id = 'alice'")
    srv = start_server(
        server_bundle,
        root,
        tmp_path / "logs",
        env={
            "FACESEARCH_STORE": pg_dsn,
            "FACESEARCH_REPLICA_ID": "r1",
            "FACESEARCH_STORE_POLL_S": "0.2",
            "FACESEARCH_STORE_EXPIRE_S": "0.5",
            "FACESEARCH_ENROLL_REQUEST_TTL_S": "3600",
            "FACESEARCH_AUDIT_RETENTION_DAYS": "1",
        },
    )
    try:
        until(lambda: request_key("old-req") not in _keys(pg_dsn), timeout=60, what="the replica to expire the key")
        assert _keys(pg_dsn) == {request_key("new-req")}  # the fresh one stays
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute("SELECT identity_id, count(*) FROM audit_log GROUP BY identity_id").fetchall()
        assert dict(rows) == {"bob": 1}, rows
    finally:
        srv.stop()
