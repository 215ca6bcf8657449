"""How long the indexer's open-set stage (gallery cohort statistics) takes at scale.

Faces come from the synthetic face model (``facesearch.evaluation.synthetic``: identities in generation
order, so they are already grouped), 10 per identity on average; the stage is the same
``from_grouped`` the indexer runs after reading the identity store (the store read itself is
timed in the indexer's own summary, ``open_set`` seconds, and is not included here).

    nice -n 10 .venv/bin/python bench/open_set_scale.py --n 10000000
    # how close the HNSW shortlist is to a full template scan (L^2: use at most ~1M faces)
    nice -n 10 .venv/bin/python bench/open_set_scale.py --n 1000000 --compare-scan
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path
from facesearch.scoring.gallery_stats import ANN_IDENTITIES, SHORTLIST, Grouped, from_grouped, shortlist_neighbours
from facesearch.scoring.templates import DEFAULT_TEMPLATE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument(
        "--compare-scan",
        action="store_true",
        help="also shortlist by a full template scan and compare the k nearest identities",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    g = SyntheticGallery(FaceEmbeddingModel.load(default_model_path()), args.n, 10.0, seed=1).materialize()
    labels, owner = np.unique(g.identities, return_inverse=True)
    faces = g.embeddings
    del g
    n_ids = len(labels)
    counts = np.bincount(owner, minlength=n_ids)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    sums = np.add.reduceat(faces.astype(np.float64), starts, axis=0)
    templates = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
    del sums
    t1 = time.perf_counter()
    print(
        f"{args.n:,} faces, {n_ids:,} identities generated in {t1 - t0:.1f}s "
        f"({'HNSW' if n_ids > ANN_IDENTITIES else 'full-scan'} template shortlist)",
        flush=True,
    )
    result = from_grouped(
        [str(i) for i in labels],
        Grouped(faces, starts, counts, templates),
        k=args.k,
        rule=DEFAULT_TEMPLATE,
        depth=None,
        exact_faces=0,
        progress=True,
    )
    t2 = time.perf_counter()
    print(
        f"open-set cohort: {t2 - t1:.1f}s for {len(result):,} identities ({1e6 * (t2 - t1) / n_ids:.0f} us/identity)",
        flush=True,
    )
    if args.compare_scan:
        grouped = Grouped(faces, starts, counts, templates)
        found = {}
        for name, limit in (("hnsw", 0), ("scan", n_ids + 1)):
            nbr = np.full((n_ids, args.k), -1, np.int64)
            val = np.full((n_ids, args.k), -np.inf, np.float32)
            t = time.perf_counter()
            shortlist_neighbours(grouped, DEFAULT_TEMPLATE, args.k, SHORTLIST, nbr, val, _NoBar(), ann_identities=limit)
            found[name] = (nbr, val)
            print(f"{name}: {time.perf_counter() - t:.1f}s", flush=True)
        (hn, hv), (sn, sv) = found["hnsw"], found["scan"]
        same = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(hn.tolist(), sn.tolist(), strict=True)])
        diff = np.abs(hv.mean(axis=1) - sv.mean(axis=1))
        print(
            f"k={args.k} nearest identities shared with the full scan: {same:.4f}; cohort mean |diff| "
            f"mean {diff.mean():.2e}, p99 {np.quantile(diff, 0.99):.2e}, max {diff.max():.2e}",
            flush=True,
        )
    return 0


class _NoBar:
    def update(self, n: int) -> None:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
