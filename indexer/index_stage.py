"""The index stage shared by build, add and remove: (train,) add, measure, tune.

Works from the finished identity store of the version being made, so a fresh build, a full
rebuild (``--retrain``) and an incremental change all go through the same code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import (
    EXACT_FILE,
    DiskRows,
    IndexSearcher,
    LoadedIndex,
    RecallReport,
    RefineStore,
    SearchParams,
)
from indexer.add import ExactAccumulator, fill
from indexer.plan import IndexOptions, IndexPlan, chunk_rows, plan_index
from indexer.train import (
    new_index,
    quantization_distortion,
    sample_vector_ids,
    train_index,
    train_refine_codec,
)
from indexer.tune import IdentityLookup, Measurement, tune

log = logging.getLogger(f"facesearch.{__name__}")

QUERY_STREAM = 3
GT_K = 11  # top-10 plus the query itself


@dataclass(slots=True)
class IndexOutcome:
    index: Any
    plan: IndexPlan
    vector_ids: np.ndarray
    refine_rows: np.ndarray | None
    codec: Any | None
    params: SearchParams
    recall: RecallReport
    sweep: list[Measurement]
    facts: dict[str, Any] = field(default_factory=dict)  # timings, training facts
    exact_on_disk: bool = False  # exact.npy was written next to the index (SQ8 stores)


def base_plan(base: LoadedIndex, n: int, budget: int, options: IndexOptions) -> IndexPlan:
    """The plan of an existing index, re-costed for ``n`` faces (raises if it outgrows the budget)."""
    m = base.manifest
    if m.nlist == 0:
        return plan_index(n, m.d, budget, IndexOptions(**{**asdict(options), "flat_max": max(n, 1), "nlist": 0}))
    opts = IndexOptions(**{**asdict(options), "nlist": m.nlist, "refine": m.refine or options.refine})
    plan = plan_index(n, m.d, budget, opts)
    return replace(plan, factory=m.factory, nlist=m.nlist, hnsw_quantizer="_HNSW" in m.factory)


def run_index_stage(
    store: IdentityStore,
    *,
    budget: int,
    options: IndexOptions,
    progress: bool,
    base: LoadedIndex | None = None,
    add_from: int = 0,
    remove_ids: np.ndarray | None = None,
    staged: Path | None = None,
) -> IndexOutcome:
    """Make the searchable index of ``store``.

    ``base`` None: plan, train and fill a new index. Otherwise reuse ``base``'s trained index:
    remove ``remove_ids`` physically and add the faces with vector id >= ``add_from``.
    """
    facts: dict[str, Any] = {}
    t0 = time.perf_counter()
    vids, keys = store.vector_identity_keys()
    n = len(vids)
    if base is None:
        plan = plan_index(n, store.d, budget, options)
        index = new_index(plan)
        facts.update(train_index(index, plan, store, vids, options.seed))
        codec = train_refine_codec(plan.refine, store, vids, options.seed)
        add_from = -1
    else:
        plan = base_plan(base, n, budget, options)
        index = base.index
        codec = base.refine.codec if base.refine is not None else None
        base.drop_rows()  # rebuilt from the store below: never hold two copies of the rows
        for key in ("train_distortion", "train_size"):  # facts of the training this index still uses
            if key in base.manifest.build:
                facts[key] = base.manifest.build[key]
        facts["trained_in"] = base.manifest.build.get("trained_in", base.manifest.version)
        if remove_ids is not None and len(remove_ids):
            removed = int(index.remove_ids(np.ascontiguousarray(remove_ids, dtype=np.int64)))
            facts["removed_vectors"] = removed
    facts["train_s"] = round(time.perf_counter() - t0, 2)
    t1 = time.perf_counter()
    nq = min(options.queries, n)
    query_ids = sample_vector_ids(vids, nq, options.seed, stream=QUERY_STREAM)
    accumulator = ExactAccumulator(query_ids, store.embeddings_by_ids(query_ids), min(GT_K, n))
    wants_exact = base.manifest.exact_on_disk if base is not None else (plan.refine == "sq8" and options.exact_on_disk)
    exact_path = staged / EXACT_FILE if staged is not None and wants_exact else None
    filled = fill(
        index,
        store,
        n=n,
        refine=plan.refine,
        codec=codec,
        add_from=add_from,
        accumulator=accumulator,
        chunk_size=chunk_rows(store.d, budget),
        progress=progress,
        exact_path=exact_path,
    )
    facts["added_vectors"] = filled.added
    facts["add_s"] = round(time.perf_counter() - t1, 2)
    if plan.kind == "ivf" and base is not None and add_from >= 0:
        new = vids[vids >= add_from]
        if len(new):
            sample = store.embeddings_by_ids(sample_vector_ids(new, 20_000, options.seed, stream=4))
            facts["new_distortion"] = quantization_distortion(index, sample)
    t2 = time.perf_counter()
    refine = RefineStore(filled.refine_rows, codec) if filled.refine_rows is not None else None
    exact = DiskRows(exact_path) if exact_path is not None else None
    searcher = IndexSearcher(index, filled.vector_ids, refine, SearchParams(), exact)
    assert filled.ground_truth is not None
    params, report, sweep = tune(
        searcher,
        filled.ground_truth,
        IdentityLookup(vids, keys),
        nlist=plan.nlist,
        refine=refine is not None,
        hnsw_quantizer=plan.hnsw_quantizer,
        target_r1=options.target_recall_at_1,
        target_id=options.target_identity_agreement,
        margin=options.margin,
        progress=progress,
    )
    facts["tune_s"] = round(time.perf_counter() - t2, 2)
    if not report.met:
        log.warning(
            "recall targets not met: recall@1 %.4f (target %.4f), identity %.4f (target %.4f)",
            report.recall_at_1,
            report.target_recall_at_1,
            report.identity_agreement,
            report.target_identity_agreement,
        )
    if exact is not None:
        exact.close()
    return IndexOutcome(
        index,
        plan,
        filled.vector_ids,
        filled.refine_rows,
        codec,
        params,
        report,
        sweep,
        facts,
        exact_on_disk=exact_path is not None,
    )


def set_threads(threads: int) -> None:
    if threads > 0:
        faiss.omp_set_num_threads(threads)
