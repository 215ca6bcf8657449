"""The bulk cohort build for large galleries: block re-scoring equals the exact build, and the HNSW
template shortlist (used above ANN_IDENTITIES) finds the same neighbours as a full template scan."""

from __future__ import annotations

import numpy as np
import pytest

from facesearch.scoring.gallery_stats import Grouped, exact_neighbours, shortlist_neighbours
from facesearch.scoring.templates import mean_templates


class _Bar:
    def update(self, n: int) -> None:
        pass


def _gallery(n_ids: int, seed: int, heavy: int = 0) -> Grouped:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 9, n_ids)
    counts[:heavy] = 70  # identities with many faces take the pair-by-pair path
    centres = rng.normal(size=(n_ids, 32))
    owner = np.repeat(np.arange(n_ids), counts)
    faces = centres[owner] + 0.6 * rng.normal(size=(len(owner), 32))
    faces = (faces / np.linalg.norm(faces, axis=1, keepdims=True)).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return Grouped(faces, starts, counts, mean_templates(faces, owner, n_ids))


def _run(fn: object, g: Grouped, keep: int, **kw: object) -> tuple[np.ndarray, np.ndarray]:
    n = len(g.starts)
    nbr, out = np.full((n, keep), -1, np.int64), np.full((n, keep), -np.inf, np.float32)
    fn(g, "both", keep, *(kw.pop("args", ())), nbr, out, _Bar(), **kw)  # type: ignore[operator]
    return nbr, out


@pytest.mark.parametrize("heavy", [0, 3])
def test_block_rescoring_equals_the_exact_build(heavy: int) -> None:
    g = _gallery(150, seed=heavy, heavy=heavy)
    keep = 6
    want_nbr, want = _run(exact_neighbours, g, keep)
    got_nbr, got = _run(shortlist_neighbours, g, keep, args=(149,))  # the shortlist is everybody else
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got_nbr == want_nbr).mean() > 0.99  # equal but for exact ties


def test_hnsw_shortlist_finds_the_scan_neighbours() -> None:
    g = _gallery(2000, seed=5)
    keep = 4
    scan_nbr, scan = _run(shortlist_neighbours, g, keep, args=(32,))
    ann_nbr, ann = _run(shortlist_neighbours, g, keep, args=(32,), ann_identities=0)
    assert (ann_nbr == scan_nbr).mean() > 0.98
    assert np.abs(ann.mean(axis=1) - scan.mean(axis=1)).max() < 0.05
    assert np.isfinite(ann).all() and (ann_nbr != np.arange(len(ann_nbr))[:, None]).all()  # never itself
