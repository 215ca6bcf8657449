"""The PostgreSQL store against a real PostgreSQL (tests/pg_fixtures.py): the change log's order and
content, snapshots, two writers enrolling one identity at once, read-after-commit order under
concurrent writers, erasures and idempotent enrollment, and LISTEN/NOTIFY wake-ups with catch-up
by seq when a notification is missed."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from facesearch.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    PreconditionError,
    Reason,
)
from facesearch.store.erasure_ledger import ErasedFace
from facesearch.store.live_journal import LIVE_VECTOR_ID_BASE, NewFace
from facesearch.store.postgres import ChangeKind, ChangeListener, PgStore, PoolSettings, migrate
from tests.pg_fixtures import *  # noqa: F403

D = 16
POOL = PoolSettings(max_size=12, timeout_s=10.0, connect_timeout_s=5)


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PgStore]:
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
    with PgStore.open(pg_dsn, contract_id="test-contract", d=D, pool=POOL) as opened:
        yield opened


def faces(n: int, seed: int, source: str = "photo") -> list[NewFace]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        e = rng.standard_normal(D).astype(np.float32)
        out.append(NewFace(e / np.linalg.norm(e), f"{source}/{seed}_{i}.jpg", (1.0, 2.0, 30.0, 40.0), 0.9, 28.0, 5.0))
    return out


def test_enroll_then_deletes_are_logged_in_order_and_snapshots_hold_the_state(store: PgStore) -> None:
    alice = faces(3, 1)
    a = store.enroll("alice", alice, name="Alice", metadata={"team": "x"}, principal="tester")
    b = store.enroll("bob", faces(2, 2), name="Bob")
    assert a.created and b.created and a.face_count == 3 and b.face_count == 2
    assert a.vector_ids.min() >= LIVE_VECTOR_ID_BASE and len(set(a.vector_ids) | set(b.vector_ids)) == 5
    more = store.enroll("alice", faces(1, 3))  # appends; name and metadata kept
    assert not more.created and more.face_count == 4 and more.identity.name == "Alice"
    gone = store.delete_faces([int(a.vector_ids[0])])
    deleted = store.delete_identity("bob", principal="tester")
    assert set(deleted.vector_ids) == set(b.vector_ids.tolist())

    log = store.changes_since(0)
    assert [c.seq for c in log] == sorted(c.seq for c in log) and len(log) == 5
    assert [c.kind for c in log] == [
        ChangeKind.ENROLL,
        ChangeKind.ENROLL,
        ChangeKind.ENROLL,
        ChangeKind.DELETE_FACES,
        ChangeKind.DELETE_IDENTITY,
    ]
    assert [c.seq for c in log] == [a.seq, b.seq, more.seq, gone.seq, deleted.seq]
    assert [c.seq for c in store.changes_since(more.seq)] == [gone.seq, deleted.seq]
    assert store.high_water() == deleted.seq

    whole = store.snapshot()
    assert whole.high_water == deleted.seq and whole.journal_id == store.store_id
    assert {f.vector_id for f in whole.faces} == set(a.vector_ids[1:].tolist()) | set(more.vector_ids.tolist())
    row = {f.vector_id: i for i, f in enumerate(whole.faces)}[int(a.vector_ids[1])]
    np.testing.assert_array_equal(whole.embeddings[row], alice[1].embedding)  # bytes in, same floats out
    assert whole.faces[row].source == alice[1].source and whole.faces[row].box == (1.0, 2.0, 30.0, 40.0)
    by_id = {i.identity_id: i for i in whole.identities}
    assert not by_id["alice"].deleted and by_id["alice"].metadata == {"team": "x"}
    assert by_id["bob"].deleted and by_id["bob"].name is None and by_id["bob"].metadata == {}
    assert {t.vector_id for t in whole.tombstones} == {int(a.vector_ids[0]), *b.vector_ids.tolist()}

    tail = store.snapshot(after_seq=more.seq)  # what a version that absorbed up to `more` lacks
    assert tail.faces == [] and {i.identity_id for i in tail.identities} == {"alice", "bob"}
    assert {t.seq for t in tail.tombstones} == {gone.seq, deleted.seq}
    audit = store.audit_entries()
    assert [(e.action, e.identity_id) for e in audit] == [
        ("enroll", "alice"),
        ("enroll", None),  # bob's rows keep only the digest once his deletion commits
        ("enroll", "alice"),
        ("delete_faces", "alice"),
        ("delete_identity", None),
    ]
    bob = store.ledger.digester.subject("bob")
    assert [e.detail.get("subject") for e in audit] == [None, bob, None, None, bob]
    assert audit[0].principal == "tester" and audit[-1].change_seq == deleted.seq


def test_deleting_what_does_not_exist_is_not_found(store: PgStore) -> None:
    with pytest.raises(NotFoundError) as missing:
        store.delete_identity("nobody")
    assert missing.value.reason is Reason.IDENTITY_NOT_FOUND
    a = store.enroll("alice", faces(1, 1))
    store.delete_faces(a.vector_ids.tolist())
    with pytest.raises(NotFoundError) as again:
        store.delete_faces(a.vector_ids.tolist())  # already deleted
    assert again.value.reason is Reason.FACE_NOT_FOUND
    assert store.high_water() == 2  # the refused calls logged nothing


def test_a_published_versions_faces_are_deleted_by_what_the_caller_serves(store: PgStore) -> None:
    base = [ErasedFace(17, "people/carol/1.jpg"), ErasedFace(18, None)]  # faces only in a published version
    deleted = store.delete_identity("carol", known_faces=base)
    assert set(deleted.vector_ids) == {17, 18}
    assert {t.vector_id for t in store.snapshot(after_seq=0).tombstones} == {17, 18}
    erased = store.erased()
    assert erased.identity_erased("carol") and erased.face_erased("carol", "/elsewhere/1.jpg")
    assert set(erased.vector_ids) == {17, 18}
    faces_only = store.delete_faces([21], ["dave"], sources=["dave/2.jpg"])
    assert store.changes_since(deleted.seq)[0].vector_ids == (21,) and faces_only.seq > deleted.seq
    assert store.erased().face_erased("dave", "dave/2.jpg") and not store.is_erased("dave")


def test_two_writers_creating_one_identity_at_once_one_wins_the_other_is_told(pg_dsn: str, store: PgStore) -> None:
    """Two replicas (two store objects, two pools) race a create-only enroll of the same identity: the
    store serialises them; exactly one creates it, every other gets IDENTITY_EXISTS, nothing is lost."""
    other = PgStore.open(pg_dsn, contract_id="test-contract", d=D, pool=POOL)
    writers = [store, other] * 4
    barrier = threading.Barrier(len(writers))
    results: list[object] = [None] * len(writers)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = writers[i].enroll("erin", faces(2, 100 + i), create_only=True)
        except AlreadyExistsError as err:
            results[i] = err

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [r for r in results if not isinstance(r, AlreadyExistsError)]
        lost = [r for r in results if isinstance(r, AlreadyExistsError)]
        assert len(won) == 1 and len(lost) == len(writers) - 1
        assert all(e.reason is Reason.IDENTITY_EXISTS for e in lost)
        assert store.face_count("erin") == 2 and len(store.changes_since(0)) == 1

        # appending writers all succeed; their faces are all there, in log order
        def append(i: int) -> None:
            barrier.wait()
            results[i] = writers[i].enroll("erin", faces(1, 200 + i))

        threads = [threading.Thread(target=append, args=(i,)) for i in range(len(writers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seqs = sorted(r.seq for r in results)  # type: ignore[attr-defined]
        assert len(set(seqs)) == len(writers) and store.face_count("erin") == 2 + len(writers)
        assert [c.seq for c in store.changes_since(0)][1:] == seqs
    finally:
        other.close()


def test_a_reader_following_the_log_by_seq_never_skips_a_change_under_concurrent_writers(
    pg_dsn: str, store: PgStore
) -> None:
    """The log's seq order is its commit order: a reader that repeatedly asks for what follows the last
    seq it saw ends with every change, although the writers commit concurrently."""
    stores = [store, PgStore.open(pg_dsn, contract_id="test-contract", d=D, pool=POOL)]
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    cuts: list[tuple[int, list[int]]] = []

    def follow() -> None:
        last = 0
        while not stop.is_set():
            batch = store.changes_since(last)
            seen.extend(c.seq for c in batch)
            last = batch[-1].seq if batch else last
            snap = store.snapshot()  # a consistent cut: exactly the changes up to its high water
            cuts.append((snap.high_water, [f.seq for f in snap.faces]))
        seen.extend(c.seq for c in store.changes_since(last))

    def write(w: int) -> None:
        try:
            for i in range(15):
                stores[w % 2].enroll(f"person-{w}-{i % 3}", faces(1, 1000 * w + i))
        except BaseException as err:
            errors.append(err)

    reader = threading.Thread(target=follow)
    reader.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    try:
        for t in writers:
            t.start()
        for t in writers:
            t.join()
    finally:
        stop.set()
        reader.join()
        stores[1].close()
    assert errors == []
    every = [c.seq for c in store.changes_since(0)]
    assert len(every) == 90 and seen == every  # nothing skipped, nothing twice, in order
    assert len(cuts) > 1
    for high, face_seqs in cuts:  # one face per enroll, no deletions: the cut holds seqs 1..high
        assert sorted(face_seqs) == [s for s in every if s <= high]


def test_an_erased_identity_is_refused_until_unerased(store: PgStore) -> None:
    store.enroll("frank", faces(2, 5, source="frank"))
    store.delete_identity("frank", via="test")
    with pytest.raises(PreconditionError) as refused:
        store.enroll("frank", faces(1, 6))
    assert refused.value.reason is Reason.IDENTITY_ERASED
    with pytest.raises(NotFoundError) as not_erased:
        store.unerase("grace", via="test")
    assert not_erased.value.reason is Reason.NOT_ERASED
    store.unerase("frank", via="test", principal="admin")
    again = store.enroll("frank", faces(1, 7))
    assert again.created and again.face_count == 1
    erased = store.erased()
    assert not erased.identity_erased("frank")
    assert erased.face_erased("frank", "frank/5_0.jpg")  # the faces erased before stay erased
    assert [e.action for e in store.audit_entries(identity_id="frank")] == [
        "enroll",
        "delete_identity",
        "unerase",
        "enroll",
    ]


def test_an_enroll_retried_with_its_request_id_returns_the_first_result(store: PgStore) -> None:
    asked = faces(2, 9)
    first = store.enroll("hana", asked, name="Hana", request_id="req-1", principal="svc")
    retry = store.enroll("hana", asked, name="Hana", request_id="req-1", principal="svc")
    assert retry.replayed and not first.replayed
    assert (retry.seq, retry.created, retry.face_count) == (first.seq, True, 2)
    np.testing.assert_array_equal(retry.vector_ids, first.vector_ids)
    assert store.face_count("hana") == 2 and store.high_water() == first.seq  # nothing written twice
    with pytest.raises(InvalidInputError) as reused:
        store.enroll("hana", faces(2, 10), name="Hana", request_id="req-1", principal="svc")
    assert reused.value.reason is Reason.REQUEST_ID_REUSED
    with psycopg.connect(store.dsn) as conn:  # the id itself is not stored, only its digest
        rows = conn.execute("SELECT request_key, result::text FROM idempotency_keys").fetchall()
    assert rows and all("req-1" not in key and "hana" not in result for key, result in rows)
    with pytest.raises(AlreadyExistsError):
        store.enroll("hana", faces(1, 11), create_only=True, request_id="req-2")
    assert store.expire_request_ids(0.0) == 1


def test_bad_embeddings_are_refused_before_anything_is_written(store: PgStore) -> None:
    bad = NewFace(np.full(D, np.nan, np.float32), None, None, None, None, None)
    with pytest.raises(InvalidInputError):
        store.enroll("ivan", [bad])
    short = NewFace(np.ones(D - 1, np.float32), None, None, None, None, None)
    with pytest.raises(InvalidInputError):
        store.enroll("ivan", [short])
    assert store.high_water() == 0 and store.identity("ivan") is None


def test_prune_keeps_faces_and_refuses_a_tail_older_than_the_prune(store: PgStore) -> None:
    a = store.enroll("judy", faces(2, 12))
    d = store.delete_faces([int(a.vector_ids[0])])
    store.delete_identity("judy")
    k = store.enroll("ken", faces(1, 13))
    assert store.prune(d.seq) == 2
    assert store.high_water() == k.seq and store.pruned_upto() == d.seq
    with pytest.raises(PreconditionError) as old:
        store.snapshot(after_seq=a.seq)
    assert old.value.reason is Reason.STORE_LOG_PRUNED
    tail = store.snapshot(after_seq=d.seq)
    assert {i.identity_id for i in tail.identities} == {"judy", "ken"} and len(tail.faces) == 1
    assert {f.vector_id for f in store.snapshot().faces} == set(k.vector_ids.tolist())
    store.prune(k.seq)
    assert store.high_water() == k.seq  # the position survives an empty log
    assert store.identity("judy") is None and store.identity("ken") is not None


def test_a_commit_wakes_a_listener_on_another_connection_with_its_seq(store: PgStore) -> None:
    with ChangeListener(store.dsn) as listener:
        assert listener.wait(5.0).resync  # connected: catch up first
        assert listener.wait(0.2).timed_out
        done = store.enroll("liam", faces(1, 14))
        woke = listener.wait(10.0)
        assert woke.seq == done.seq and not woke.resync
        second = store.enroll("liam", faces(1, 15))
        third = store.delete_identity("liam")
        woke = listener.wait(10.0)
        got = woke.seq
        while got is not None and got < third.seq:  # both may come in one wake-up or two
            got = listener.wait(10.0).seq
        assert got == third.seq and second.seq < third.seq
        with pytest.raises(NotFoundError):
            store.delete_identity("liam")  # refused: rolled back, so nothing is notified
        assert listener.wait(0.5).timed_out


def test_a_missed_notification_is_caught_up_by_seq(store: PgStore) -> None:
    """A replica whose listening connection was down during a commit gets no notification for it; the
    next wake-up (a later commit, its reconnection, or the poll interval) reads the log from the last
    seq it applied and finds every change."""
    applied = store.high_water()
    listener = ChangeListener(store.dsn)
    try:
        assert listener.wait(5.0).resync
        drop_listeners(store.dsn)  # its connection is gone: the next commit's notification is lost
        missed = store.enroll("mia", faces(1, 16))
        woke = listener.wait(10.0)
        assert woke.seq is None  # the missed commit never arrives as a notification
        if not woke.resync:
            woke = listener.wait(10.0)
        assert woke.resync and listener.reconnects == 1
        caught = store.snapshot(after_seq=applied)
        assert [i.identity_id for i in caught.identities] == ["mia"] and caught.high_water == missed.seq
        later = store.enroll("mia", faces(1, 17))
        assert listener.wait(10.0).seq == later.seq
    finally:
        listener.close()


def drop_listeners(dsn: str) -> None:
    """Terminate every listening connection and wait until PostgreSQL has let them go."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        query = "SELECT pid FROM pg_stat_activity WHERE application_name = 'facesearch-listen'"
        for (pid,) in admin.execute(query).fetchall():
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))  # waits up to 10 s for it to end
        assert admin.execute(query).fetchall() == []


def test_a_deletion_racing_an_enrollment_of_the_same_identity_never_leaves_faces_behind(
    pg_dsn: str, store: PgStore
) -> None:
    """Replica A deletes an identity while replica B adds faces to it: whichever the store serialises
    first, afterwards the identity is erased and holds no face (B's faces were either deleted with it,
    or refused with IDENTITY_ERASED)."""
    other = PgStore.open(pg_dsn, contract_id="test-contract", d=D, pool=POOL)

    def race(who: str, seed: int) -> dict[str, object]:
        barrier = threading.Barrier(2)
        got: dict[str, object] = {}

        def delete() -> None:
            barrier.wait()
            got["delete"] = store.delete_identity(who)

        def append() -> None:
            barrier.wait()
            try:
                got["enroll"] = other.enroll(who, faces(2, seed))
            except PreconditionError as err:
                got["enroll"] = err

        threads = [threading.Thread(target=delete), threading.Thread(target=append)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return got

    outcomes: set[str] = set()
    try:
        for round_ in range(8):
            who = f"race-{round_}"
            store.enroll(who, faces(1, 300 + round_))
            got = race(who, 400 + round_)
            assert store.face_count(who) == 0 and store.is_erased(who)
            enrolled = got["enroll"]
            if isinstance(enrolled, PreconditionError):
                assert enrolled.reason is Reason.IDENTITY_ERASED
                outcomes.add("refused")
            else:  # enrolled first: the deletion took its faces too
                assert set(enrolled.vector_ids.tolist()) <= set(got["delete"].vector_ids)  # type: ignore[attr-defined]
                outcomes.add("deleted with it")
    finally:
        other.close()
    assert outcomes  # which orders occur depends on scheduling; each is checked when it does
