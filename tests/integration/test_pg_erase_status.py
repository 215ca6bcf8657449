"""``facesearch-index erase-status`` and ``unerase`` with a PostgreSQL store
(facesearch/store/postgres/erasure_status.py), against a real PostgreSQL (tests/pg_fixtures.py) and real
published versions: after a deletion through the store, the report (same format and exit status as for
an index root) names every place the subject still is (the kept version's identity store and the files
derived from it, a replica's cached open-set statistics, the store's identity row, log entries,
tombstones and audit rows); after the erasure procedure (compact, prune --keep 1, the cache gone) it is
complete, and the audit rows keep only the digest (still found by the id); unerase lifts the erasure in
the store's ledger; ``audit list`` reads the store's audit log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg

from facesearch.scoring.gallery_stats import OPEN_SET_FILE
from facesearch.store.index_artifact import current_version
from facesearch.store.postgres import PgStore, migrate
from tests.integration.server_fixtures import REPO, synthetic_embeddings
from tests.pg_fixtures import *  # noqa: F403

CONTRACT = "erase-status-contract"


def index(*args: str, dsn: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "indexer", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "FACESEARCH_STORE": dsn},
        check=False,
    )
    assert done.returncode == expect, done.stdout + done.stderr
    return done


def test_erase_status_reads_the_store_ledger_and_completes_after_the_procedure(pg_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
    emb, ids = synthetic_embeddings(120, seed=7, prefix="era")
    npz = tmp_path / "emb.npz"
    np.savez(npz, embeddings=emb, identities=np.asarray(ids), contract_id=np.asarray(CONTRACT))
    root = tmp_path / "index"
    index("build", "--embeddings", str(npz), "--out", str(root), "--quiet", dsn=pg_dsn)
    v1 = str(current_version(root))
    gone = sorted(set(ids))[0]
    cache = root / "replicas" / "r1" / "open_set"  # a replica's cached statistics of v1 (templates by id)
    cache.mkdir(parents=True)
    shutil.copy(root / v1 / OPEN_SET_FILE, cache / f"{v1}-cached.npz")
    with PgStore.open(pg_dsn, contract_id=CONTRACT, d=int(emb.shape[1])) as store:
        store.delete_identity(gone, principal="test")  # as a replica's DeleteIdentity
        assert index("erase-status", str(root), "nobody", dsn=pg_dsn, expect=1).stderr.count("NOT_ERASED") == 1

        pending = index("erase-status", str(root), gone, "--json", dsn=pg_dsn, expect=1).stdout
        report = json.loads(pending)
        assert set(report) == {"root", "ledger_position", "subjects", "unverified", "complete"}
        assert report["complete"] is False and [s["subject"] for s in report["subjects"]] == [gone]
        held = {h["path"]: h["what"] for h in report["subjects"][0]["holdings"]}
        where = f"PostgreSQL store {store.store_id}: table"
        for path in (f"{v1}/identities.sqlite", f"{v1}/index.faiss", f"{v1}/{OPEN_SET_FILE}"):
            assert any(p.endswith(path.split("/")[-1]) and p.startswith(v1) for p in held), (path, held)
        assert f"replicas/r1/open_set/{v1}-cached.npz" in held, held
        for table in ("identities", "changes", "tombstones"):
            assert f"{where} {table}" in held, (table, held)
        assert f"{where} audit_log" not in held, held  # the deletion rewrote its audit rows to the digest
        assert all(e.identity_id is None for e in store.audit_entries(identity_id=gone))
        assert "faces" not in {p.rsplit(" ", 1)[-1] for p in held if p.startswith(where)}  # deleted with it
        text = index("erase-status", str(root), dsn=pg_dsn, expect=1).stdout  # the text form, by digest
        assert "NOT complete" in text and gone not in text

        # the procedure: compact (a version without it), prune --keep 1 (v1, the log past the deletion,
        # the audit rows' ids), the replica's stale cache dropped (a replica does that on its own)
        index("compact", str(root), "--quiet", dsn=pg_dsn)
        index("prune", str(root), "--keep", "1", dsn=pg_dsn)
        shutil.rmtree(cache)
        done = index("erase-status", str(root), gone, dsn=pg_dsn).stdout
        assert "): complete" in done and "NOT complete" not in done, done
        assert "complete" in index("erase-status", str(root), dsn=pg_dsn).stdout
        audit = store.audit_entries(identity_id=gone)  # kept, found by the id, naming it only by digest
        assert {e.action for e in audit} == {"enroll", "delete_identity"} and all(e.identity_id is None for e in audit)
        assert all(e.detail.get("subject") == store.ledger.digester.subject(gone) for e in audit)
        listed = index("audit", "list", str(root), "--identity", gone, dsn=pg_dsn).stdout.splitlines()
        digest = store.ledger.digester.subject(gone)[:16]
        assert [line.split()[3:5] for line in listed] == [
            ["enroll", f"erased:{digest}"],
            ["delete_identity", f"erased:{digest}"],
        ], listed
        assert all(gone not in line for line in listed), listed

        assert store.is_erased(gone)
        out = index("unerase", str(root), gone, dsn=pg_dsn).stdout
        assert f"{gone} may be enrolled again" in out
        assert not store.is_erased(gone)
        assert index("erase-status", str(root), gone, dsn=pg_dsn, expect=1).stderr.count("NOT_ERASED") == 1
