"""Replicas following one PostgreSQL store (tests/pg_fixtures.py): every follower ends with the store's
state, a replica's own write is applied before it returns (read-your-writes), a deletion waits until
every replica applied it or has fenced itself, a replica cut off from the store stops serving after
``fence_s`` and serves again once it caught up; the replicas table arrives by migration 2 on a
version-1 database without touching its data."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import psycopg
import pytest

from facesearch.store.live_journal import JournalSnapshot, NewFace
from facesearch.store.postgres import MIGRATIONS, LogFollower, PgStore, PoolSettings, migrate
from facesearch.store.postgres.admin import store_status
from facesearch.store.postgres.migrations import current_version
from tests.pg_fixtures import *  # noqa: F403
from tests.pg_fixtures import PgServer

D = 8
POOL = PoolSettings(max_size=6, timeout_s=1.0, connect_timeout_s=2, reconnect_timeout_s=2.0)


@dataclass
class Replica:
    """What a replica serves, as a model: identity -> its face ids (the server's LiveState stands here)."""

    faces: dict[str, set[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, snap: JournalSnapshot) -> None:
        with self.lock:
            for ident in snap.identities:
                if ident.deleted:
                    self.faces.pop(ident.identity_id, None)
            gone = {t.vector_id for t in snap.tombstones}
            self.faces = {k: v - gone for k, v in self.faces.items()}
            for f in snap.faces:
                self.faces.setdefault(f.identity_id, set()).add(f.vector_id)

    def view(self) -> dict[str, set[int]]:
        with self.lock:
            return {k: set(v) for k, v in self.faces.items() if v}


def truth(store: PgStore) -> dict[str, set[int]]:
    model = Replica()
    model.apply(store.snapshot())
    return model.view()


def face(seed: int) -> NewFace:
    e = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return NewFace(e / np.linalg.norm(e), f"p/{seed}.jpg", None, 0.9, 30.0, 4.0)


def until(check: Callable[[], bool], seconds: float = 60.0) -> None:
    """Wait for ``check()`` (a liveness bound, not a timing claim)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def open_store(dsn: str) -> PgStore:
    return PgStore.open(dsn, contract_id="c", d=D, pool=POOL)


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
    return pg_dsn


@pytest.fixture
def cluster(dsn: str) -> Iterator[list[tuple[PgStore, Replica, LogFollower]]]:
    """Three replicas, each with its own store object (pool), model and running follower."""
    made = []
    for i in range(3):
        store = open_store(dsn)
        model = Replica()
        follower = LogFollower(store, model.apply, replica_id=f"r{i}", poll_s=0.5, fence_s=5.0)
        follower.catch_up()  # before serving
        follower.start()
        made.append((store, model, follower))
    yield made
    for store, _, follower in made:
        follower.stop()
        store.close()


def test_every_replica_ends_with_the_stores_state_and_sees_its_own_writes_at_once(cluster) -> None:
    done: list[int] = []
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        store, model, follower = cluster[i]
        try:
            for k in range(10):
                ident = f"p{(i * 7 + k) % 5}"
                enrolled = store.enroll(ident, [face(100 * i + k)])
                follower.catch_up()  # the replica's own write, applied before it "replies"
                assert enrolled.vector_ids[0] in model.view()[ident]  # read-your-writes
                if k % 4 == 3:
                    deleted = store.delete_faces(enrolled.vector_ids.tolist())
                    follower.catch_up()
                    assert enrolled.vector_ids[0] not in model.view().get(ident, set())
                    done.append(deleted.seq)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = cluster[0][0]
    high = store.high_water()
    until(lambda: all(f.applied_seq >= high for _, _, f in cluster))
    expected = truth(store)
    assert len(expected) == 5 and sum(len(v) for v in expected.values()) == 30 - len(done)
    for _, model, _ in cluster:
        assert model.view() == expected


def test_a_deletion_returns_once_every_replica_has_applied_it(cluster) -> None:
    store, _, follower = cluster[0]
    enrolled = store.enroll("zoe", [face(1), face(2)])
    follower.catch_up()
    until(lambda: all("zoe" in m.view() for _, m, _ in cluster))  # everyone serves zoe
    deleted = store.delete_identity("zoe")
    follower.catch_up()
    done = store.replicas.wait_applied(deleted.seq, fence_s=5.0)
    assert done.complete and sorted(done.applied) == ["r0", "r1", "r2"] and done.fenced == ()
    for _, m, _ in cluster:  # the moment the deletion would be acknowledged, no replica has zoe
        assert "zoe" not in m.view()
    served = {v for _, m, _ in cluster for faces in m.view().values() for v in faces}
    assert served.isdisjoint(enrolled.vector_ids.tolist())


def test_a_deletion_does_not_wait_past_the_fence_for_a_replica_that_is_gone(dsn: str) -> None:
    """A replica that stops following (killed, or cut off from the store) without leaving the registry:
    the deletion waits until its heartbeat is older than the fence, by which time the replica has
    stopped serving by its own clock; a live replica has applied it."""
    live_store, gone_store = open_store(dsn), open_store(dsn)
    live_model, gone_model = Replica(), Replica()
    live = LogFollower(live_store, live_model.apply, replica_id="live", poll_s=0.2, fence_s=1.0)
    gone = LogFollower(gone_store, gone_model.apply, replica_id="gone", poll_s=0.2, fence_s=1.0)
    try:
        live_store.enroll("yan", [face(3)])
        live.catch_up()
        gone.catch_up()
        live.start()
        assert gone.serving_allowed() and "yan" in gone_model.view()
        # "gone" follows no more (its thread never started): it neither applies nor heartbeats
        deleted = live_store.delete_identity("yan")
        live.catch_up()
        done = live_store.replicas.wait_applied(deleted.seq, fence_s=1.0, margin_s=0.2)
        assert done.complete and done.applied == ("live",) and done.fenced == ("gone",)
        assert "yan" in gone_model.view()  # it still holds the deleted face...
        assert not gone.serving_allowed()  # ...but no longer serves: the fence passed before the wait ended
        assert "yan" not in live_model.view()
        states = {s.replica_id: s for s in live_store.replicas.states()}
        assert states["live"].applied_seq >= deleted.seq and states["gone"].applied_seq < deleted.seq
    finally:
        live.stop()
        gone.stop()
        live_store.close()
        gone_store.close()


def test_a_replica_cut_off_from_the_store_stops_serving_then_serves_again(pg_private: PgServer) -> None:
    with psycopg.connect(pg_private.dsn()) as conn:
        migrate(conn)
    store = open_store(pg_private.dsn())
    model = Replica()
    follower = LogFollower(store, model.apply, replica_id="r", poll_s=0.2, fence_s=1.5)
    try:
        store.enroll("xia", [face(4)])
        follower.catch_up()
        follower.start()
        assert follower.serving_allowed()
        pg_private.stop_only()
        until(lambda: not follower.serving_allowed())  # no catch-up for fence_s: it stops serving
        assert follower.failures > 0 and "xia" in model.view()  # what it holds is kept for when it is back
        pg_private.start_again()
        until(follower.serving_allowed)  # caught up again: serving, without a restart
        later = store.enroll("xia", [face(5)])
        until(lambda: follower.applied_seq >= later.seq)
        assert model.view() == truth(store)
    finally:
        follower.stop()
        store.close()


def test_a_replica_that_stops_cleanly_leaves_the_registry(dsn: str) -> None:
    store = open_store(dsn)
    follower = LogFollower(store, Replica().apply, replica_id="leaving", poll_s=0.2, fence_s=2.0)
    try:
        follower.catch_up()
        assert [s.replica_id for s in store.replicas.states()] == ["leaving"]
        listed = store_status(dsn).replicas  # what `facesearch-index db status` shows
        assert [(r["replica_id"], r["applied_seq"]) for r in listed] == [("leaving", 0)]
        follower.stop()
        assert store.replicas.states() == []
        seq = store.enroll("wes", [face(6)]).seq
        assert store.replicas.wait_applied(seq, fence_s=2.0).complete  # nobody to wait for
    finally:
        store.close()


def test_migration_2_adds_the_replicas_table_to_a_version_1_store_keeping_its_data(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn, migrations=MIGRATIONS[:1])
        assert current_version(conn) == 1
        conn.execute(
            "INSERT INTO identities (identity_id, seq, created_at, updated_at) VALUES ('old', 1, now(), now())"
        )
        conn.commit()
        report = migrate(conn)
        assert (report.before, report.applied) == (1, (2,))
        assert conn.execute("SELECT identity_id FROM identities").fetchall() == [("old",)]
        assert conn.execute("SELECT count(*) FROM replicas").fetchone() == (0,)
