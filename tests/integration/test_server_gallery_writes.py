"""The gallery's write path without models (issue 12): idempotent Enroll under a request id, no write
after the caller's deadline, the explicit append flag, the audit log (principal, pseudonymised on
erasure, kept apart from the journal, bounded), and ListIdentities pages that stay consistent while
enrollments and deletions go on. Real journal, ledger, audit log and published index; the server
processes' side is in test_server_enroll_idempotency.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import AlreadyExistsError, InvalidInputError
from facesearch.store.audit_log import AUDIT_FILE, AuditLog, AuditOp
from facesearch.store.erasure_ledger import ErasureLedger
from facesearch.store.journal_db import count_requests
from facesearch.store.live_journal import LiveJournal, NewFace
from server.admission import DeadlineExceeded
from server.base_index import BaseIndex
from server.gallery import EnrollRequest, Gallery, ImageOutcome, WriteSettings, check_request_id, enroll_digest
from tests.integration.server_fixtures import build_index, synthetic_embeddings

CONTRACT = "test-model:0000000000000000"
D = 128


def faces(x: np.ndarray, source: str | None = None) -> list[NewFace]:
    x = np.atleast_2d(x)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return [NewFace(v.astype(np.float32), source, None, None, None, None) for v in x]


class Setup:
    def __init__(self, root: Path, settings: WriteSettings | None = None) -> None:
        self.root = root
        self.settings = settings
        self.open()

    def open(self) -> Gallery:
        self.journal = LiveJournal.open(self.root / "live", contract_id=CONTRACT, d=D)
        self.ledger = ErasureLedger.open(self.root)
        self.audit = AuditLog.open(self.root, self.ledger.digester)
        self.gallery = Gallery(self.journal, D, ledger=self.ledger, audit=self.audit, settings=self.settings)
        self.gallery.install(BaseIndex.load(self.root, contract_id=CONTRACT))
        return self.gallery

    def close(self) -> None:
        self.gallery.close()
        self.journal.close()
        self.ledger.close()


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, np.ndarray, list[str]]:
    emb, ids = synthetic_embeddings(600, seed=5)
    build_index(tmp_path / "index", emb, ids, CONTRACT, work=tmp_path / "work")
    return tmp_path / "index", emb, ids


@pytest.fixture
def setup(published: tuple[Path, np.ndarray, list[str]]) -> Setup:
    s = Setup(published[0])
    yield s
    s.close()


class Late:
    """A caller's deadline that has passed by the time the write would commit."""

    def __init__(self) -> None:
        self.checked: list[str] = []

    def check(self, stage: str) -> None:
        self.checked.append(stage)
        raise DeadlineExceeded(f"deadline exceeded before {stage}")


def request(rid: str, identity: str, x: np.ndarray, n: int) -> EnrollRequest:
    digest = enroll_digest(identity, None, {}, [(x.tobytes(), "")], {"append": False})
    return EnrollRequest(rid, digest, tuple(ImageOutcome(i, True) for i in range(n)))


def test_a_retry_with_the_same_request_id_returns_the_first_result_and_writes_nothing(setup: Setup) -> None:
    g = setup.gallery
    x = np.random.default_rng(1).standard_normal((2, D)).astype(np.float32)
    req = request("3f1c8f7e-retry", "retry-person", x, 2)
    first = g.enroll("retry-person", "R", {}, faces(x), request=req, principal="alice")
    assert first.created and len(first.face_ids) == 2 and not first.replayed
    assert [i.face_id for i in first.images] == first.face_ids
    high = setup.journal.high_water()
    again = g.enroll("retry-person", "R", {}, faces(x), request=req, principal="alice")
    assert again.replayed and again.face_ids == first.face_ids and again.created and again.face_count == 2
    assert setup.journal.high_water() == high  # no second write
    assert g.state.identity("retry-person").face_count == 2
    # the same id with other content is refused, nothing written
    other = EnrollRequest(req.request_id, "0" * 64, req.images)
    with pytest.raises(InvalidInputError) as reused:
        g.enroll("retry-person", "R", {}, faces(x[:1]), request=other, append=True)
    assert reused.value.reason == "REQUEST_ID_REUSED"
    assert setup.journal.high_water() == high
    # recorded durably with the enrollment: a restarted gallery still knows it
    setup.close()
    g = setup.open()
    replay = g.replay(req)
    assert replay is not None and replay.face_ids == first.face_ids
    assert g.enroll("retry-person", "R", {}, faces(x), request=req).replayed
    assert g.request_count() == 1
    assert len(g.state.faces("retry-person")) == 2


def test_request_ids_are_bounded_and_validated(published: tuple[Path, np.ndarray, list[str]]) -> None:
    s = Setup(published[0], WriteSettings(request_ttl_s=3600, request_max=5))
    try:
        rng = np.random.default_rng(2)
        first = None
        for i in range(70):  # expiry runs every 64 enrollments
            x = rng.standard_normal((1, D)).astype(np.float32)
            req = request(f"bounded-{i}", f"bounded-{i}", x, 1)
            out = s.gallery.enroll(f"bounded-{i}", None, {}, faces(x), request=req)
            first = first or req
        assert s.gallery.request_count() <= 5 + 6  # at most request_max after an expiry, plus those since
        assert s.gallery.replay(first) is None  # the oldest was forgotten
        assert out.face_ids
    finally:
        s.close()
    for bad in ("has space", "x" * 129, "ünïcode", "tab\there"):
        with pytest.raises(InvalidInputError) as err:
            check_request_id(bad)
        assert err.value.reason == "BAD_REQUEST_ID"
    assert check_request_id("") is None
    assert check_request_id("a" * 128) == "a" * 128


def test_no_write_after_the_callers_deadline(setup: Setup) -> None:
    g = setup.gallery
    x = np.random.default_rng(3).standard_normal((1, D)).astype(np.float32)
    vectors = setup.journal.vectors_path
    size, high = vectors.stat().st_size, setup.journal.high_water()
    late = Late()
    with pytest.raises(DeadlineExceeded):
        g.enroll("late-person", None, {}, faces(x), request=request("late-1", "late-person", x, 1), deadline=late)
    assert late.checked  # checked inside the write, right before the commit
    assert setup.journal.high_water() == high and vectors.stat().st_size == size  # the appended record cut back
    assert g.state.identity("late-person") is None
    assert g.replay(request("late-1", "late-person", x, 1)) is None
    assert [e.outcome for e in setup.audit.entries(identity_id="late-person")] == []  # no audit row either
    with setup.journal._reading() as conn:
        assert count_requests(conn) == 0


def test_append_is_explicit_unless_the_migration_switch_is_on(published: tuple[Path, np.ndarray, list[str]]) -> None:
    root, emb, ids = published
    s = Setup(root)
    try:
        with pytest.raises(AlreadyExistsError) as err:
            s.gallery.enroll(ids[0], None, {}, faces(emb[0]))
        assert err.value.reason == "IDENTITY_EXISTS" and "set append" in err.value.message
        with pytest.raises(AlreadyExistsError):  # create_only wins over append
            s.gallery.enroll(ids[0], None, {}, faces(emb[0]), create_only=True, append=True)
        before = s.gallery.state.identity(ids[0]).face_count
        assert s.gallery.enroll(ids[0], None, {}, faces(emb[0]), append=True).face_count == before + 1
    finally:
        s.close()
    s = Setup(root, WriteSettings(implicit_append=True))
    try:
        before = s.gallery.state.identity(ids[0]).face_count
        assert s.gallery.enroll(ids[0], None, {}, faces(emb[1])).face_count == before + 1
    finally:
        s.close()


def test_audit_log_records_principals_survives_pruning_and_pseudonymises_erasures(setup: Setup) -> None:
    g = setup.gallery
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, D)).astype(np.float32)
    out = g.enroll(
        "Audited_Person", None, {}, faces(x), request=request("audit-1", "Audited_Person", x, 3), principal="alice"
    )
    g.enroll("Kept_Person", None, {}, faces(x[:1]), principal="bob")
    g.delete_faces(out.face_ids[:1], principal="carol")
    rows = setup.audit.entries(identity_id="Audited_Person")
    assert [(r.operation, r.principal, r.faces, r.outcome) for r in rows] == [
        (AuditOp.ENROLL, "alice", 3, "ok"),
        (AuditOp.DELETE_FACES, "carol", 1, "ok"),
    ]
    assert rows[0].request_id == "audit-1" and rows[0].identity_id == "Audited_Person"
    # the journal's pruning (what compaction triggers) leaves the audit log alone
    setup.journal.prune(setup.journal.high_water())
    assert len(setup.audit.entries(identity_id="Audited_Person")) == 2
    # erasure: the rows keep only the digest, and no byte of the id is left in the log's files
    assert any(b"Audited_Person" in p.read_bytes() for p in setup.root.glob(AUDIT_FILE + "*"))  # before: there
    g.delete_identity("Audited_Person", principal="dave")
    rows = setup.audit.entries(identity_id="Audited_Person")  # still found by whoever knows the id
    assert [r.operation for r in rows] == [AuditOp.ENROLL, AuditOp.DELETE_FACES, AuditOp.DELETE_IDENTITY]
    assert {r.identity_id for r in rows} == {None}
    assert {r.subject for r in rows} == {setup.ledger.digester.subject("Audited_Person")}
    assert rows[-1].principal == "dave"
    held = [p.name for p in setup.root.glob(AUDIT_FILE + "*") if b"Audited_Person" in p.read_bytes()]
    assert held == []
    assert any(b"Kept_Person" in p.read_bytes() for p in setup.root.glob(AUDIT_FILE + "*"))
    # bounded: rows past the retention go
    total = setup.audit.count()
    assert setup.audit.prune(older_than_days=1.0, now=time.time() + 2 * 86400) == total
    assert setup.audit.count() == 0


def test_list_pages_are_consistent_under_concurrent_enroll_and_delete(setup: Setup) -> None:
    g = setup.gallery
    rng = np.random.default_rng(6)
    stable = set()
    for i in range(0, 300, 3):  # live identities that exist throughout the listing
        who = f"live-{i:04d}"
        g.enroll(who, None, {}, faces(rng.standard_normal((1, D)).astype(np.float32)))
        stable.add(who)
    published = {v.identity_id for v in _all_pages(g, 1000)}
    stable |= published - stable
    churn = [f"live-{i:04d}" for i in range(1, 300, 3)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                for who in churn:
                    g.enroll(who, None, {}, faces(rng.standard_normal((1, D)).astype(np.float32)))
                for who in churn:
                    g.delete_identity(who)
                    g.ledger.unerase(who, via="test")  # type: ignore[union-attr]
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            seen = [v.identity_id for v in _all_pages(g, 37)]
            assert seen == sorted(seen) and len(seen) == len(set(seen)), "a page repeated or reordered an identity"
            assert stable <= set(seen), f"missing: {sorted(stable - set(seen))[:5]}"
            assert set(seen) <= stable | set(churn)
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors


def _all_pages(g: Gallery, size: int) -> list:
    state = g.state
    assert state is not None
    out, after = [], ""
    while True:
        page, more = state.list_page(after, size)
        assert len(page) <= size
        out += page
        if not more:
            return out
        after = page[-1].identity_id
