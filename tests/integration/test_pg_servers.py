"""Real ``facesearch-server`` replicas sharing one PostgreSQL store (tests/pg_fixtures.py) and one index
root (issue 14): an enrollment on one replica is found on the other, and its retry (same request id)
on the other gets the first result; two replicas enrolling one
identity at once: one wins, the other gets IDENTITY_EXISTS; after a deletion's OK on one replica the
other does not return the faces (no waiting); a replica stopped, and one killed with SIGKILL, comes
back caught up before it reports SERVING; one client over both replicas (comma-separated targets)
balances its calls round-robin; an unmigrated store is refused at start; PostgreSQL stopped
mid-run: Identify keeps answering from memory, writes fail UNAVAILABLE STORE_UNAVAILABLE, a replica
cut off past FACESEARCH_STORE_FENCE_S stops serving (REPLICA_FENCED), and everything resumes when
PostgreSQL is back, without restarting a server; ``facesearch-index compact`` with FACESEARCH_STORE
absorbs the store's log into a new version that the replicas hot-swap to, dropping the absorbed tail,
and after ``prune --keep 1`` shrank the store's log a new replica still catches up and serves all;
a version rebuilt from photos does not bring back an identity the store erased."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psycopg
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.client.service_client import FaceSearchClient, RpcFailedError
from facesearch.errors import AlreadyExistsError, FaceSearchError, NotFoundError
from facesearch.store.postgres import migrate
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import (
    REPO,
    ServerProcess,
    build_index,
    start_replica,
    synthetic_embeddings,
)
from tests.integration.server_fixtures import wait_until as until
from tests.pg_fixtures import *  # noqa: F403
from tests.pg_fixtures import PgServer

pytestmark = pytest.mark.slow


@pytest.fixture
def root(server_bundle: Path, tmp_path: Path) -> Path:
    """A shared root with a small published version (synthetic faces, built from no store)."""
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    emb, ids = synthetic_embeddings(200, seed=11, prefix="pub")
    build_index(tmp_path / "index", emb, ids, contract, work=tmp_path / "work")
    return tmp_path / "index"


def migrated(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        migrate(conn)
    return dsn


def replica(bundle: Path, root: Path, logs: Path, dsn: str, name: str, **env: str) -> ServerProcess:
    return start_replica(bundle, root, logs, dsn, name, env=env, wait_serving=False)


def serving(srv: ServerProcess) -> None:
    with srv.client() as c:
        until(lambda: _health(c) == "SERVING", timeout=120, what=f"{srv.target} SERVING")


def _health(c: FaceSearchClient) -> str:
    try:
        return c.health()
    except FaceSearchError:
        return "DOWN"


def found(c: FaceSearchClient, photo: Path) -> set[str]:
    return {x.identity_id for f in c.identify(photo, top_k=10).faces for x in f.candidates}


def test_replicas_share_enrollments_and_deletions(
    server_bundle: Path, root: Path, tmp_path: Path, people: dict[str, list[Path]], pg_dsn: str
) -> None:
    dsn = migrated(pg_dsn)
    a, b, c_name, d_name = [p for p in people if len(people[p]) >= 3][:4]
    logs = tmp_path / "logs"
    r1 = replica(server_bundle, root, logs, dsn, "r1")
    r2 = replica(server_bundle, root, logs, dsn, "r2")
    try:
        serving(r1)
        serving(r2)
        with r1.client(timeout=120) as c1, r2.client(timeout=120) as c2:
            # read-your-writes on r1, then r2 learns of it by itself
            first = c1.enroll(a, people[a][:2], use_largest_face=True, request_id="enroll-a")
            assert first.created and c1.get_identity(a).face_count == 2
            until(lambda: _exists(c2, a), timeout=30, what="r2 to learn of the enrollment")
            # a client's retry reaching the other replica gets the first result (the store keeps request ids)
            again = c2.enroll(a, people[a][:2], use_largest_face=True, request_id="enroll-a")
            assert again.face_ids == first.face_ids and again.created
            assert c2.get_identity(a).face_count == 2
            assert a in found(c2, people[a][2])

            # one identity enrolled on both replicas at once: one creates it, the other gets IDENTITY_EXISTS
            outcomes: dict[str, object] = {}

            def enroll(name: str, c: FaceSearchClient) -> None:
                try:
                    outcomes[name] = c.enroll(b, people[b][:1], use_largest_face=True)
                except AlreadyExistsError as err:
                    outcomes[name] = err

            threads = [threading.Thread(target=enroll, args=x) for x in (("r1", c1), ("r2", c2))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            refused = [o for o in outcomes.values() if isinstance(o, AlreadyExistsError)]
            assert len(refused) == 1 and refused[0].reason == "IDENTITY_EXISTS", outcomes
            until(lambda: _count(c1) == _count(c2) and _exists(c1, b) and _exists(c2, b), what="both to see b")
            assert c1.get_identity(b).face_count == c2.get_identity(b).face_count == 1

            # a deletion's OK on r2 means r1 no longer returns the faces: no waiting here
            assert c2.delete_identity(a) == 2
            with pytest.raises(NotFoundError):
                c1.get_identity(a)
            assert a not in found(c1, people[a][2])
            faces = c1.enroll(c_name, people[c_name][:3], use_largest_face=True).face_ids
            assert len(faces) >= 2, faces
            assert c2.delete_faces([faces[0]]) == 1  # a face r2 learned of (or the store knows)
            assert c1.get_identity(c_name).face_count == len(faces) - 1

            # r2 stopped cleanly (it leaves the registry); r1 enrolls; r2 restarted is caught up once SERVING
            r2.stop()
            c1.enroll(d_name, people[d_name][:1], use_largest_face=True)
        r2 = replica(server_bundle, root, logs, dsn, "r2")
        serving(r2)
        with r2.client(timeout=120) as c2, r1.client(timeout=120) as c1:
            assert c2.get_identity(d_name).face_count == 1
            assert c2.get_identity(c_name).face_count == len(faces) - 1
            with pytest.raises(NotFoundError):
                c2.get_identity(a)

            # r2 killed: it stays registered, so a deletion waits until it counts as fenced, then is OK
            r2.kill()
            assert c1.delete_identity(d_name) == 1
            with pytest.raises(NotFoundError):
                c1.get_identity(d_name)
        r2 = replica(server_bundle, root, logs, dsn, "r2")
        serving(r2)
        with r2.client(timeout=120) as c2:
            with pytest.raises(NotFoundError):
                c2.get_identity(d_name)
            assert c2.get_identity(b).face_count == 1
        # one client over both replicas (comma-separated targets, gRPC round_robin): calls reach each
        before = {srv.port: stats_calls(srv) for srv in (r1, r2)}
        with FaceSearchClient(f"{r1.target},{r2.target}", timeout=60) as both:

            def reached_both() -> bool:  # a subchannel joins the rotation once connected
                both.stats()  # only GetStats here: two methods alternating would each stay on one replica
                return all(stats_calls(srv) > before[srv.port] for srv in (r1, r2))

            until(reached_both, timeout=60, interval=0.2, what="calls on both replicas")
            assert both.get_identity(b).face_count == 1
        status = subprocess.run(
            [sys.executable, "-m", "indexer", "db", "status", "--store", dsn],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        assert "r1" in status.stdout and "r2" in status.stdout, status.stdout + status.stderr
    finally:
        r1.stop()
        r2.stop()


def stats_calls(srv: ServerProcess) -> float:
    """GetStats calls the server has finished (its Prometheus counter)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("facesearch_requests_total") and "GetStats" in line
    )


def _exists(c: FaceSearchClient, identity_id: str) -> bool:
    try:
        c.get_identity(identity_id)
    except NotFoundError:
        return False
    return True


def _count(c: FaceSearchClient) -> int:
    return int(c.stats()["identities"])


def test_postgres_outage_reads_from_memory_writes_unavailable_then_resume(
    server_bundle: Path, root: Path, tmp_path: Path, people: dict[str, list[Path]], pg_private: PgServer
) -> None:
    a, b, c_name = [p for p in people if len(people[p]) >= 3][:3]
    dsn = pg_private.dsn()
    logs = tmp_path / "logs"
    with pytest.raises(RuntimeError) as refused:  # not migrated: the server refuses the store's schema
        replica(server_bundle, root, logs, dsn, "r1")
    assert "STORE_SCHEMA" in str(refused.value) or "db migrate" in str(refused.value)
    migrated(dsn)
    r1 = replica(server_bundle, root, logs, dsn, "r1", FACESEARCH_STORE_FENCE_S="8")
    try:
        serving(r1)
        with r1.client(timeout=120, enroll_retries=0) as c:
            c.enroll(a, people[a][:2], use_largest_face=True)
            pg_private.stop_only()
            assert a in found(c, people[a][2])  # from memory, within the fence
            with pytest.raises(RpcFailedError) as down:
                c.enroll(b, people[b][:1], use_largest_face=True)
            assert down.value.reason == "STORE_UNAVAILABLE"
            # cut off past the fence: NOT_SERVING, searches refused with REPLICA_FENCED (it may miss a deletion)
            until(lambda: _health(c) == "NOT_SERVING", timeout=60, what="the fence")
            with pytest.raises(RpcFailedError) as fenced:
                c.identify(people[a][2])
            assert fenced.value.reason == "REPLICA_FENCED"
            pg_private.start_again()
            until(lambda: _health(c) == "SERVING", timeout=60, what="serving again")
            assert a in found(c, people[a][2])
            until(lambda: _enrolled(c, c_name, people[c_name][:1]), timeout=60, what="writes to resume")
            assert c.get_identity(c_name).face_count == 1
            assert r1.proc.poll() is None  # never restarted
    finally:
        r1.stop()


def _enrolled(c: FaceSearchClient, identity_id: str, photos: list[Path]) -> bool:
    try:
        c.enroll(identity_id, photos, use_largest_face=True, request_id=f"resume-{identity_id}")
    except RpcFailedError as err:
        assert err.reason in ("STORE_UNAVAILABLE", "STORE_OUTCOME_UNKNOWN"), err
        return False
    return True


def test_compaction_from_the_store_is_hot_swapped_and_drops_the_absorbed_tail(
    server_bundle: Path, root: Path, tmp_path: Path, people: dict[str, list[Path]], pg_dsn: str
) -> None:
    dsn = migrated(pg_dsn)
    a, b = [p for p in people if len(people[p]) >= 3][:2]
    logs = tmp_path / "logs"
    r1 = replica(server_bundle, root, logs, dsn, "r1")
    r2: ServerProcess | None = None
    try:
        serving(r1)
        with r1.client(timeout=120) as c1:
            published = next(i.identity_id for i in c1.list_identities() if i.identity_id.startswith("pub-"))
            n_a = len(c1.enroll(a, people[a][:3], use_largest_face=True).face_ids)
            assert n_a >= 1
            c1.delete_identity(published)
            before = c1.stats()
            assert before["live_faces"] == n_a and before["tombstones"] > 0
            # enrollments go on through the compaction (on a client of their own)
            acked: dict[str, int] = {}
            stop = threading.Event()

            def enroll_meanwhile() -> None:
                others = [p for p in people if p not in (a, b)]
                with r1.client(timeout=120) as cw:
                    for who in others:
                        if stop.is_set():
                            return
                        acked[who] = cw.enroll(who, people[who][:1], use_largest_face=True).face_count

            writer = threading.Thread(target=enroll_meanwhile)
            writer.start()
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "indexer", "compact", str(root)],
                    capture_output=True,
                    text=True,
                    cwd=REPO,
                    env={**os.environ, "PYTHONPATH": str(REPO), "FACESEARCH_STORE": dsn},
                    check=False,
                )
                assert done.returncode == 0, done.stdout + done.stderr
                until(lambda: c1.stats()["index_version"] != before["index_version"], timeout=60, what="the swap")
            finally:
                stop.set()
                writer.join()
            assert acked, "no enrollment was made during the compaction"
            for who, count in acked.items():  # each acknowledged one is served, from the version or the tail
                assert c1.get_identity(who).face_count == count
                c1.delete_identity(who)  # back to A only, for the counts below
            until(lambda: c1.stats()["live_faces"] == 0, timeout=30, what="the tail to be only deletions")
            after = c1.stats()
            # the absorbed tail is gone from memory: A is in the version now, the deletion too
            assert after["live_faces"] == 0, after
            assert after["identities"] == before["identities"]
            assert c1.get_identity(a).face_count == n_a
            assert a in found(c1, people[a][-1])
            with pytest.raises(NotFoundError):
                c1.get_identity(published)
            n_b = len(c1.enroll(b, people[b][:1], use_largest_face=True).face_ids)
            assert c1.stats()["live_faces"] == n_b
        # the store's log pruned to what the kept version absorbed (retention): a replica still catches up
        pruned = subprocess.run(
            [sys.executable, "-m", "indexer", "prune", str(root), "--keep", "1"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "FACESEARCH_STORE": dsn},
            check=False,
        )
        assert pruned.returncode == 0 and "store log pruned up to seq" in pruned.stdout, pruned.stdout + pruned.stderr
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT min(seq), (SELECT value FROM store_meta WHERE key = 'pruned_upto') FROM changes"
            ).fetchone()
        assert row is not None and int(row[1]) > 0 and row[0] is not None and row[0] > int(row[1]), row
        # a replica started now loads the new version and replays only the log after it
        r2 = replica(server_bundle, root, logs, dsn, "r2")
        serving(r2)
        with r2.client(timeout=120) as c2:
            stats = c2.stats()
            assert stats["index_version"] == after["index_version"] and stats["live_faces"] == n_b
            assert c2.get_identity(a).face_count == n_a
            assert c2.get_identity(b).face_count == n_b
            with pytest.raises(NotFoundError):
                c2.get_identity(published)
    finally:
        r1.stop()
        if r2 is not None:
            r2.stop()


def test_replica_killed_mid_enroll_then_retry_elsewhere_enrolls_once(
    server_bundle: Path, root: Path, tmp_path: Path, people: dict[str, list[Path]], pg_dsn: str
) -> None:
    dsn = migrated(pg_dsn)
    x = max(people, key=lambda p: len(people[p]))
    photos = people[x][:6]
    logs = tmp_path / "logs"
    r1 = replica(server_bundle, root, logs, dsn, "r1")
    r2 = replica(server_bundle, root, logs, dsn, "r2")
    try:
        serving(r1)
        serving(r2)
        failed: list[BaseException] = []

        def enroll_on_r1() -> None:
            with r1.client(timeout=120, enroll_retries=0) as c:
                try:
                    c.enroll(x, photos, use_largest_face=True, request_id="kill-me")
                except FaceSearchError as err:
                    failed.append(err)

        writer = threading.Thread(target=enroll_on_r1)
        writer.start()
        time.sleep(1.0)  # the six photos take longer than this to detect and embed: killed in flight
        r1.kill()
        writer.join()
        with r2.client(timeout=120) as c2:
            retried = c2.enroll(x, photos, use_largest_face=True, request_id="kill-me")  # the client's retry
            assert len(retried.face_ids) >= 1
            assert c2.get_identity(x).face_count == len(retried.face_ids)  # once, whether r1 had committed or not
            # r1 is still registered (killed): a deletion waits until it counts as fenced, then is OK
            assert c2.delete_identity(x) == len(retried.face_ids)
        r1 = replica(server_bundle, root, logs, dsn, "r1")
        serving(r1)
        with r1.client(timeout=120) as c1, pytest.raises(NotFoundError):
            c1.get_identity(x)
    finally:
        r1.stop()
        r2.stop()


def test_a_rebuild_from_photos_never_brings_back_what_the_store_erased(
    server_bundle: Path, root: Path, tmp_path: Path, pg_dsn: str
) -> None:
    dsn = migrated(pg_dsn)
    r1 = replica(server_bundle, root, tmp_path / "logs", dsn, "r1")
    try:
        serving(r1)
        with r1.client(timeout=120) as c1:
            gone = next(i.identity_id for i in c1.list_identities() if i.identity_id.startswith("pub-"))
            n_gone = c1.delete_identity(gone)
            before = c1.stats()
            # the same embeddings published again by the embedded indexer after others: new vector ids, so
            # the store's tombstones (by vector id) do not cover them; only the erasure ledger can
            contract = ModelBundle.load(server_bundle, verify=False).contract_id
            emb, ids = synthetic_embeddings(200, seed=11, prefix="pub")
            extra, extra_ids = synthetic_embeddings(40, seed=99, prefix="extra")
            build_index(root, np.concatenate([extra, emb]), extra_ids + ids, contract, work=tmp_path / "work2")
            until(lambda: c1.stats()["index_version"] != before["index_version"], timeout=60, what="the hot swap")
            with pytest.raises(NotFoundError):
                c1.get_identity(gone)
            assert gone not in {i.identity_id for i in c1.list_identities()}
            assert c1.stats()["identities"] == before["identities"] + len(set(extra_ids))
            now = c1.stats()  # the erased identity's faces in the new version are hidden from search too
            assert now["faces"] == now["index_ntotal"] - n_gone and now["live_faces"] == 0, now
        r1.stop()
        r1 = replica(server_bundle, root, tmp_path / "logs", dsn, "r1")  # and after a restart
        serving(r1)
        with r1.client(timeout=120) as c1, pytest.raises(NotFoundError):
            c1.get_identity(gone)
    finally:
        r1.stop()
