"""The seeded face-like generator: deterministic, streamable, with real dlib statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path


@pytest.fixture(scope="module")
def model() -> FaceEmbeddingModel:
    path: Path = default_model_path()
    if not path.is_file():
        pytest.skip(f"face embedding model not found at {path} (committed in tests/data; FACESEARCH_DATA overrides)")
    return FaceEmbeddingModel.load(path)


def test_chunks_are_deterministic_and_match_the_whole(model: FaceEmbeddingModel) -> None:
    g = SyntheticGallery(model, 20_000, faces_per_identity=5, seed=7)
    whole = g.materialize()
    again = SyntheticGallery(model, 20_000, faces_per_identity=5, seed=7).materialize()
    parts = list(g.chunks(3_001))
    assert [p.start for p in parts] == list(range(0, 20_000, 3_001))
    assert np.array_equal(np.concatenate([p.embeddings for p in parts]), whole.embeddings)
    assert np.array_equal(whole.embeddings, again.embeddings)
    assert whole.embeddings.shape == (20_000, 128) and whole.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(whole.embeddings, axis=1), 1.0, atol=1e-5)
    other = SyntheticGallery(model, 20_000, faces_per_identity=5, seed=8).materialize()
    assert not np.allclose(other.embeddings[:10], whole.embeddings[:10])


def test_cosines_look_like_dlib(model: FaceEmbeddingModel) -> None:
    g = SyntheticGallery(model, 30_000, faces_per_identity=5, seed=1).materialize()
    x, y = g.embeddings, g.identities
    first = {}
    same = []
    for i, ident in enumerate(y.tolist()):
        if ident in first:
            same.append(float(x[first[ident]] @ x[i]))
        else:
            first[ident] = i
    heads = x[list(first.values())[:400]]
    diff = (heads[:200] @ heads[200:400].T).ravel()
    assert 0.93 < np.median(same) < 0.97  # same person ~0.95
    assert 0.80 < np.median(diff) < 0.86  # different people ~0.83


def test_mated_queries_are_new_faces_of_enrolled_people(model: FaceEmbeddingModel) -> None:
    g = SyntheticGallery(model, 10_000, faces_per_identity=5, seed=3)
    gal = g.materialize()
    q = g.mated_queries(200, gal.identities, seed=1)
    assert set(q.identities.tolist()) <= set(gal.identities.tolist())
    best = np.argmax(q.embeddings @ gal.embeddings.T, axis=1)
    assert (gal.identities[best] == q.identities).mean() > 0.9
    assert not np.isin(q.embeddings[:, 0], gal.embeddings[:, 0]).all()
    strangers = g.impostor_queries(100, seed=1)
    assert (strangers @ gal.embeddings.T).max(axis=1).mean() < (q.embeddings @ gal.embeddings.T).max(axis=1).mean()
