"""The audit log (facesearch.store.audit_log): rows with principals, filters, erasure to the ledger's
digest (in every row, with no byte of the id left in the files), retention pruning by the log and by
a starting server's gallery, and the enroll-request table's bounds (facesearch.store.journal_db)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from facesearch.store.audit_log import AUDIT_FILE, AuditLog, AuditOp
from facesearch.store.erasure_ledger import ErasureKind, ErasureLedger
from facesearch.store.journal_db import (
    connect,
    count_requests,
    expire_requests,
    find_request,
    put_request,
    request_key,
)
from facesearch.store.live_journal import LiveJournal
from server.gallery import Gallery, WriteSettings


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    ledger = ErasureLedger.open(tmp_path)
    audit = AuditLog.open(tmp_path, ledger.digester)
    yield audit
    audit.close()
    ledger.close()


def _age(path: Path, seq: int, days: float) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE entries SET at = at - ? WHERE seq = ?", (days * 86400, seq))
    conn.commit()
    conn.close()


def test_rows_filters_and_failed_outcome(log: AuditLog) -> None:
    s1 = log.record(AuditOp.ENROLL, "alice", principal="tok:ops", faces=2, request_id="r-1", via="Enroll")
    t = time.time()
    s2 = log.record(AuditOp.ENROLL, "bob", principal="tok:ops", faces=1, via="Enroll")
    log.failed(s2)
    rows = log.entries()
    assert [(r.seq, r.identity_id, r.principal, r.faces, r.request_id, r.outcome) for r in rows] == [
        (s1, "alice", "tok:ops", 2, "r-1", "ok"),
        (s2, "bob", "tok:ops", 1, None, "failed"),
    ]
    assert [r.identity_id for r in log.entries(identity_id="bob")] == ["bob"]
    assert [r.identity_id for r in log.entries(since=t)] == ["bob"]
    assert len(log.entries(limit=1)) == 1 and log.count() == 2


def test_erasure_keeps_only_the_digest_everywhere(log: AuditLog, tmp_path: Path) -> None:
    for _ in range(50):  # enough rows that the id is in several pages, the index and the WAL
        log.record(AuditOp.ENROLL, "Erased_Subject_42", principal="p", faces=1, via="Enroll")
    log.record(AuditOp.ENROLL, "Other_Subject", principal="p", faces=1, via="Enroll")
    files = list(tmp_path.glob(AUDIT_FILE + "*"))
    assert any(b"Erased_Subject_42" in f.read_bytes() for f in files)
    log.record(AuditOp.DELETE_IDENTITY, "Erased_Subject_42", principal="p", faces=50, via="DeleteIdentity", erased=True)
    rows = log.entries(identity_id="Erased_Subject_42")
    assert len(rows) == 51 and {r.identity_id for r in rows} == {None}
    assert {r.subject for r in rows} == {log.digester.subject("Erased_Subject_42")}
    assert not [f.name for f in tmp_path.glob(AUDIT_FILE + "*") if b"Erased_Subject_42" in f.read_bytes()]
    assert log.entries(identity_id="Other_Subject")[0].identity_id == "Other_Subject"
    assert log.pseudonymise("Other_Subject") == 1
    assert log.entries(identity_id="Other_Subject")[0].identity_id is None


def test_an_erasure_interrupted_before_its_audit_row_is_finished_at_start(log: AuditLog, tmp_path: Path) -> None:
    log.record(AuditOp.ENROLL, "Crashed_Erasure", principal="p", faces=1, via="Enroll")
    log.record(AuditOp.ENROLL, "Still_Here", principal="p", faces=1, via="Enroll")
    with ErasureLedger.open(tmp_path) as ledger:  # the ledger has it, the audit log was never told
        ledger.record(ErasureKind.IDENTITY, "Crashed_Erasure", [], via="DeleteIdentity")
        journal = LiveJournal.open(tmp_path / "live", contract_id="m:1", d=8)
        try:
            gallery = Gallery(journal, 8, ledger=ledger, audit=log)
            assert [r.identity_id for r in log.entries()] == [None, "Still_Here"]
            assert not [f.name for f in tmp_path.glob(AUDIT_FILE + "*") if b"Crashed_Erasure" in f.read_bytes()]
            gallery.close()
        finally:
            journal.close()


def test_retention_pruning_by_the_log_and_by_a_starting_gallery(log: AuditLog, tmp_path: Path) -> None:
    old = log.record(AuditOp.ENROLL, "old", principal="p", via="Enroll")
    log.record(AuditOp.ENROLL, "new", principal="p", via="Enroll")
    _age(tmp_path / AUDIT_FILE, old, 40)
    assert log.prune(older_than_days=50) == 0
    assert log.prune(older_than_days=30) == 1
    assert [r.identity_id for r in log.entries()] == ["new"]
    again = log.record(AuditOp.ENROLL, "aged", principal="p", via="Enroll")
    _age(tmp_path / AUDIT_FILE, again, 10)
    journal = LiveJournal.open(tmp_path / "live", contract_id="m:1", d=8)
    try:  # a server's gallery prunes at start, by its retention setting
        gallery = Gallery(journal, 8, audit=log, settings=WriteSettings(audit_retention_days=5))
        assert [r.identity_id for r in log.entries()] == ["new"]
        gallery.close()
    finally:
        journal.close()


def test_request_table_bounds(tmp_path: Path) -> None:
    journal = LiveJournal.open(tmp_path / "live", contract_id="m:1", d=8)
    journal.close()
    conn = connect(tmp_path / "live" / "journal.sqlite")
    now = time.time()
    for i in range(10):
        put_request(conn, request_key(f"r-{i}"), "d", "{}", now - 100 + i)
    assert request_key("r-1") != "r-1" and len(request_key("r-1")) == 64  # the id itself is not stored
    assert find_request(conn, request_key("r-3")) is not None
    assert find_request(conn, request_key("r-3"), newer_than=now) is None  # past the window
    assert expire_requests(conn, before=now - 95, keep=100) == 5  # r-0..r-4 too old
    assert expire_requests(conn, before=0, keep=2) == 3  # the 2 newest kept
    assert count_requests(conn) == 2 and find_request(conn, request_key("r-9")) is not None
    conn.close()
