"""Pure sizing: which index to build for ``n`` faces within a memory budget, and what it costs.

Measured on face-like embeddings (bench/results/index_*.md), not copied from tutorials:

* up to ``flat_max`` faces, exact search is fast enough and needs no tuning (``IDMap,Flat``);
* beyond, ``IVF{nlist},PQ{d/2}x4fs`` (4-bit fast-scan product codes, scanned with SIMD) finds
  candidates and they are re-ranked by inner product against a re-ranking store. With float32
  rows this holds the bytes of IVF-Flat and is about twice as fast at the same recall (the
  candidates are cheap to find, the exact scores fix the order); ``fp16`` halves the store
  and keeps recall@1 (0.998 of exact's order among the top candidates); ``sq8`` quarters it
  but alone loses recall@1 (~0.95: in a narrow cone 10% of top-1/top-2 gaps are under 5e-4,
  below its resolution), so its best few candidates are re-scored from float32 rows on disk
  (``exact.npy``, read with ``pread``, not resident). That is what fits 10M faces in ~1.8 GB;
* ``nlist`` is the power of two nearest ``sqrt(n)`` (1M -> 1024, 10M -> 4096), fewer lists than
  the usual ``4 sqrt(n)``: scanning fast-scan codes is cheap, the work per visited list is not.
  At 1M, recall@1 ~0.985 costs 0.30 ms with 1024 lists, 0.34 ms with 2048, 0.51 ms with 4096,
  0.72 ms with 8192 and 1.24 ms with 16384 (index_explore_1m.md). From 8192 lists the coarse
  quantizer is an HNSW graph, which keeps assigning vectors (and each query) cheap;
* L2 on unit vectors ranks exactly as inner product and is translation invariant, so centring
  the gallery changes nothing for it (for an IP-metric IVF, centring query and gallery would
  break the ranking; see bench/results/index_explore_1m.md).

The re-ranking store is the best of float32 > fp16 > sq8 whose build fits the budget; when
none fits, the plan fails before any work, naming the knob to turn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from facesearch.errors import InvalidInputError, MemoryBudgetError
from indexer.sizes import format_size

REFINE_BYTES_PER_DIM = {"flat": 4, "fp16": 2, "sq8": 1}
BASELINE_BYTES = 400 << 20  # interpreter, numpy, faiss, onnxruntime-free job, SQLite cache
HNSW_QUANTIZER_MIN_NLIST = 8192
SAFETY = 1.1  # the estimate is within a few % of measured peaks (bench/results); keep 10% spare


@dataclass(frozen=True, slots=True)
class IndexOptions:
    """Overrides of the automatic choices (``--index-options key=value,...``)."""

    flat_max: int = 50_000
    nlist: int = 0  # 0 = from n
    refine: str = ""  # "" = best that fits; or flat | fp16 | sq8
    train_per_list: int = 30
    queries: int = 2000  # held-out queries for tuning
    target_recall_at_1: float = 0.98
    target_identity_agreement: float = 0.995
    margin: float = 0.005  # tune to targets + margin: held-out figures carry sampling noise
    exact_on_disk: bool = True  # with sq8 re-ranking, re-score the best candidates from float32 on disk
    seed: int = 0

    def __post_init__(self) -> None:
        if self.refine not in ("", *REFINE_BYTES_PER_DIM):
            raise InvalidInputError(f"index option refine={self.refine!r}: expected flat, fp16 or sq8")
        if self.nlist < 0 or (self.nlist and self.nlist & (self.nlist - 1)):
            raise InvalidInputError(f"index option nlist={self.nlist}: expected a power of two")
        if not 0 < self.target_recall_at_1 <= 1 or not 0 < self.target_identity_agreement <= 1:
            raise InvalidInputError("recall targets must be in (0, 1]")
        if self.queries < 10:
            raise InvalidInputError(f"index option queries={self.queries}: need at least 10")

    @classmethod
    def parse(cls, text: str) -> IndexOptions:
        """``"nlist=16384,refine=sq8"`` -> options (unknown keys are an error)."""
        if not text:
            return cls()
        kwargs: dict[str, object] = {}
        types: dict[str, Callable[[str], object]] = {
            "flat_max": int,
            "nlist": int,
            "refine": str,
            "train_per_list": int,
            "queries": int,
            "target_recall_at_1": float,
            "target_identity_agreement": float,
            "margin": float,
            "seed": int,
            "exact_on_disk": _flag,
        }
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in types:
                raise InvalidInputError(f"bad index option {item!r}; known: {', '.join(types)}")
            try:
                kwargs[key] = types[key](value.strip())
            except ValueError:
                raise InvalidInputError(f"bad value in index option {item!r}") from None
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class IndexPlan:
    n: int
    d: int
    kind: str  # "flat" | "ivf"
    factory: str
    nlist: int
    hnsw_quantizer: bool
    pq_m: int
    refine: str  # "" | flat | fp16 | sq8
    train_size: int
    chunk_size: int
    index_bytes: int  # resident bytes of the searchable structures
    peak_bytes: int  # estimated peak RSS of the build

    @property
    def bytes_per_face(self) -> float:
        return self.index_bytes / max(self.n, 1)


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def choose_nlist(n: int) -> int:
    target = math.sqrt(max(n, 1))
    return int(min(65536, max(256, 2 ** round(math.log2(target)))))


def chunk_rows(d: int, budget: int) -> int:
    """Rows per add chunk: ~1/32 of the budget for the chunk's float32 copies, 16k..256k rows."""
    return int(min(262_144, max(16_384, budget // 32 // (d * 4 * 3))))


def index_bytes(n: int, d: int, *, nlist: int, pq_m: int, refine: str, hnsw: bool) -> int:
    """Resident bytes: IVF codes + ids (+ fast-scan block padding), quantizer, vector ids, refine store."""
    codes = n * (pq_m // 2 + 8) + nlist * 32 * (pq_m // 2)
    quantizer = nlist * d * 4 + (nlist * 32 * 2 * 4 if hnsw else 0)
    refine_store = n * d * REFINE_BYTES_PER_DIM[refine] if refine else 0
    return codes + quantizer + n * 8 + refine_store


def plan_index(n: int, d: int, budget: int, options: IndexOptions | None = None) -> IndexPlan:
    """The index for ``n`` vectors of dimension ``d`` whose build fits in ``budget`` bytes."""
    opts = options or IndexOptions()
    if n < 1:
        raise InvalidInputError("no embeddings to index")
    chunk = chunk_rows(d, budget)
    chunk_bytes = chunk * d * 4 * 3
    per_face_labels = 16  # identity key per face + the live vector id list while tuning
    if n <= opts.flat_max and not opts.nlist:
        flat = n * (d * 4 + 8) + n * 8
        peak = BASELINE_BYTES + flat + n * per_face_labels + chunk_bytes
        flat_plan = IndexPlan(n, d, "flat", "IDMap,Flat", 0, False, 0, "", 0, chunk, flat, peak)
        _check_budget(flat_plan, budget)
        return flat_plan
    nlist = opts.nlist or choose_nlist(n)
    nlist = min(nlist, max(1, 2 ** int(math.log2(max(n // 39, 1)))))  # >= 39 training points per list
    hnsw = nlist >= HNSW_QUANTIZER_MIN_NLIST
    pq_m = d // 2 if d % 2 == 0 else d
    train = min(n, opts.train_per_list * nlist)
    quantizer = f"IVF{nlist}_HNSW32" if hnsw else f"IVF{nlist}"
    factory = f"{quantizer},PQ{pq_m}x4fs"
    candidates = [opts.refine] if opts.refine else list(REFINE_BYTES_PER_DIM)
    plan: IndexPlan | None = None
    for refine in candidates:
        resident = index_bytes(n, d, nlist=nlist, pq_m=pq_m, refine=refine, hnsw=hnsw)
        growth = n * (pq_m // 2)  # inverted lists grow by doubling while vectors are added
        peak = BASELINE_BYTES + resident + growth + n * per_face_labels + train * d * 4 * 2 + chunk_bytes
        plan = IndexPlan(n, d, "ivf", factory, nlist, hnsw, pq_m, refine, train, chunk, resident, peak)
        if peak * SAFETY <= budget:
            return plan
    assert plan is not None
    _check_budget(plan, budget)  # the smallest candidate does not fit either: raises
    return plan


def _check_budget(plan: IndexPlan, budget: int) -> None:
    if plan.peak_bytes * SAFETY > budget:
        refine = f" with the {plan.refine} re-ranking store" if plan.refine else ""
        raise MemoryBudgetError(
            f"building a {plan.factory} index{refine} over {plan.n:,} faces needs about "
            f"{format_size(plan.peak_bytes)} (index {format_size(plan.index_bytes)}), more than "
            f"--memory-budget {format_size(budget)}; raise --memory-budget to at least "
            f"{format_size(plan.peak_bytes * SAFETY * 1.05)}"
        )
