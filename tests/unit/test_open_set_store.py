"""The open-set statistics built from an identity store in bounded memory (the indexer's path)
equal the in-memory build from the same faces, whether the faces are held or spilled to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.scoring.gallery_stats import (
    OPEN_SET_FILE,
    GalleryOpenSet,
    build_open_set,
    saved_params,
)
from facesearch.store.identity_store import FaceRows, IdentityStore
from facesearch.store.open_set_build import build_open_set_for_store


def _store(path: Path, n_ids: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A store whose faces of each identity are scattered over vector ids (not grouped)."""
    rng = np.random.default_rng(seed)
    d = 16
    centres = rng.standard_normal((n_ids, d))
    owner = rng.integers(0, n_ids, 6 * n_ids)
    owner[:n_ids] = np.arange(n_ids)  # every identity has a face
    rng.shuffle(owner)
    x = centres[owner] + 0.6 * rng.standard_normal((len(owner), d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"id-{i:04d}" for i in range(n_ids)]
    store = IdentityStore.create(path, contract_id="m:1", d=d)
    store.add_faces(
        FaceRows(vector_ids=store.allocate_vector_ids(len(x)), identity_ids=[ids[i] for i in owner], embeddings=x)
    )
    store.commit()
    store.close()
    return ids, owner, x


def _same(a: GalleryOpenSet, b: GalleryOpenSet) -> None:
    ids = sorted(str(i) for i in a.cohort.identity_ids)
    assert ids == sorted(str(i) for i in b.cohort.identity_ids)
    ta, ka = a.templates.get(ids)
    tb, kb = b.templates.get(ids)
    assert ka.all() and kb.all()
    np.testing.assert_allclose(ta, tb, atol=1e-6)
    np.testing.assert_allclose(a.cohort.means(ids), b.cohort.means(ids), atol=1e-6)
    for i in ids[:: max(1, len(ids) // 50)]:
        na, sa = a.cohort.neighbours(i)
        nb, sb = b.cohort.neighbours(i)
        assert list(na) == list(nb)
        np.testing.assert_allclose(sa, sb, atol=1e-6)


@pytest.mark.parametrize(
    ("resident_bytes", "exact_faces", "rule"),
    [(1 << 30, 10_000, "both"), (0, 10_000, "best"), (0, 100, "both"), (1 << 30, 100, "mean")],
)
def test_store_build_equals_the_in_memory_build(
    tmp_path: Path, resident_bytes: int, exact_faces: int, rule: str
) -> None:
    ids, owner, x = _store(tmp_path / "s.sqlite", 120, seed=resident_bytes + exact_faces)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    got = build_open_set_for_store(
        tmp_path / "s.sqlite",
        k=3,
        rule=rule,
        resident_bytes=resident_bytes,
        scratch_dir=scratch,
        exact_faces=exact_faces,
        shortlist=24,
    )
    want = build_open_set(ids, owner, x, k=3, rule=rule, exact_faces=exact_faces, shortlist=24)
    assert (got.k, got.rule, got.depth, len(got)) == (3, rule, want.depth, 120)
    _same(got, want)
    assert not list(scratch.iterdir())  # the spilled faces are gone


def test_saved_statistics_keep_their_store_and_parameters(tmp_path: Path) -> None:
    ids, owner, x = _store(tmp_path / "s.sqlite", 30, seed=1)
    data = build_open_set_for_store(tmp_path / "s.sqlite", k=2, rule="both")
    data.store_sha256 = "ab" * 32
    data.save(tmp_path / OPEN_SET_FILE)
    back = GalleryOpenSet.load(tmp_path / OPEN_SET_FILE)
    assert back.store_sha256 == "ab" * 32 and saved_params(tmp_path / OPEN_SET_FILE) == (2, "both", data.depth)
    _same(back, data)
    unknown = build_open_set(ids, owner, x, k=2)
    unknown.save(tmp_path / "other.npz")
    assert GalleryOpenSet.load(tmp_path / "other.npz").store_sha256 is None
