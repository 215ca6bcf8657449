"""The erasure ledger (facesearch.store.erasure_ledger): records by digest only, folds into what is
erased now, unerase, other processes' appends; what an identity store holds of it (found, purged,
hidden); the journal retention floor (facesearch.store.journal_retention)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import NotFoundError
from facesearch.store.erasure_ledger import (
    LEDGER_FILE,
    ErasedFace,
    ErasureKind,
    ErasureLedger,
    erased_in_store,
    purge_store,
    read_erasures,
)
from facesearch.store.identity_store import FaceRows, IdentityStore
from facesearch.store.index_artifact import MANIFEST, STORE_FILE
from facesearch.store.journal_retention import Absorbed, retained_from


def _store(path: Path) -> IdentityStore:
    store = IdentityStore.create(path, contract_id="test:1", d=4)
    ids = ["alice", "alice", "bob", "bob", "carol"]
    store.add_faces(
        FaceRows(
            vector_ids=np.arange(5, dtype=np.int64),
            identity_ids=ids,
            embeddings=np.eye(5, 4, dtype=np.float32) + 0.1,
            names=[i.title() for i in ids],
            sources=[f"/photos/{i}/{n}.jpg" for n, i in enumerate(ids)],
        )
    )
    store.commit()
    return store


def test_records_name_subjects_by_digest_only(tmp_path: Path) -> None:
    with ErasureLedger.open(tmp_path) as ledger:
        ledger.record(
            ErasureKind.IDENTITY, "alice", [ErasedFace(0, "/photos/alice/0.jpg"), ErasedFace(1, None)], via="test"
        )
        ledger.record(ErasureKind.FACES, "bob", [ErasedFace(2, "/elsewhere/2.jpg")], via="test", principal="op")
        now = ledger.current()
    assert now.identity_erased("alice") and not now.identity_erased("bob")
    assert now.face_erased("bob", "/moved/tree/2.jpg")  # the file name decides, not the folder
    assert not now.face_erased("bob", "/photos/bob/3.jpg")
    assert now.erased_vector_ids().tolist() == [0, 1, 2]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in (b"alice", b"bob", b"photos", b"2.jpg"):
        assert secret not in raw


def test_unerase_lifts_the_identity_but_not_its_faces(tmp_path: Path) -> None:
    with ErasureLedger.open(tmp_path) as ledger:
        ledger.record(ErasureKind.IDENTITY, "alice", [ErasedFace(0, "a/0.jpg")], via="test")
        with pytest.raises(NotFoundError):
            ledger.unerase("bob", via="test")
        ledger.unerase("alice", via="test")
        now = ledger.current()
        assert not now.identity_erased("alice")
        assert now.face_erased("alice", "b/0.jpg") and 0 in now.vector_ids
        assert [r.kind for r in ledger.records()] == [ErasureKind.IDENTITY, ErasureKind.UNERASE]


def test_a_reader_sees_another_writers_records(tmp_path: Path) -> None:
    assert not read_erasures(tmp_path) and not (tmp_path / LEDGER_FILE).exists()
    with ErasureLedger.open(tmp_path) as server, ErasureLedger.open(tmp_path) as tool:
        assert not server.is_erased("carol")
        tool.record(ErasureKind.IDENTITY, "carol", [], via="facesearch-index remove")
        assert server.is_erased("carol")  # re-read on each check
        since = server.current().since(1)
        assert not since  # nothing after position 1
    assert read_erasures(tmp_path).identity_erased("carol")


def test_a_store_found_purged_and_hidden(tmp_path: Path) -> None:
    with ErasureLedger.open(tmp_path) as ledger:
        ledger.record(ErasureKind.IDENTITY, "alice", [], via="test")
        ledger.record(ErasureKind.FACES, "bob", [ErasedFace(2, "/photos/bob/2.jpg")], via="test")
        erased = ledger.current()
    store = _store(tmp_path / "a.sqlite")
    hits = erased_in_store(store, erased)
    assert set(hits.identities) == {"alice"} and hits.face_ids.tolist() == [0, 1, 2]

    store.hide(hits.keys, hits.face_ids.tolist())  # the server's view: every read leaves them out
    assert store.find_identity("alice") is None and store.identity_keys(["alice", "bob"]).keys() == {"bob"}
    assert [s.identity_id for s in store.identities_after("", 10)] == ["bob", "carol"]
    assert [s.identity_id for s in store.identities_after("", 1)] == ["bob"]
    assert store.identity("bob").faces == 1 and store.count_identities() == 2 and store.count_faces() == 2
    bob = store.find_identity("bob")
    assert bob is not None and store.face_counts([bob.key]) == {bob.key: 1}
    assert store.faces([0, 2, 3])[:2] == [None, None]
    vids, _ = store.vector_identity_keys()
    assert vids.tolist() == [3, 4]
    store.close()

    store = _store(tmp_path / "b.sqlite")
    purge_store(store, erased)
    store.finalize()
    store.close()
    with IdentityStore.open(tmp_path / "b.sqlite") as purged:
        assert purged.existing_identities(["alice", "bob", "carol"]) == {"bob", "carol"}
        assert purged.count_faces() == 2 and purged.meta("erasure_seq") == 2
        assert not erased_in_store(purged, erased)
    assert b"alice" not in (tmp_path / "b.sqlite").read_bytes()  # VACUUMed: no free-page residue


def test_retention_keeps_what_the_oldest_kept_version_lacks(tmp_path: Path) -> None:
    def version(name: str, absorbed: Absorbed) -> None:
        vdir = tmp_path / name
        vdir.mkdir()
        (vdir / MANIFEST).write_text(json.dumps({}))
        store = IdentityStore.create(vdir / STORE_FILE, contract_id="test:1", d=4)
        absorbed.write(store)
        store.commit()
        store.close()

    assert retained_from(tmp_path, "j1") == 0
    version("v000001", Absorbed(None, 0))  # a build before any live change
    version("v000002", Absorbed("j1", 7))
    assert retained_from(tmp_path, "j1") == 0
    (tmp_path / "v000001" / MANIFEST).unlink()  # pruned
    version("v000003", Absorbed("j1", 12))
    assert retained_from(tmp_path, "j1") == 7
    assert retained_from(tmp_path, "another") == 0
