"""One pass over the store: add vectors to the index in chunks, fill the re-ranking store, and
accumulate exact ground truth for the tuning queries on the way (the data is read once)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from facesearch.errors import IndexBuildError
from facesearch.store.identity_store import IdentityStore

REFINE_DTYPES: dict[str, Any] = {"flat": np.float32, "fp16": np.float16}


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """Exact top-``k`` (by inner product) of held-out queries that are faces of the store."""

    query_ids: np.ndarray  # (nq,) vector ids of the queries (excluded from their own results)
    queries: np.ndarray  # (nq, d) float32
    ids: np.ndarray  # (nq, k) vector ids, best first
    scores: np.ndarray  # (nq, k) cosines


class ExactAccumulator:
    """Merges exact top-k of fixed queries over database chunks (bounded memory)."""

    def __init__(self, query_ids: np.ndarray, queries: np.ndarray, k: int) -> None:
        self.query_ids = query_ids
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.heap = faiss.ResultHeap(len(queries), k, keep_max=True)

    def add(self, xb: np.ndarray, vector_ids: np.ndarray) -> None:
        if len(self.queries) == 0 or len(xb) == 0:
            return
        k = min(self.k, len(xb))
        dist, idx = faiss.knn(self.queries, np.ascontiguousarray(xb), k, metric=faiss.METRIC_INNER_PRODUCT)
        labels = np.where(idx >= 0, vector_ids[np.maximum(idx, 0)], -1)
        if k < self.k:
            dist = np.pad(dist, ((0, 0), (0, self.k - k)), constant_values=-np.inf)
            labels = np.pad(labels, ((0, 0), (0, self.k - k)), constant_values=-1)
        self.heap.add_result(np.ascontiguousarray(dist, dtype=np.float32), np.ascontiguousarray(labels))

    def result(self) -> GroundTruth:
        self.heap.finalize()
        return GroundTruth(self.query_ids, self.queries, self.heap.I.copy(), self.heap.D.copy())


@dataclass(frozen=True, slots=True)
class FilledIndex:
    vector_ids: np.ndarray  # (ntotal,) int64 ascending
    refine_rows: np.ndarray | None  # (ntotal, d) float32/float16, or (ntotal, code) uint8
    ground_truth: GroundTruth | None
    added: int


def fill(
    index: Any,
    store: IdentityStore,
    *,
    n: int,
    refine: str,
    codec: Any | None,
    add_from: int,
    accumulator: ExactAccumulator | None,
    chunk_size: int,
    progress: bool,
    exact_path: Path | None = None,
    desc: str = "add",
) -> FilledIndex:
    """Read every face of ``store`` once, in vector id order.

    Vectors with id >= ``add_from`` are added to ``index`` (all of them for a new index; only
    the new ones for an incremental add). The re-ranking store is rebuilt for all rows (same
    codec, so existing rows encode identically), exact ground truth is accumulated, and with
    ``exact_path`` the float32 rows are streamed to that ``.npy`` for exact re-scoring from disk.
    """
    d = store.d
    vector_ids = np.empty(n, dtype=np.int64)
    rows: np.ndarray | None = None
    if refine in REFINE_DTYPES:
        rows = np.empty((n, d), dtype=REFINE_DTYPES[refine])
    elif refine == "sq8":
        assert codec is not None, "an sq8 re-ranking store needs its trained codec"
        rows = np.empty((n, codec.sa_code_size()), dtype=np.uint8)
    pos, added = 0, 0
    exact = exact_path.open("wb") if exact_path is not None else None
    if exact is not None:
        np.lib.format.write_array_header_2_0(exact, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
    with (
        contextlib.closing(exact) if exact is not None else contextlib.nullcontext(),
        tqdm(total=n, desc=desc, unit="face", disable=not progress, dynamic_ncols=True) as bar,
    ):
        for vids, x, _ in store.iter_embeddings(chunk_size):
            if pos + len(vids) > n:
                raise IndexBuildError(f"the store holds more than the {n} faces counted when the job started")
            vector_ids[pos : pos + len(vids)] = vids
            if rows is not None:
                rows[pos : pos + len(vids)] = codec.sa_encode(x) if codec is not None else x
            if exact is not None:
                exact.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
            new = vids >= add_from
            if new.any():
                try:
                    index.add_with_ids(np.ascontiguousarray(x[new]), np.ascontiguousarray(vids[new]))
                except RuntimeError as err:
                    raise IndexBuildError(f"adding vectors {vids[new][0]}..{vids[new][-1]} failed: {err}") from err
                added += int(new.sum())
            if accumulator is not None:
                accumulator.add(x, vids)
            pos += len(vids)
            bar.update(len(vids))
    if pos != n:
        raise IndexBuildError(f"the store holds {pos} faces, {n} were counted when the job started")
    gt = accumulator.result() if accumulator is not None else None
    return FilledIndex(vector_ids, rows, gt, added)
