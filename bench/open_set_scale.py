"""How long the indexer's open-set stage (gallery cohort statistics) takes at scale.

Faces come from the synthetic face model (``facesearch.synthetic``: identities in generation
order, so they are already grouped), 10 per identity on average; the stage is the same
``_from_grouped`` the indexer runs after reading the identity store (the store read itself is
timed in the indexer's own summary, ``open_set`` seconds, and is not included here).

    nice -n 10 .venv/bin/python bench/open_set_scale.py --n 10000000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from facesearch.gallery_open_set import ANN_IDENTITIES, _from_grouped, _Grouped
from facesearch.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path
from facesearch.templates import DEFAULT_TEMPLATE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=4)
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
    print(f"{args.n:,} faces, {n_ids:,} identities generated in {t1 - t0:.1f}s "
          f"({'HNSW' if n_ids > ANN_IDENTITIES else 'full-scan'} template shortlist)", flush=True)
    result = _from_grouped([str(i) for i in labels], _Grouped(faces, starts, counts, templates), k=args.k,
                           rule=DEFAULT_TEMPLATE, depth=None, exact_faces=0, progress=True)
    t2 = time.perf_counter()
    print(f"open-set cohort: {t2 - t1:.1f}s for {len(result):,} identities "
          f"({1e6 * (t2 - t1) / n_ids:.0f} us/identity)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
