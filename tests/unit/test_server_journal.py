"""The live journal: durable changes, consistent snapshots, pruning, crash leftovers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import ContractMismatchError
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
    assert path.stat().st_size % (8 + 4 * D) == 0
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
