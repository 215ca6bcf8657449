"""The PostgreSQL store when PostgreSQL goes away (a server of the test's own, tests/pg_fixtures.py):
while it is down every operation fails with UNAVAILABLE ``STORE_UNAVAILABLE`` and writes nothing; when
it is back the same store object works again (no restart); ``pg_ctl restart`` under a store holding
pooled connections is invisible to it; a listener reconnects and says to catch up; a connection lost
during COMMIT is ``STORE_OUTCOME_UNKNOWN``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import psycopg
import pytest

from facesearch.errors import FaceSearchError, Reason, UnavailableError
from facesearch.store.live_journal import NewFace
from facesearch.store.postgres import ChangeListener, PgStore, PoolSettings, migrate
from facesearch.store.postgres.failures import commit
from tests.pg_fixtures import *  # noqa: F403
from tests.pg_fixtures import PgServer

D = 8
# Short waits, so an outage is reported in ~1 s; the pool retries a reconnection for 2 s at most, then
# the next operation starts a fresh attempt.
POOL = PoolSettings(min_size=2, max_size=4, timeout_s=1.0, connect_timeout_s=2, reconnect_timeout_s=2.0)


def face(seed: int) -> NewFace:
    e = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return NewFace(e / np.linalg.norm(e), f"p/{seed}.jpg", None, 0.9, 30.0, 4.0)


@pytest.fixture
def private_store(pg_private: PgServer) -> Iterator[tuple[PgServer, PgStore]]:
    with psycopg.connect(pg_private.dsn()) as conn:
        migrate(conn)
    with PgStore.open(pg_private.dsn(), contract_id="c", d=D, pool=POOL) as store:
        yield pg_private, store


def eventually(op: Callable[[], object], seconds: float = 60.0) -> object:
    """``op()`` once it stops failing with UNAVAILABLE (a liveness bound, not a timing claim)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return op()
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_postgresql_down_gives_unavailable_and_the_same_store_recovers(
    private_store: tuple[PgServer, PgStore],
) -> None:
    server, store = private_store
    first = store.enroll("ann", [face(1)])
    server.stop_only()
    down: list[FaceSearchError] = []
    for op in (
        lambda: store.enroll("ann", [face(2)]),
        lambda: store.enroll("ben", [face(3)], create_only=True),
        lambda: store.delete_identity("ann"),
        lambda: store.delete_faces(first.vector_ids.tolist()),
        lambda: store.snapshot(after_seq=0),
        lambda: store.changes_since(0),
        store.erased,
    ):
        with pytest.raises(UnavailableError) as err:
            op()
        down.append(err.value)
    assert {e.reason for e in down} == {Reason.STORE_UNAVAILABLE}
    assert all(server.password not in str(e) for e in down)

    server.start_again()
    back = eventually(lambda: store.enroll("ben", [face(4)]))
    later = store.enroll("ann", [face(5)])
    # nothing that failed was written: the log holds exactly the acknowledged writes
    assert [c.seq for c in store.changes_since(0)] == [first.seq, back.seq, later.seq]  # type: ignore[attr-defined]
    assert store.face_count("ann") == 2 and store.face_count("ben") == 1


def test_a_restart_under_pooled_connections_is_invisible_to_the_store(
    private_store: tuple[PgServer, PgStore],
) -> None:
    server, store = private_store
    store.enroll("cat", [face(6)])
    assert store.snapshot().high_water == 1  # the pool holds connections to the old server process
    server.restart()  # every one of them is now closed by the server
    after = store.enroll("cat", [face(7)])  # no error: the pool checks a connection before lending it
    assert after.face_count == 2
    assert len(store.snapshot().faces) == 2


def test_a_listener_reconnects_after_a_restart_and_asks_for_a_catch_up(
    private_store: tuple[PgServer, PgStore],
) -> None:
    server, store = private_store
    with ChangeListener(store.dsn, connect_timeout_s=2, retry_s=0.2) as listener:
        assert listener.wait(5.0).resync
        applied = store.high_water()
        server.stop_only()
        wakes = [listener.wait(0.5) for _ in range(3)]  # down: it keeps trying, no notification
        assert all(w.seq is None for w in wakes)
        server.start_again()
        missed = eventually(lambda: store.enroll("dan", [face(8)]))  # may commit before it listens again
        deadline = time.monotonic() + 60
        while not listener.wait(1.0).resync:
            assert time.monotonic() < deadline, "the listener did not reconnect"
        assert listener.reconnects >= 1
        caught = store.snapshot(after_seq=applied)  # what a replica does on resync
        assert caught.high_water == missed.seq and [i.identity_id for i in caught.identities] == ["dan"]  # type: ignore[attr-defined]
        now = store.enroll("dan", [face(9)])
        woke = listener.wait(10.0)
        assert woke.seq == now.seq


def test_a_connection_lost_during_commit_is_an_unknown_outcome(pg_dsn: str) -> None:
    conn = psycopg.connect(pg_dsn, application_name="doomed")
    try:
        conn.execute("CREATE TABLE probe (x int)")
        conn.execute("INSERT INTO probe VALUES (1)")
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = 'doomed'"
            )
        with pytest.raises(UnavailableError) as err:
            commit(conn, "probe")
        assert err.value.reason is Reason.STORE_OUTCOME_UNKNOWN
        assert "request_id" in str(err.value)
    finally:
        conn.close()
