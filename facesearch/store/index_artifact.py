"""The index artifact: what ``facesearch-index`` publishes and the server loads.

Layout of an index root::

    ROOT/CURRENT                 the name of the published version (one line, switched atomically)
    ROOT/v000007/manifest.json   IndexManifest: contract id, d, metric, factory, nlist, search
                                 parameters, measured recall, build stats, resolved config,
                                 sha256 of every other file
    ROOT/v000007/index.faiss     the FAISS index; its ids are the store's vector ids
    ROOT/v000007/vector_ids.npy  the live vector ids, ascending (row i of refine.npy is vector_ids[i])
    ROOT/v000007/refine.npy      only for compressed indices: float32/fp16 rows or SQ8 codes used to
    ROOT/v000007/refine_codec.faiss  re-rank candidates (codec only for SQ8 codes)
    ROOT/v000007/exact.npy       with SQ8 re-ranking: float32 rows read from disk (``pread``, never
                                 resident) to re-score the best SQ8 candidates exactly
    ROOT/v000007/identities.sqlite   the identity store (facesearch.store.identity_store)
    ROOT/v000007/rejects.jsonl   input rows that were skipped, with reasons
    ROOT/erasures.sqlite         the erasure ledger (facesearch.store.erasure_ledger)
    ROOT/.trash-*, .staging-*, .work   leftovers of killed jobs (LEFTOVER_PATTERNS)

Scores. Embeddings are L2-normalised and the score is their cosine (inner product). The
FAISS index searches L2 distance on the same unit vectors, which ranks exactly like inner
product (``|x - q|^2 = 2 - 2 x.q``) while keeping k-means, HNSW coarse quantizers and
scalar/product quantizers in the metric they are built for; the score is ``1 - d / 2``. When
the manifest names a re-ranking store, candidates are re-scored by inner product against it.
Always search through :meth:`LoadedIndex.search`, which applies the manifest's parameters::

    index = load_index(root, expected_contract_id=bundle.contract_id)   # follows ROOT/CURRENT
    scores, vector_ids = index.search(embeddings, k)                    # cosines, -1 past the end
    with IdentityStore.open(index.dir / STORE_FILE) as store:
        faces = store.faces(vector_ids[0].tolist())                     # identity, name, source, box
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from facesearch.errors import ContractMismatchError, IndexFormatError, InvalidInputError, NotFoundError
from facesearch.util.fs import read_pointer, sha256_file, write_atomic

FORMAT = "facesearch-index"
FORMAT_VERSION = 1
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
VECTOR_IDS_FILE = "vector_ids.npy"
REFINE_FILE = "refine.npy"
REFINE_CODEC_FILE = "refine_codec.faiss"
EXACT_FILE = "exact.npy"
STORE_FILE = "identities.sqlite"
REJECTS_FILE = "rejects.jsonl"
#: Leftovers of killed jobs: a prune that stopped, a job that stopped before publishing, an unfinished build.
LEFTOVER_PATTERNS = (".trash-*", ".staging-*", ".work")


@dataclass(frozen=True, slots=True)
class SearchParams:
    """How to search the index; chosen at build time to meet the recall targets."""

    nprobe: int = 0  # inverted lists visited (0: not an IVF index)
    quantizer_ef: int = 0  # efSearch of an HNSW coarse quantizer (0: flat quantizer)
    refine_k_factor: int = 0  # candidates re-ranked = k * refine_k_factor (0: no re-ranking)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchParams:
        return cls(**{f.name: int(data.get(f.name, 0)) for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class RecallReport:
    """Approximate search measured against exact search on held-out queries from the data."""

    queries: int
    k: int
    recall_at_1: float  # approximate top-1 == exact top-1
    recall_at_10: float  # |approximate top-10 & exact top-10| / 10
    identity_agreement: float  # identity of approximate top-1 == identity of exact top-1
    target_recall_at_1: float
    target_identity_agreement: float
    met: bool

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecallReport:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True, slots=True)
class IndexManifest:
    version: str
    created_at: str  # ISO-8601 UTC
    contract_id: str
    d: int
    ntotal: int
    n_identities: int
    factory: str  # FAISS index factory string of index.faiss
    nlist: int  # 0 for flat
    search: SearchParams
    recall: RecallReport | None
    refine: str  # "" | "flat" | "fp16" | "sq8": the re-ranking store
    input_fingerprint: str
    parent: str | None  # the version this one was derived from (add/remove), None for a build
    build: dict[str, Any]  # timings per stage, peak RSS, counts, rejects
    config: dict[str, Any]  # the resolved job config that made this version
    files: dict[str, FileEntry] = field(default_factory=dict)
    exact_on_disk: bool = False  # exact.npy re-scores the best re-ranked candidates (SQ8 stores)
    metric: str = "inner_product"  # score = cosine of L2-normalised embeddings
    faiss_metric: str = "L2"  # distances in index.faiss; score = 1 - d / 2
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON data (sections as objects); :meth:`from_dict` reads it back."""
        return asdict(self)

    def to_json(self) -> str:
        """``manifest.json``'s exact text: sorted keys, two-space indent, one trailing newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexManifest:
        if data.get("format") != FORMAT:
            raise IndexFormatError(f"not a {FORMAT} manifest (format={data.get('format')!r})")
        if int(data.get("format_version", -1)) > FORMAT_VERSION:
            raise IndexFormatError(
                f"index format version {data.get('format_version')} is newer than this code ({FORMAT_VERSION})"
            )
        try:
            kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            kwargs["search"] = SearchParams.from_dict(data["search"])
            kwargs["recall"] = RecallReport.from_dict(data["recall"]) if data.get("recall") else None
            kwargs["files"] = {k: FileEntry(**v) for k, v in data.get("files", {}).items()}
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError) as err:
            raise IndexFormatError(f"bad index manifest: {err!r}") from err


# -- locating versions ---------------------------------------------------------------------
def resolve_version_dir(path: str | Path) -> Path:
    """A version directory: ``path`` itself if it holds a manifest, else ``path/CURRENT``'s target."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    pointer = path / CURRENT
    if not pointer.is_file():
        raise NotFoundError(f"{path} is neither an index version (no {MANIFEST}) nor an index root (no {CURRENT})")
    name = read_pointer(pointer) or ""
    if not name or "/" in name or name.startswith("."):
        raise IndexFormatError(f"{pointer} holds a bad version name {name!r}")
    target = path / name
    if not (target / MANIFEST).is_file():
        raise IndexFormatError(f"{pointer} points at {name!r}, which has no {MANIFEST}")
    return target


def current_version(root: str | Path) -> str | None:
    pointer = Path(root) / CURRENT
    return read_pointer(pointer) if pointer.is_file() else None


def list_versions(root: str | Path) -> list[str]:
    """Published version names under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v") and (p / MANIFEST).is_file())


def read_manifest(path: str | Path) -> IndexManifest:
    vdir = resolve_version_dir(path)
    try:
        data = json.loads((vdir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise IndexFormatError(f"cannot read {vdir / MANIFEST}: {err}") from err
    return IndexManifest.from_dict(data)


def check_files(vdir: str | Path, manifest: IndexManifest | None = None, *, workers: int = 4) -> list[str]:
    """Problems with the files of a version (missing, wrong size, wrong sha256); empty if none.

    Files are hashed on up to ``workers`` threads (hashlib releases the GIL on 1 MiB blocks)."""
    vdir = Path(vdir)
    manifest = manifest or read_manifest(vdir)
    problems = []
    hashed: list[tuple[str, FileEntry]] = []
    for name, entry in sorted(manifest.files.items()):
        path = vdir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry.bytes:
            problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {entry.bytes}")
        else:
            hashed.append((name, entry))
    if hashed:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(hashed)))) as pool:
            digests = list(pool.map(sha256_file, [vdir / name for name, _ in hashed]))
        pairs = zip(hashed, digests, strict=True)
        problems += [f"{name}: sha256 differs from the manifest" for (name, e), d in pairs if d != e.sha256]
    return sorted(problems)


def write_manifest(vdir: Path, manifest: IndexManifest) -> None:
    """Write ``vdir/manifest.json`` atomically (the last file of a version to be written)."""
    write_atomic(vdir / MANIFEST, manifest.to_json())


# -- searching -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RefineStore:
    """Vectors (or SQ8 codes) of the live faces, row ``i`` for ``vector_ids[i]``."""

    rows: np.ndarray  # (ntotal, d) float32, or (ntotal, code_size) uint8 with a codec
    codec: Any | None  # faiss.IndexScalarQuantizer decoding uint8 rows

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        rows = self.rows[positions.ravel()]
        if self.codec is not None:
            rows = self.codec.sa_decode(np.ascontiguousarray(rows))
        return np.asarray(rows, dtype=np.float32).reshape(*positions.shape, -1)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes)


class DiskRows:
    """Float32 rows of an ``.npy`` file read with ``pread``: on disk (page cache), not resident."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else (np.lib.format.read_array_header_2_0)
            )
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran or dtype != np.dtype("<f4") or len(shape) != 2:
            raise IndexFormatError(f"{path}: expected a C-ordered float32 2-d array, got {dtype} {shape}")
        self.path = path
        self.shape = tuple(shape)
        self.row_bytes = int(shape[1]) * 4
        self._fd = os.open(path, os.O_RDONLY)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        flat = positions.ravel()
        out = np.empty((len(flat), self.shape[1]), dtype=np.float32)
        for i, p in enumerate(flat.tolist()):
            out[i] = np.frombuffer(os.pread(self._fd, self.row_bytes, self.offset + p * self.row_bytes), "<f4")
        return out.reshape(*positions.shape, self.shape[1])

    def close(self) -> None:
        os.close(self._fd)


class IndexSearcher:
    """Search over a FAISS index whose ids are vector ids, with optional re-ranking."""

    def __init__(
        self,
        index: Any,
        vector_ids: np.ndarray,
        refine: RefineStore | None,
        default_params: SearchParams,
        exact: DiskRows | None = None,
    ) -> None:
        self.index = index
        self.vector_ids = vector_ids
        self.refine = refine
        self.default_params = default_params
        self.exact = exact
        self._positions = _position_table(vector_ids)

    def close(self) -> None:
        """Release the on-disk exact rows (the rest is plain memory)."""
        if self.exact is not None:
            self.exact.close()
            self.exact = None

    def drop_rows(self) -> None:
        """Free the re-ranking rows and id tables, keeping the FAISS index (for a job that rebuilds
        them while it reuses the trained index); searching afterwards is an error."""
        self.close()
        self.refine = None
        self.vector_ids = np.empty(0, dtype=np.int64)
        self._positions = None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return int(self.index.d)

    @staticmethod
    def faiss_params(params: SearchParams) -> Any:
        if params.nprobe <= 0:
            return None
        fa: Any = faiss  # the stubs lack the SearchParameters classes
        qp = fa.SearchParametersHNSW(efSearch=params.quantizer_ef) if params.quantizer_ef > 0 else None
        return fa.SearchParametersIVF(nprobe=params.nprobe, quantizer_params=qp)

    def search(self, queries: np.ndarray, k: int, params: SearchParams | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, vector_ids)`` per query; scores are cosines, ids ``-1`` past the end.

        ``params`` defaults to the tuned ones. Thread-safe: nothing is mutated.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.d:
            raise InvalidInputError(f"queries must be (n, {self.d}) float32, got {q.shape}")
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        params = params or self.default_params
        fp = self.faiss_params(params)
        if self.refine is None or params.refine_k_factor <= 0:
            dist, ids = self.index.search(q, k, params=fp) if fp is not None else self.index.search(q, k)
            scores = np.where(ids >= 0, 1.0 - dist / 2.0, -np.inf).astype(np.float32)
            return scores, ids
        kk = min(k * params.refine_k_factor, max(self.ntotal, 1))
        _, cand = self.index.search(q, kk, params=fp) if fp is not None else self.index.search(q, kk)
        return self.rerank(q, cand, k)

    def rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-score candidate vector ids by inner product against the refine store; keep top ``k``."""
        assert self.refine is not None
        valid = cand >= 0
        safe = np.where(valid, cand, 0)
        if self._positions is None:  # vector ids are the row numbers (a fresh build)
            pos = np.minimum(safe, len(self.vector_ids) - 1)
        elif len(self._positions):  # dense id -> row table (a binary search misses cache at 1M+)
            pos = self._positions[np.minimum(safe, len(self._positions) - 1)]
        else:
            pos = np.minimum(np.searchsorted(self.vector_ids, safe), len(self.vector_ids) - 1)
        vecs = self.refine.vectors(pos)
        scores = np.einsum("nkd,nd->nk", vecs, q)
        scores[~valid] = -np.inf
        if self.exact is not None:  # re-score the best few exactly, from disk
            depth = min(scores.shape[1], 2 * k + 8)
            keep = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
            cand = np.take_along_axis(cand, keep, axis=1)
            pos = np.take_along_axis(pos, keep, axis=1)
            valid = np.take_along_axis(valid, keep, axis=1)
            scores = np.einsum("nkd,nd->nk", self.exact.rows(pos), q)
            scores[~valid] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
        top_ids = np.take_along_axis(cand, order, axis=1)
        top_ids[~np.isfinite(top_scores)] = -1
        if top_ids.shape[1] < k:
            pad = k - top_ids.shape[1]
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
        return top_scores, top_ids


def _position_table(vector_ids: np.ndarray) -> np.ndarray | None:
    """How to map vector ids to rows: None when they are the rows, a dense int32 table when ids
    are not too sparse (4 bytes per id), else an empty array (binary search)."""
    n = len(vector_ids)
    if n == 0 or (vector_ids[0] == 0 and vector_ids[-1] == n - 1):
        return None
    top = int(vector_ids[-1]) + 1
    if top > 2 * n + 1024 or n >= 2**31:
        return np.empty(0, dtype=np.int32)
    table = np.zeros(top, dtype=np.int32)
    table[vector_ids] = np.arange(n, dtype=np.int32)
    return table


class LoadedIndex(IndexSearcher):
    """A loaded version: its directory, manifest and searcher."""

    def __init__(  # noqa: PLR0917 - mirrors IndexSearcher's parts
        self,
        vdir: Path,
        manifest: IndexManifest,
        index: Any,
        vector_ids: np.ndarray,
        refine: RefineStore | None,
        exact: DiskRows | None = None,
    ) -> None:
        super().__init__(index, vector_ids, refine, manifest.search, exact)
        self.dir = vdir
        self.manifest = manifest

    def memory_bytes(self) -> int:
        """Resident bytes of the searchable structures (index + vector ids + refine store)."""
        index_bytes = (self.dir / INDEX_FILE).stat().st_size  # the in-memory layout mirrors the file
        refine = self.refine.nbytes if self.refine is not None else 0
        return index_bytes + int(self.vector_ids.nbytes) + refine


def load_index(
    path: str | Path,
    *,
    expected_contract_id: str | None = None,
    verify: bool = False,
    mmap_refine: bool = False,
) -> LoadedIndex:
    """Load ``path`` (an index root, following ``CURRENT``, or a version directory).

    Refuses an index whose contract id differs from ``expected_contract_id`` (the model the
    caller embeds queries with). ``verify`` re-checks every file's sha256 first.
    """
    vdir = resolve_version_dir(path)
    manifest = read_manifest(vdir)
    if expected_contract_id is not None and manifest.contract_id != expected_contract_id:
        raise ContractMismatchError(
            f"index {vdir} was built with model contract {manifest.contract_id}, "
            f"but the loaded model is {expected_contract_id}; rebuild the index with this model"
        )
    if verify:
        problems = check_files(vdir, manifest)
        if problems:
            raise IndexFormatError(f"index {vdir} fails verification: {'; '.join(problems)}")
    for name in (INDEX_FILE, VECTOR_IDS_FILE):
        if not (vdir / name).is_file():
            raise IndexFormatError(f"index {vdir} has no {name}")
    index = faiss.read_index(str(vdir / INDEX_FILE))
    vector_ids = np.load(vdir / VECTOR_IDS_FILE)
    refine = None
    if manifest.refine:
        rows = np.load(vdir / REFINE_FILE, mmap_mode="r" if mmap_refine else None)
        codec = faiss.read_index(str(vdir / REFINE_CODEC_FILE)) if manifest.refine == "sq8" else None
        refine = RefineStore(rows=rows, codec=codec)
    exact = DiskRows(vdir / EXACT_FILE) if manifest.exact_on_disk else None
    if exact is not None and exact.shape[0] != manifest.ntotal:
        raise IndexFormatError(f"index {vdir}: {EXACT_FILE} has {exact.shape[0]} rows, not {manifest.ntotal}")
    if index.ntotal != manifest.ntotal or len(vector_ids) != manifest.ntotal or index.d != manifest.d:
        raise IndexFormatError(
            f"index {vdir}: ntotal {index.ntotal}/{len(vector_ids)} vector ids, d {index.d}; manifest says "
            f"ntotal {manifest.ntotal}, d {manifest.d}"
        )
    if refine is not None and refine.rows.shape[0] != manifest.ntotal:
        raise IndexFormatError(f"index {vdir}: {REFINE_FILE} has {refine.rows.shape[0]} rows, not {manifest.ntotal}")
    return LoadedIndex(vdir, manifest, index, vector_ids, refine, exact)
