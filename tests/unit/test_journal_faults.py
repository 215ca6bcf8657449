"""The live journal under faults: a full or failing disk at each write site (failpoints), and damaged
files (seeded byte flips and truncations).

* A failed write raises UNAVAILABLE with STORAGE_FULL / STORAGE_ERROR, leaves the files as they were
  (the vectors file cut back: no torn record), the next write succeeds, and a reopen holds exactly the
  acknowledged changes.
* Damage: a torn or unacknowledged tail is cut at the writer's open; a damaged referenced record (or
  header) refuses the open with the face named and the repair command; ``repair`` quarantines exactly
  the damaged faces; no damaged embedding is ever returned.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import IndexFormatError, Reason, UnavailableError
from facesearch.store.journal_check import check, repair
from facesearch.store.live_journal import LiveIdentity, LiveJournal, NewFace
from facesearch.util import failpoints

D = 8


def face(seed: int) -> NewFace:
    v = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return NewFace(v / np.linalg.norm(v), f"p{seed}.jpg", None, None, None, None)


def ident(identity_id: str, deleted: bool = False) -> LiveIdentity:
    return LiveIdentity(identity_id, 0, deleted, None, {}, 1.0, 1.0)


def _files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.glob("vectors-*")}


ENROLL_SITES = [
    ("journal.append:enospc*1", Reason.STORAGE_FULL),
    ("journal.append:torn*1", Reason.STORAGE_FULL),  # half the record written, then ENOSPC
    ("journal.append:eio*1", Reason.STORAGE_ERROR),
    ("journal.fsync:eio*1", Reason.STORAGE_ERROR),
    ("journal.fsync:edquot*1", Reason.STORAGE_FULL),
    ("journal.commit:enospc*1", Reason.STORAGE_FULL),
    ("journal.commit:eio*1", Reason.STORAGE_ERROR),
]


@pytest.mark.parametrize(("spec", "reason"), ENROLL_SITES)
def test_a_failed_enroll_writes_nothing_and_the_next_one_succeeds(tmp_path: Path, spec: str, reason: Reason) -> None:
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    _, first = j.enroll(ident("alice"), [face(1)])
    before = _files(tmp_path)
    with failpoints.active(spec), pytest.raises(UnavailableError) as err:
        j.enroll(ident("bob"), [face(2), face(3)])
    assert err.value.reason == reason and "enroll 'bob'" in err.value.message
    assert _files(tmp_path) == before  # cut back: no torn or orphan record
    _, again = j.enroll(ident("bob"), [face(2), face(3)])  # space is back: no restart needed
    assert again.tolist() == [int(first[0]) + 1, int(first[0]) + 2]  # the failed call used no ids
    j.close()
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    snap = j.snapshot()
    assert [f.identity_id for f in snap.faces] == ["alice", "bob", "bob"]
    np.testing.assert_array_equal(snap.embeddings, np.stack([face(i).embedding for i in (1, 2, 3)]))
    j.close()


@pytest.mark.parametrize("spec", ["journal.commit:enospc*1", "journal.commit:eio*1"])
def test_failed_deletions_change_nothing(tmp_path: Path, spec: str) -> None:
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    _, va = j.enroll(ident("alice"), [face(1), face(2)])
    high = j.high_water()
    with failpoints.active(spec), pytest.raises(UnavailableError):
        j.delete_faces([int(va[0])], ["alice"])
    with failpoints.active(spec), pytest.raises(UnavailableError):
        j.delete_identity(ident("alice", deleted=True), va.tolist())
    assert j.high_water() == high and len(j.snapshot().faces) == 2
    j.delete_faces([int(va[0])], ["alice"])
    j.close()
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    assert [f.vector_id for f in j.snapshot().faces] == [int(va[1])]
    j.close()


@pytest.mark.parametrize("spec", ["journal.rotate:enospc*1", "journal.commit:eio*1"])
def test_a_failed_prune_keeps_the_journal_as_it_was(tmp_path: Path, spec: str) -> None:
    j = LiveJournal.open(tmp_path, contract_id="m:1", d=D)
    s1, _ = j.enroll(ident("alice"), [face(1)])
    j.enroll(ident("bob"), [face(2)])
    before = _files(tmp_path)
    with failpoints.active(spec), pytest.raises(UnavailableError):
        j.prune(s1)
    assert _files(tmp_path) == before and len(j.snapshot().faces) == 2
    j.enroll(ident("carol"), [face(3)])  # the writer still appends to the file the journal names
    j.prune(s1)
    assert [f.identity_id for f in j.snapshot().faces] == ["bob", "carol"]
    j.close()


def test_a_sqlite_full_disk_is_storage_full() -> None:
    import sqlite3

    from facesearch.store.storage_errors import storage_failure

    full = storage_failure(sqlite3.OperationalError("database or disk is full"), "x")
    io = storage_failure(sqlite3.OperationalError("disk I/O error"), "x")
    assert full is not None and full.reason == Reason.STORAGE_FULL
    assert io is not None and io.reason == Reason.STORAGE_ERROR
    assert storage_failure(sqlite3.OperationalError("no such table: x"), "x") is None
    assert storage_failure(PermissionError(13, "denied"), "x") is None


# -- damage --------------------------------------------------------------------------------------
FACES = 12


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, np.ndarray]]:
    """A closed journal: 12 faces enrolled (4 identities), 2 deleted; ``{vector id: embedding}`` alive."""
    directory = tmp_path_factory.mktemp("journal")
    j = LiveJournal.open(directory, contract_id="m:1", d=D)
    alive: dict[int, np.ndarray] = {}
    for i in range(4):
        _, vids = j.enroll(ident(f"p{i}"), [face(10 * i + k) for k in range(3)])
        alive.update({int(v): face(10 * i + k).embedding for k, v in enumerate(vids)})
    gone = sorted(alive)[4:6]  # in the middle of the file: unreferenced records between referenced ones
    j.delete_faces(gone, ["p1", "p1"])
    for v in gone:
        del alive[v]
    j.close()
    return directory, alive


def _mutate(path: Path, rng: np.random.Generator) -> str:
    data = bytearray(path.read_bytes())
    kind = rng.choice(["flip", "flip", "truncate", "tail"])
    if kind == "flip":
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(data)))
            data[at] ^= 1 << int(rng.integers(0, 8))
    elif kind == "truncate":
        del data[int(rng.integers(0, len(data))) :]
    else:  # an unacknowledged, possibly torn, record after the last one
        data += rng.integers(0, 256, int(rng.integers(1, 3 * (12 + 4 * D)))).astype(np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return str(kind)


@pytest.mark.parametrize("case", range(50))
def test_damage_is_cut_reported_or_quarantined_never_served(
    pristine: tuple[Path, dict[int, np.ndarray]], tmp_path: Path, case: int
) -> None:
    source, alive = pristine
    directory = tmp_path / "journal"
    shutil.copytree(source, directory)
    vectors = next(directory.glob("vectors-*.vec"))
    kind = _mutate(vectors, np.random.default_rng(1000 + case))
    try:
        j = LiveJournal.open(directory, contract_id="m:1", d=D)
    except IndexFormatError as err:  # damage: named, with the command that repairs it
        assert err.reason == Reason.JOURNAL_DAMAGED, err
        assert f"facesearch-index journal repair {directory}" in err.message
        reader = LiveJournal.open_reader(directory)
        found = reader.inspect()
        reader.close()
        assert kind != "tail" and not found.ok
        for d in found.damaged:
            assert d.describe() in err.message or len(found.damaged) > 5
        with pytest.raises(IndexFormatError):  # a compaction's snapshot refuses it too
            _snapshot_of_reader(directory, bool(found.damaged))
        report = repair(directory)
        assert sorted(report.newly_quarantined) == sorted(d.vector_id for d in found.damaged)
        assert report.ok and {q.vector_id for q in report.quarantined} == set(report.newly_quarantined)
        j = LiveJournal.open(directory, contract_id="m:1", d=D)
        quarantined = set(report.newly_quarantined)
        assert quarantined <= {t.vector_id for t in j.snapshot().tombstones}
    else:  # nothing referenced was hit: a torn tail is cut, everything served as enrolled
        assert (directory / vectors.name).stat().st_size == j.inspect().end
        quarantined = set()
    snap = j.snapshot()
    assert {f.vector_id for f in snap.faces} == set(alive) - quarantined
    for f, emb in zip(snap.faces, snap.embeddings, strict=True):
        np.testing.assert_array_equal(emb, alive[f.vector_id])  # never a damaged embedding
    j.enroll(ident("after"), [face(99)])  # and it takes writes again
    j.close()
    assert check(directory).ok


def _snapshot_of_reader(directory: Path, records_damaged: bool) -> None:
    reader = LiveJournal.open_reader(directory)
    try:
        reader.snapshot()
        if not records_damaged:  # only the header is damaged: records are checked one by one
            raise IndexFormatError("header only")
    finally:
        reader.close()
