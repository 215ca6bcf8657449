"""``facesearch-index build|add`` with a PostgreSQL store (indexer/store_build.py), against a real
PostgreSQL (tests/pg_fixtures.py): what a build indexes is written to the store first (durable
enrollments in its change log, in batches), the version is trained over everything the store holds and
records the log position it absorbed (``live_journal_id`` = the store's id, ``live_seq`` = its high
water); a rerun adds no copies; ``build --from-store`` retrains over the store alone; ``add`` imports and
compacts incrementally; ``remove`` deletes through the store; an identity erased in the store never
comes back through a rebuild from photos;
a replica serves a version built this way and, when a rebuild absorbs its tail, hot-swaps to it and
drops exactly that tail; combinations that cannot be honoured are refused with exit 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import FaceSearchError, NotFoundError
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, current_version, list_versions, read_manifest
from facesearch.store.journal_retention import absorbed_by
from facesearch.store.live_journal import NewFace
from facesearch.store.postgres import PgStore, migrate
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import REPO, ServerProcess, start_server, synthetic_embeddings
from tests.integration.server_fixtures import wait_until as until
from tests.pg_fixtures import *  # noqa: F403

CONTRACT = "build-contract"


def migrated(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        migrate(conn)
    return dsn


def embeddings_file(path: Path, emb: np.ndarray, ids: list[str], contract: str) -> Path:
    np.savez(
        path,
        embeddings=emb.astype(np.float32),
        identities=np.asarray(ids),
        contract_id=np.asarray(contract),
    )
    return path


def index(*args: str, dsn: str | None, expect: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FACESEARCH_STORE"}
    if dsn is not None:
        env["FACESEARCH_STORE"] = dsn
    done = subprocess.run(
        [sys.executable, "-m", "indexer", *args, "--quiet"]
        if args[0] in ("build", "add", "compact")
        else [sys.executable, "-m", "indexer", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == expect, done.stdout + done.stderr
    return done


def store_faces(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT identity_id, count(*) FROM faces GROUP BY identity_id").fetchall()
    return {r[0]: int(r[1]) for r in rows}


def version_identities(root: Path) -> dict[str, int]:
    vdir = root / str(current_version(root))
    with IdentityStore.open(vdir / STORE_FILE, readonly=True) as store:
        vids, _ = store.vector_identity_keys()
        out: dict[str, int] = {}
        for f in store.faces(vids.tolist()):
            assert f is not None
            out[f.identity_id] = out.get(f.identity_id, 0) + 1
    return out


def test_build_writes_the_store_records_its_position_and_rebuilds_from_it(pg_dsn: str, tmp_path: Path) -> None:
    dsn = migrated(pg_dsn)
    emb, ids = synthetic_embeddings(160, seed=3, prefix="bld")
    d = int(emb.shape[1])
    npz = embeddings_file(tmp_path / "emb.npz", emb, ids, CONTRACT)
    root = tmp_path / "index"
    out = index("build", "--embeddings", str(npz), "--out", str(root), "--store", dsn, dsn=None).stdout
    assert "wrote 160 faces to the store" in out, out
    wanted = {i: ids.count(i) for i in set(ids)}
    assert store_faces(dsn) == wanted
    with PgStore.open(dsn, contract_id=CONTRACT, d=d) as store:
        high = store.high_water()
        # written as enrollments (the audit log says by whom); the log itself is pruned up to what the only
        # kept version absorbed: all of it
        audit = store.audit_entries()
        assert {e.identity_id for e in audit} == set(wanted) and {e.action for e in audit} == {"enroll"}
        assert {e.detail["via"] for e in audit} == {"facesearch-index build"}
        assert high >= len(wanted) and store.pruned_upto() == high and store.changes_since(0) == []
        position = absorbed_by(root / str(current_version(root)))
        assert (position.journal_id, position.seq) == (store.store_id, high)
        assert version_identities(root) == wanted
        # the version's faces are the store's, by vector id: a deletion through the store reaches them
        with IdentityStore.open(root / str(current_version(root)) / STORE_FILE, readonly=True) as vstore:
            vids, _ = vstore.vector_identity_keys()
        assert set(vids.tolist()) == {f.vector_id for f in store.snapshot().faces}

        # a rerun of the same build (e.g. after an interruption) writes no second copy
        again = index("build", "--embeddings", str(npz), "--out", str(root), dsn=dsn).stdout
        assert "wrote 0 faces to the store" in again and "160 already held" in again, again
        assert store_faces(dsn) == wanted and store.high_water() == high

        # changes made through the store (a replica's) are in the next rebuild; deleted ones are not
        gone = sorted(wanted)[0]
        store.delete_identity(gone)
        rng = np.random.default_rng(1)
        e = rng.standard_normal(d).astype(np.float32)
        store.enroll("live-1", [NewFace(e / np.linalg.norm(e), "live.jpg", None, None, None, None)])
        index("build", "--from-store", "--out", str(root), "--store", dsn, dsn=None)
        expect = {k: v for k, v in wanted.items() if k != gone} | {"live-1": 1}
        assert version_identities(root) == expect
        assert absorbed_by(root / str(current_version(root))).seq == store.high_water()
        manifest = read_manifest(root / str(current_version(root)))
        assert manifest.parent is None and manifest.nlist >= 0

        # add: imported, then compacted onto the current version (its parent), the log position moves on
        extra, extra_ids = synthetic_embeddings(30, seed=8, prefix="add")
        more = embeddings_file(tmp_path / "more.npz", extra, extra_ids, CONTRACT)
        before = current_version(root)
        added = index("add", str(root), "--embeddings", str(more), dsn=dsn).stdout
        assert "wrote 30 faces to the store" in added, added
        after = read_manifest(root / str(current_version(root)))
        assert after.parent == before
        assert version_identities(root) == expect | {i: extra_ids.count(i) for i in set(extra_ids)}
        assert absorbed_by(root / str(current_version(root))).seq == store.high_water()


def test_a_rebuild_from_photos_never_brings_back_an_identity_the_store_erased(
    pg_dsn: str, tmp_path: Path, server_bundle: Path, people: dict[str, list[Path]]
) -> None:
    dsn = migrated(pg_dsn)
    names = sorted(people)[:3]
    tree = tmp_path / "photos"
    for name in names:
        (tree / name).mkdir(parents=True)
        for photo in people[name][:2]:
            shutil.copy(photo, tree / name / photo.name)
    (tree / names[1] / "broken.jpg").write_bytes(b"")  # an unreadable photo: published without it, exit 1
    root = tmp_path / "index"
    common = ("--bundle", str(server_bundle), "--workers", "1", "--embed-options", "min_face=80")
    failed = index("build", "--images", str(tree), "--out", str(root), *common, dsn=dsn, expect=1)
    assert "1 input rows failed" in failed.stderr, failed.stderr
    first = version_identities(root)
    assert set(first) == set(names), first
    bundle = ModelBundle.load(server_bundle, verify=False)
    erased = names[0]
    with PgStore.open(dsn, contract_id=bundle.contract_id, d=bundle.embedding_dim) as store:
        store.delete_identity(erased)  # as a replica's DeleteIdentity: the ledger, the log, the rows
    assert erased not in store_faces(dsn)
    out = index("build", "--images", str(tree), "--out", str(root), *common, dsn=dsn, expect=1).stdout
    assert "of erased subjects skipped" in out and f"{len(people[erased][:2])} input rows skipped" in out, out
    assert erased not in store_faces(dsn)
    assert set(version_identities(root)) == set(names[1:])
    rejects = (root / str(current_version(root)) / "rejects.jsonl").read_text()
    assert erased not in rejects and "ERASED" in rejects
    for version in list_versions(root)[-1:]:
        with IdentityStore.open(root / version / STORE_FILE, readonly=True) as vstore:
            assert not vstore.existing_identities([erased])
    # the same photos read from elsewhere: the same embeddings, so no second copy either
    moved = shutil.copytree(tree, tmp_path / "moved")
    again = index("build", "--images", str(moved), "--out", str(root), *common, dsn=dsn, expect=1).stdout
    assert "wrote 0 faces to the store" in again, again


def test_combinations_the_store_cannot_honour_are_refused(pg_dsn: str, tmp_path: Path) -> None:
    dsn = migrated(pg_dsn)
    emb, ids = synthetic_embeddings(20, seed=4, prefix="ref")
    npz = embeddings_file(tmp_path / "emb.npz", emb, ids, CONTRACT)
    root = tmp_path / "index"
    no_store = index("build", "--from-store", "--out", str(root), dsn=None, expect=2)
    assert "needs a PostgreSQL store" in no_store.stderr
    chips = index("build", "--embeddings", str(npz), "--out", str(root), "--keep-chips", dsn=dsn, expect=2)
    assert "--keep-chips cannot be honoured with a PostgreSQL store" in chips.stderr
    index("build", "--embeddings", str(npz), "--out", str(root), dsn=dsn)
    live_dir = index("compact", str(root), "--live-dir", str(tmp_path / "live"), dsn=dsn, expect=2)
    assert "--live-dir cannot be honoured" in live_dir.stderr
    assert len(list_versions(root)) == 1  # nothing was done


def test_remove_with_the_store_deletes_through_it_and_publishes_without_them(pg_dsn: str, tmp_path: Path) -> None:
    dsn = migrated(pg_dsn)
    emb, ids = synthetic_embeddings(60, seed=6, prefix="rem")
    npz = embeddings_file(tmp_path / "emb.npz", emb, ids, CONTRACT)
    root = tmp_path / "index"
    index("build", "--embeddings", str(npz), "--out", str(root), dsn=dsn)
    gone = sorted(set(ids))[0]
    out = index("remove", str(root), "--identity", gone, "--identity", "nobody", dsn=dsn).stdout
    assert f"deleted 1 identities ({ids.count(gone)} faces) through the store" in out and "not found: nobody" in out
    assert gone not in store_faces(dsn) and gone not in version_identities(root)
    with PgStore.open(dsn, contract_id=CONTRACT, d=int(emb.shape[1])) as store:
        assert store.is_erased(gone)  # the store's ledger: replicas refuse to enroll it, rebuilds skip it
        assert absorbed_by(root / str(current_version(root))).seq == store.high_water()
    again = index("build", "--embeddings", str(npz), "--out", str(root), dsn=dsn).stdout
    assert f"{ids.count(gone)} of erased subjects skipped" in again and gone not in version_identities(root)
    missing = index("remove", str(root), "--identity", "nobody", dsn=dsn, expect=1)
    assert "IDENTITY_NOT_FOUND" in missing.stderr


def _health(c: FaceSearchClient) -> str:
    try:
        return c.health()
    except FaceSearchError:
        return "DOWN"


@pytest.mark.slow
def test_a_replica_serves_a_store_build_and_drops_the_tail_a_rebuild_absorbed(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]], pg_dsn: str
) -> None:
    dsn = migrated(pg_dsn)
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    emb, ids = synthetic_embeddings(200, seed=11, prefix="pub")
    npz = embeddings_file(tmp_path / "emb.npz", emb, ids, contract)
    root = tmp_path / "index"
    index("build", "--embeddings", str(npz), "--out", str(root), dsn=dsn)
    a = next(p for p in people if len(people[p]) >= 3)
    r1: ServerProcess = start_server(
        server_bundle,
        root,
        tmp_path / "logs",
        env={
            "FACESEARCH_STORE": dsn,
            "FACESEARCH_REPLICA_ID": "r1",
            "FACESEARCH_STORE_POLL_S": "0.5",
            "FACESEARCH_STORE_FENCE_S": "4",
        },
    )
    try:
        with r1.client(timeout=120) as c:
            until(lambda: _health(c) == "SERVING", timeout=120, what="r1 SERVING")
            start = c.stats()
            assert start["live_faces"] == 0 and start["faces"] == 200, start  # the version holds the store
            n_a = len(c.enroll(a, people[a][:2], use_largest_face=True).face_ids)
            gone = sorted(set(ids))[0]
            n_gone = c.delete_identity(gone)
            tail = c.stats()
            assert tail["live_faces"] == n_a and tail["tombstones"] >= n_gone, tail
            # a rebuild from the same embeddings: nothing new to write, the replica's changes absorbed
            out = index("build", "--embeddings", str(npz), "--out", str(root), dsn=dsn).stdout
            assert "wrote 0 faces to the store" in out and "of erased subjects skipped" in out, out
            until(lambda: c.stats()["index_version"] != start["index_version"], timeout=60, what="the hot swap")
            after = c.stats()
            assert after["live_faces"] == 0 and after["tombstones"] == 0, after  # exactly the tail dropped
            assert after["faces"] == 200 - n_gone + n_a, after
            assert c.get_identity(a).face_count == n_a
            with pytest.raises(NotFoundError):
                c.get_identity(gone)
            assert a in {x.identity_id for f in c.identify(people[a][2], top_k=5).faces for x in f.candidates}
    finally:
        r1.stop()


def test_a_root_published_from_the_store_is_refused_without_it(
    pg_dsn: str, tmp_path: Path, server_bundle: Path
) -> None:
    """The gap a job without the store had: its erasures are in the store's ledger, not the root's, so a
    rebuild, add, compact or plain server on such a root would bring back a person erased through a
    replica. Each is refused (STORE_ROOT) and publishes nothing; with the store they work."""
    dsn = migrated(pg_dsn)
    bundle = ModelBundle.load(server_bundle, verify=False)
    emb, ids = synthetic_embeddings(40, seed=12, prefix="mrk")
    npz = embeddings_file(tmp_path / "emb.npz", emb, ids, bundle.contract_id)
    root = tmp_path / "index"
    index("build", "--embeddings", str(npz), "--out", str(root), dsn=dsn)
    erased = sorted(set(ids))[0]
    with PgStore.open(dsn, contract_id=bundle.contract_id, d=bundle.embedding_dim) as store:
        store.delete_identity(erased)
        store_id = store.store_id
    versions = list_versions(root)
    for args in (
        ("build", "--embeddings", str(npz), "--out", str(root)),
        ("add", str(root), "--embeddings", str(npz)),
        ("compact", str(root)),
        ("remove", str(root), "--identity", sorted(set(ids))[1]),
        ("erase-status", str(root), erased),
        ("unerase", str(root), erased),
    ):
        refused = index(*args, dsn=None, expect=1)
        assert "STORE_ROOT" in refused.stderr and store_id in refused.stderr, (args, refused.stderr)
    assert list_versions(root) == versions
    with pytest.raises(RuntimeError, match=f"published from the PostgreSQL store {store_id}.*set FACESEARCH_STORE"):
        start_server(server_bundle, root, tmp_path / "logs", env={"FACESEARCH_STORE": ""}, timeout=60)
    # with the store: the rebuild honours the store's erasure
    index("build", "--embeddings", str(npz), "--out", str(root), dsn=dsn)
    assert erased not in version_identities(root) and len(list_versions(root)) == len(versions) + 1
