"""Making and training an index for a plan, on a seeded sample of the store's faces."""

from __future__ import annotations

import logging
import time
from typing import Any

import faiss
import numpy as np

from facesearch.errors import IndexBuildError
from facesearch.store.identity_store import IdentityStore
from indexer.plan import IndexPlan

log = logging.getLogger(f"facesearch.{__name__}")


def new_index(plan: IndexPlan) -> Any:
    """An empty index for ``plan``: L2 on unit vectors (ranks as inner product), ids = vector ids."""
    try:
        return faiss.index_factory(plan.d, plan.factory, faiss.METRIC_L2)
    except RuntimeError as err:
        raise IndexBuildError(f"cannot make index {plan.factory!r}: {err}") from err


def sample_vector_ids(vector_ids: np.ndarray, size: int, seed: int, stream: int) -> np.ndarray:
    """A seeded sample of ``size`` distinct vector ids (all of them when there are fewer)."""
    if size >= len(vector_ids):
        return vector_ids.copy()
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.choice(vector_ids, size=size, replace=False))


def train_index(index: Any, plan: IndexPlan, store: IdentityStore, vector_ids: np.ndarray, seed: int) -> dict[str, Any]:
    """Train ``index`` (and the refine codec) on a sample; returns facts for the manifest."""
    if plan.kind == "flat":
        return {"train_size": 0, "train_s": 0.0}
    t0 = time.perf_counter()
    sample_ids = sample_vector_ids(vector_ids, plan.train_size, seed, stream=1)
    x = store.embeddings_by_ids(sample_ids)
    log.info("training %s on %d faces", plan.factory, len(x))
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    ivf.cp.niter = 10
    ivf.cp.min_points_per_centroid = 16  # the plan samples ~30 per list on purpose (k-means time)
    try:
        index.train(x)
    except RuntimeError as err:
        raise IndexBuildError(f"training {plan.factory} on {len(x)} faces failed: {err}") from err
    distortion = quantization_distortion(index, x[: min(len(x), 20_000)])
    return {
        "train_size": len(x),
        "train_s": round(time.perf_counter() - t0, 2),
        "train_distortion": distortion,
    }


def quantization_distortion(index: Any, x: np.ndarray) -> float:
    """Mean squared distance of ``x`` to its nearest coarse centroid (drift detector)."""
    ivf = faiss.extract_index_ivf(index)
    if len(x) == 0:
        return 0.0
    dist, _ = ivf.quantizer.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return float(np.mean(dist[:, 0]))


def train_refine_codec(refine: str, store: IdentityStore, vector_ids: np.ndarray, seed: int) -> Any | None:
    """The SQ8 codec of an ``sq8`` re-ranking store (per-dimension ranges), else ``None``."""
    if refine != "sq8":
        return None
    sample_ids = sample_vector_ids(vector_ids, 65_536, seed, stream=2)
    codec = faiss.IndexScalarQuantizer(store.d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    codec.sq.rangestat_arg = 0.05  # widen the sampled min/max by 5% so unseen faces rarely clip
    codec.train(store.embeddings_by_ids(sample_ids))
    return codec
