"""Tuning nprobe against exact ground truth, with held-out queries drawn from the data."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from facesearch.store.index_artifact import IndexSearcher, RefineStore, SearchParams
from indexer.add import ExactAccumulator
from indexer.tune import IdentityLookup, measure, tune


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    faiss.omp_set_num_threads(1)


def _cone(n: int, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors in a narrow cone (identities of 4 faces), like face embeddings."""
    rng = np.random.default_rng(seed)
    centres = 3.0 + rng.standard_normal((n // 4, d))
    labels = np.repeat(np.arange(n // 4), 4)
    x = (centres[labels] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def _setup(factory: str, refine: bool) -> tuple[IndexSearcher, object, IdentityLookup, np.ndarray]:
    x, labels = _cone(4000)
    ids = np.arange(len(x), dtype=np.int64) * 3  # vector ids need not be row numbers
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_L2)
    index.train(x)
    index.add_with_ids(x, ids)
    searcher = IndexSearcher(index, ids, RefineStore(x, None) if refine else None, SearchParams())
    qids = ids[::20]
    acc = ExactAccumulator(qids, x[::20], 11)
    for s in range(0, len(x), 1000):  # chunked, as the build does
        acc.add(x[s : s + 1000], ids[s : s + 1000])
    return searcher, acc.result(), IdentityLookup(ids, labels), x


def test_ground_truth_is_exact_and_contains_the_query() -> None:
    _, gt, _, x = _setup("IVF16,Flat", refine=False)
    exact = np.argsort(-(x[::20] @ x.T), axis=1)[:, :11] * 3
    assert (gt.ids[:, 0] == gt.query_ids).all()  # each query finds itself first
    assert (gt.ids[:, 1:4] == exact[:, 1:4]).mean() > 0.99


def test_tune_meets_targets_with_the_smallest_setting() -> None:
    searcher, gt, lookup, _ = _setup("IVF64,PQ16x4fs", refine=True)
    params, report, sweep = tune(
        searcher,
        gt,
        lookup,
        nlist=64,
        refine=True,
        hnsw_quantizer=False,
        target_r1=0.98,
        target_id=0.995,
        margin=0.005,
        progress=False,
    )  # type: ignore[arg-type]
    assert report.met and report.recall_at_1 >= 0.985 and report.identity_agreement >= 0.995
    assert 0 < params.nprobe < 64 and params.refine_k_factor in (4, 8, 16, 32)
    smaller = measure(searcher, gt, lookup, SearchParams(nprobe=max(1, params.nprobe // 2), refine_k_factor=32))  # type: ignore[arg-type]
    assert not smaller.meets(0.985, 0.995)  # half the probes would not do
    assert len(sweep) >= 3


def test_unreachable_target_stops_at_the_plateau() -> None:
    searcher, gt, lookup, _ = _setup("IVF16,PQ4x4fs", refine=False)  # coarse codes, no re-ranking
    params, report, _ = tune(
        searcher,
        gt,
        lookup,
        nlist=16,
        refine=False,
        hnsw_quantizer=False,
        target_r1=1.0,
        target_id=1.0,
        progress=False,
    )  # type: ignore[arg-type]
    assert not report.met and report.recall_at_1 < 1.0
    assert params.nprobe <= 16
