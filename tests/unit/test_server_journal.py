"""The live journal: durable changes, consistent snapshots, pruning, crash leftovers, the writer's lock,
and journals written before checksums (read by both, migrated by the writer)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import ContractMismatchError, PreconditionError, Reason
from facesearch.store.journal_vectors import FORMAT_CHECKSUMMED, HEADER_BYTES, RecordLayout, read_records
from facesearch.store.live_journal import LIVE_VECTOR_ID_BASE, LiveIdentity, LiveJournal, NewFace

D = 8


def face(seed: int) -> NewFace:
    v = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return NewFace(v / np.linalg.norm(v), f"photo-{seed}.jpg", (1.0, 2.0, 30.0, 40.0), 1.1, 28.0, 99.0)


def ident(identity_id: str, *, deleted: bool = False, name: str | None = None) -> LiveIdentity:
    return LiveIdentity(identity_id, 0, deleted, name, {"team": "x"} if not deleted else {}, 1.0, 2.0)


def test_enroll_delete_snapshot_and_reopen(tmp_path: Path) -> None:
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    s1, v1 = j.enroll(ident("alice", name="Alice"), [face(1), face(2)])
    s2, v2 = j.enroll(ident("bob"), [face(3)])
    assert v1.tolist() == [LIVE_VECTOR_ID_BASE, LIVE_VECTOR_ID_BASE + 1] and s2 > s1
    s3 = j.delete_faces([int(v1[0])], ["alice"])
    s4 = j.delete_identity(ident("bob", deleted=True), [int(v2[0]), 17])
    j.close()

    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    snap = j.snapshot()
    assert snap.high_water == s4 > s3
    assert [f.vector_id for f in snap.faces] == [int(v1[1])]  # alice's second face only
    np.testing.assert_array_equal(snap.embeddings[0], face(2).embedding)
    assert snap.faces[0].box == (1.0, 2.0, 30.0, 40.0) and snap.faces[0].source == "photo-2.jpg"
    assert {t.vector_id for t in snap.tombstones} == {int(v1[0]), int(v2[0]), 17}
    rows = {i.identity_id: i for i in snap.identities}
    assert rows["bob"].deleted and not rows["alice"].deleted and rows["alice"].name == "Alice"
    later = j.snapshot(after_seq=s3)
    assert later.faces == [] and [i.identity_id for i in later.identities] == ["bob"]
    _, v3 = j.enroll(ident("carol"), [face(4)])
    assert int(v3[0]) == int(v1[1]) + 2  # ids are never reused
    j.close()


def test_prune_forgets_exactly_the_absorbed_changes(tmp_path: Path) -> None:
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    s1, _ = j.enroll(ident("alice"), [face(1), face(2)])
    s2, v2 = j.enroll(ident("bob"), [face(3)])
    j.prune(s1)
    snap = j.snapshot()
    assert [f.vector_id for f in snap.faces] == v2.tolist()
    np.testing.assert_array_equal(snap.embeddings[0], face(3).embedding)
    assert [i.identity_id for i in snap.identities] == ["bob"]
    assert snap.high_water == s2
    s3, _ = j.enroll(ident("dave"), [face(5)])
    assert s3 > s2  # sequence numbers keep growing after a prune
    j.prune(s3)
    assert j.snapshot().faces == [] and len(list(tmp_path.glob("vectors-*.f32"))) <= 2
    j.close()


def test_torn_vector_tail_is_cut_and_ignored(tmp_path: Path) -> None:
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    j.enroll(ident("alice"), [face(1)])
    path = j.vectors_path
    j.close()
    with path.open("ab") as fh:  # a crash mid-append: half a record, never committed
        fh.write(b"\x01" * 13)
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    assert path.stat().st_size == HEADER_BYTES + RecordLayout(FORMAT_CHECKSUMMED, D).size  # the torn part is cut
    j.enroll(ident("bob"), [face(2)])
    snap = j.snapshot()
    assert [f.identity_id for f in snap.faces] == ["alice", "bob"]
    np.testing.assert_array_equal(snap.embeddings[1], face(2).embedding)
    j.close()


def test_other_model_is_refused(tmp_path: Path) -> None:
    LiveJournal.open(tmp_path, contract_id="m:1", d=D).close()
    with pytest.raises(ContractMismatchError):
        LiveJournal.open(tmp_path, contract_id="m:2", d=D)


def test_reader_sees_writer_changes(tmp_path: Path) -> None:
    w = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    r = LiveJournal.open_reader(tmp_path)
    assert r.contract_id == "m:1" and r.journal_id == w.journal_id
    w.enroll(ident("alice"), [face(1)])
    assert len(r.snapshot().faces) == 1
    r.close()
    w.close()


def _as_legacy(directory: Path) -> None:
    """Rewrite a closed journal as the code before checksums wrote it: schema 1, no quarantine table,
    ``vectors-NNNNNN.f32`` holding bare ``int64 id + d float32`` records at the offsets its rows name."""
    conn = sqlite3.connect(directory / "journal.sqlite", isolation_level=None)
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    vec = directory / meta["vectors_file"]
    layout = RecordLayout(FORMAT_CHECKSUMMED, D)
    rows = conn.execute("SELECT vector_id, offset FROM faces ORDER BY vector_id").fetchall()
    emb, damage = read_records(vec, layout, rows)
    assert not damage
    legacy = directory / "vectors-000001.f32"
    records = b"".join(
        np.int64(v).astype("<i8").tobytes() + e.astype("<f4").tobytes() for (v, _), e in zip(rows, emb, strict=True)
    )
    legacy.write_bytes(records)
    conn.execute("BEGIN")
    for i, (v, _) in enumerate(rows):
        conn.execute("UPDATE faces SET offset = ? WHERE vector_id = ?", (i * (8 + 4 * D), v))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'vectors_file'", (json.dumps(legacy.name),))
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.execute("DROP TABLE quarantine")
    conn.execute("COMMIT")
    conn.close()
    for other in directory.glob("vectors-*.vec"):
        other.unlink()


def test_a_journal_written_before_checksums_is_read_and_migrated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    _, v1 = j.enroll(ident("alice"), [face(1), face(2)])
    _, v2 = j.enroll(ident("bob"), [face(3)])
    j.delete_faces([int(v1[0])], ["alice"])
    j.close()
    _as_legacy(tmp_path)
    reader = LiveJournal.open_reader(tmp_path)  # a compaction reads the old format as it is
    assert reader.schema == 1 and [f.vector_id for f in reader.snapshot().faces] == [int(v1[1]), int(v2[0])]
    reader.close()
    with caplog.at_level(logging.INFO, logger="facesearch.store.live_journal"):
        j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    assert "migrated to checksummed records (schema 1 -> 2" in caplog.text
    assert j.schema == 2 and j.vectors_path.suffix == ".vec"
    snap = j.snapshot()
    np.testing.assert_array_equal(snap.embeddings, np.stack([face(2).embedding, face(3).embedding]))
    _, v3 = j.enroll(ident("carol"), [face(4)])  # appended as a checksummed record
    j.close()
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    assert [f.vector_id for f in j.snapshot().faces] == [int(v1[1]), int(v2[0]), int(v3[0])]
    j.close()
    conn = sqlite3.connect(tmp_path / "journal.sqlite")  # the code before checksums refuses schema 2 (no misreads)
    assert json.loads(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]) == 2
    conn.close()


def test_a_second_writer_is_refused_naming_the_holder_and_readers_still_read(tmp_path: Path) -> None:
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    j.enroll(ident("alice"), [face(1)])
    with pytest.raises(PreconditionError, match=f"pid {os.getpid()}") as err:
        LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    assert err.value.reason == Reason.LOCK_HELD
    holder = subprocess.run(  # another process: refused too, and told this process's pid
        [sys.executable, "-c", _SECOND_WRITER, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert holder.returncode == 3 and f"pid {os.getpid()}" in holder.stdout, holder.stdout + holder.stderr
    reader = LiveJournal.open_reader(tmp_path)  # compaction's way in: no lock
    assert len(reader.snapshot().faces) == 1
    reader.close()
    j.close()
    LiveJournal.open(tmp_path, contract_id="m:1", d=D).close()  # released on close


_SECOND_WRITER = """
import sys
from facesearch.errors import PreconditionError
from facesearch.store.live_journal import LiveJournal
try:
    LiveJournal.open(sys.argv[1], contract_id="m:1", d=8)
except PreconditionError as err:
    print(err)
    sys.exit(3)
"""
