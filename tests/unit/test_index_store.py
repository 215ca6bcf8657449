"""The SQLite identity store: faces with vector ids, identities, chips, physical deletion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import ContractMismatchError, NotFoundError, PreconditionError
from facesearch.store.identity_store import FaceRows, IdentityStore


def _unit(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _store(tmp_path: Path) -> tuple[IdentityStore, np.ndarray]:
    store = IdentityStore.create(tmp_path / "s.sqlite", contract_id="m:1", d=8)
    rng = np.random.default_rng(0)
    x = _unit(rng, 6)
    vids = store.allocate_vector_ids(6)
    chips = [np.full((4, 4, 3), i * 40, np.uint8) for i in range(6)]
    keys = store.add_faces(
        FaceRows(
            vector_ids=vids,
            identity_ids=["ann", "ann", "bob", "bob", "bob", "cy"],
            embeddings=x,
            names=["Ann A", None, "Bob B", None, None, None],
            sources=[f"/p/{i}.jpg" for i in range(6)],
            boxes=np.arange(24, dtype=np.float32).reshape(6, 4),
            det_scores=np.ones(6, np.float32),
            face_sizes=np.full(6, 80.0, np.float32),
            blurs=np.full(6, 120.0, np.float32),
            metadata=[{"camera": i} for i in range(6)],
            chips=chips,
        )
    )
    store.commit()
    assert keys[0] == keys[1] != keys[2]
    return store, x


def test_round_trip(tmp_path: Path) -> None:
    store, x = _store(tmp_path)
    assert store.count_faces() == 6 and store.count_identities() == 3 and store.count_chips() == 6
    vids, emb, _ = next(store.iter_embeddings(100))
    assert vids.tolist() == list(range(6)) and np.array_equal(emb, x)
    assert np.array_equal(store.embeddings_by_ids(np.array([4, 0])), x[[4, 0]])
    face = store.faces([2])[0]
    assert face is not None and face.identity_id == "bob" and face.name == "Bob B"
    assert face.source == "/p/2.jpg" and face.box == (8.0, 9.0, 10.0, 11.0) and face.metadata == {"camera": 2}
    assert store.faces([99]) == [None]
    assert store.identity("bob").faces == 3
    chip = store.chip(3)
    assert chip is not None and chip.shape == (4, 4, 3) and int(chip[0, 0, 0]) == 120
    assert store.allocate_vector_ids(2).tolist() == [6, 7]  # ids are never reused


def test_remove_identity_deletes_rows_and_bytes(tmp_path: Path) -> None:
    store, x = _store(tmp_path)
    removed = store.remove_identities(["bob", "nobody"])
    assert removed.tolist() == [2, 3, 4]
    store.finalize()
    assert store.count_faces() == 3 and store.count_chips() == 3
    with pytest.raises(NotFoundError):
        store.identity("bob")
    store.close()
    raw = (tmp_path / "s.sqlite").read_bytes()
    for i in (2, 3, 4):  # VACUUM + secure_delete: the embedding bytes are physically gone
        assert x[i].tobytes() not in raw
    assert x[0].tobytes() in raw


def test_contract_and_readonly(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    store.close()
    with pytest.raises(PreconditionError):
        IdentityStore.create(tmp_path / "s.sqlite", contract_id="m:1", d=8)
    ro = IdentityStore.open(tmp_path / "s.sqlite")
    ro.check_contract("m:1")
    with pytest.raises(ContractMismatchError):
        ro.check_contract("other:2")
    with pytest.raises(Exception, match="readonly"):
        ro.remove_identities(["ann"])
    with pytest.raises(NotFoundError):
        IdentityStore.open(tmp_path / "missing.sqlite")


def test_remove_single_faces(tmp_path: Path) -> None:
    store, x = _store(tmp_path)
    assert store.remove_faces([1, 4, 99]) == 2
    store.finalize()
    assert store.count_faces() == 4 and store.count_chips() == 4
    assert store.identity("ann").faces == 1
    store.close()
    assert x[4].tobytes() not in (tmp_path / "s.sqlite").read_bytes()
