"""Index benchmark: build with ``facesearch-index`` and compare, in the same run, with exact
FAISS ``IndexFlatIP`` and the plain numpy scan face_recognition users write.

Data: seeded face-like synthetic embeddings from ../shared/data/face_embedding_model.npz
(``--n`` faces, ``--faces-per-identity`` on average), or real LFW embeddings (``--embeddings``).
Queries: fresh faces of enrolled people (mated queries, drawn from the same model), not in
the gallery. Measured: build time per stage and peak RSS (from the build's manifest; the
build runs as its own process), resident bytes per face, recall@1/@10 and top-1 identity
agreement against exact search, single-query and batch-of-64 latency on one thread.

    nice -n 10 .venv/bin/python bench/index_bench.py --n 1000000 --memory-budget 8G \\
        --out bench/results/index_1m.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path  # noqa: E402
from facesearch.store.identity_store import IdentityStore  # noqa: E402
from facesearch.store.index_artifact import STORE_FILE, load_index  # noqa: E402
from indexer.add import ExactAccumulator  # noqa: E402
from indexer.read import EmbeddingFile  # noqa: E402
from indexer.sizes import current_rss, format_size  # noqa: E402

CONTRACT = "synthetic:face_embedding_model"


def write_gallery(path: Path, n: int, fpi: float, seed: int) -> SyntheticGallery:
    """Stream a synthetic gallery into an uncompressed .npz (no full copy in memory)."""
    gallery = SyntheticGallery(FaceEmbeddingModel.load(default_model_path()), n, fpi, seed=seed)
    if path.is_file():
        return gallery
    import zipfile

    tmp = path.with_suffix(".tmp.npz")
    d = gallery.model.d
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("embeddings.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_2_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
            ids = np.empty(n, dtype=np.int64)
            for chunk in gallery.chunks(262_144):
                fh.write(chunk.embeddings.tobytes())
                ids[chunk.start : chunk.start + len(chunk.embeddings)] = chunk.identities
        with zf.open("identities.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, ids)
        with zf.open("contract_id.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array(CONTRACT))
    os.replace(tmp, path)
    return gallery


def time_single(fn, queries: np.ndarray, repeat: int) -> float:
    """Median ms per single query over ``repeat`` queries."""
    times = []
    for i in range(repeat):
        q = queries[i % len(queries) : i % len(queries) + 1]
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def time_batch(fn, queries: np.ndarray, repeat: int) -> float:
    """ms per query when searching batches of 64."""
    times = []
    for i in range(repeat):
        start = (i * 64) % max(len(queries) - 64, 1)
        t = time.perf_counter()
        fn(queries[start : start + 64])
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000 / 64)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--faces-per-identity", type=float, default=10.0)
    ap.add_argument("--embeddings", type=Path, help="real embeddings (.npz) instead of synthetic")
    ap.add_argument("--queries", type=int, default=1000, help="mated queries for recall")
    ap.add_argument("--memory-budget", default="8G")
    ap.add_argument("--index-options", default="")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out")
    ap.add_argument("--out", type=Path, required=True, help="markdown results")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--numpy-queries", type=int, default=5)
    ap.add_argument("--flat-queries", type=int, default=100)
    ap.add_argument("--no-flat-memory", action="store_true", help="skip in-memory exact/numpy baselines (10M)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds (best median kept)")
    ap.add_argument("--reuse-build", action="store_true", help="re-measure search on the last build")
    ap.add_argument("--render", type=Path, help="only re-render the markdown from a results .json")
    args = ap.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        args.out.write_text(render(saved, int(saved.get("n") or saved["manifest"]["ntotal"])))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}

    # -- data ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if args.embeddings:
        data_path = args.embeddings
        gallery = None
    else:
        data_path = args.work / f"synthetic-{args.n}-{args.faces_per_identity:g}-{args.seed}.npz"
        gallery = write_gallery(data_path, args.n, args.faces_per_identity, args.seed)
    results["data_s"] = round(time.perf_counter() - t0, 1)
    src = EmbeddingFile(data_path)
    n, d = src.n, src.d
    print(f"data {data_path} n={n} d={d} ({results['data_s']}s)", flush=True)

    # -- build (own process: its peak RSS is the build's) ----------------------------------
    root = args.work / f"index-{data_path.stem}"
    previous = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").is_file() else {}
    if args.reuse_build and (root / "CURRENT").is_file() and previous.get("build_wall_s"):
        build_wall = float(previous["build_wall_s"])  # measure search again on the same published build
        print(f"reusing the build in {root}", flush=True)
        results["reused_build"] = True
    else:
        if root.exists():
            import shutil

            shutil.rmtree(root)
        cmd = [
            sys.executable,
            "-m",
            "indexer",
            "build",
            "--embeddings",
            str(data_path),
            "--out",
            str(root),
            "--memory-budget",
            args.memory_budget,
            "--threads",
            str(args.build_threads),
            "--quiet",
        ]
        if args.index_options:
            cmd += ["--index-options", args.index_options]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True)
        build_wall = time.perf_counter() - t0
        print(proc.stdout, proc.stderr[-3000:], flush=True)
        if proc.returncode != 0:
            return proc.returncode
    manifest = json.loads((next(root.glob("v*")) / "manifest.json").read_text())
    results["build_wall_s"] = round(build_wall, 1)
    results["manifest"] = manifest

    # -- load and size ---------------------------------------------------------------------
    faiss.omp_set_num_threads(1)
    rss0 = current_rss()
    index = load_index(root)
    rss_loaded = current_rss() - rss0
    with IdentityStore.open(index.dir / STORE_FILE) as store:
        vids, _ = store.vector_identity_keys()
    file_sizes = {p.name: p.stat().st_size for p in index.dir.iterdir() if p.is_file()}
    searchable = sum(
        file_sizes[f] for f in ("index.faiss", "vector_ids.npy", "refine.npy", "refine_codec.faiss") if f in file_sizes
    )

    # -- queries and exact ground truth (streamed, so 10M fits) ----------------------------
    labels_all = np.empty(n, dtype=np.int64)
    for chunk in src.chunks(262_144):
        labels_all[chunk.start : chunk.start + len(chunk)] = [hash(s) for s in chunk.identities]
    if gallery is not None:
        enrolled = np.unique(np.concatenate([np.asarray(c.identities, dtype=np.int64) for c in src.chunks(262_144)]))
        q = gallery.mated_queries(args.queries, enrolled, seed=7)
        queries, q_labels = q.embeddings, q.identities
    else:
        rng = np.random.default_rng(7)
        pick = np.sort(rng.choice(n, args.queries, replace=False))
        queries, q_labels = exact_rows(src, pick), None
    t0 = time.perf_counter()
    acc = ExactAccumulator(np.full(len(queries), -1), queries, 11 if gallery is None else 10)
    faiss.omp_set_num_threads(args.build_threads)
    for chunk in src.chunks(262_144):
        x = chunk.embeddings / np.linalg.norm(chunk.embeddings, axis=1, keepdims=True)
        acc.add(np.ascontiguousarray(x, dtype=np.float32), np.arange(chunk.start, chunk.start + len(x)))
    gt = acc.result()
    faiss.omp_set_num_threads(1)
    results["exact_gt_s"] = round(time.perf_counter() - t0, 1)
    # build vector ids are row numbers here (every input row is accepted): check it
    assert len(vids) == n and vids[-1] == n - 1, "benchmark expects every input row to be indexed"
    gt_ids, gt_scores = gt.ids, gt.scores
    if gallery is None:  # leave-one-out on real data: drop the query itself
        keep = gt_ids != pick[:, None]
        gt_ids = np.array([r[k][:10] for r, k in zip(gt_ids, keep, strict=True)])
        gt_scores = np.array([r[k][:10] for r, k in zip(gt_scores, keep, strict=True)])

    # -- approximate search quality --------------------------------------------------------
    kq = 10 if gallery is not None else 11
    s, found = index.search(queries, kq)
    if gallery is None:
        keep = found != pick[:, None]
        found = np.array([r[k][:10] for r, k in zip(found, keep, strict=True)])
        s = np.array([r[k][:10] for r, k in zip(s, keep, strict=True)])
    r1 = float(np.mean((found[:, 0] == gt_ids[:, 0]) | (s[:, 0] >= gt_scores[:, 0] - 1e-5)))
    r10 = float(np.mean([len(set(found[i]) & set(gt_ids[i])) / 10 for i in range(len(found))]))
    ident = float(np.mean(labels_all[found[:, 0]] == labels_all[gt_ids[:, 0]]))
    quality = {"recall_at_1": r1, "recall_at_10": r10, "identity_agreement": ident}
    if q_labels is not None:
        true_lab = np.array([hash(str(v)) for v in q_labels])
        quality["exact_top1_correct_identity"] = float(np.mean(labels_all[gt_ids[:, 0]] == true_lab))
        quality["ann_top1_correct_identity"] = float(np.mean(labels_all[found[:, 0]] == true_lab))
    results["quality"] = quality
    print("quality", quality, flush=True)

    # -- latency, one thread: interleaved rounds, best round's median (the cores are shared) ---
    lat: dict[str, float] = {}
    load = [os.getloadavg()[0]]
    flat = xb = None
    if not args.no_flat_memory:
        flat = faiss.IndexFlatIP(d)
        for chunk in src.chunks(262_144):
            x = chunk.embeddings / np.linalg.norm(chunk.embeddings, axis=1, keepdims=True)
            flat.add(np.ascontiguousarray(x, dtype=np.float32))
        xb = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)  # a view: no second copy at 10M

    def numpy_scan(x: np.ndarray) -> np.ndarray:  # face_recognition.face_distance + argsort, float32
        dist = np.concatenate([np.linalg.norm(xb[s : s + 1_000_000] - x[0], axis=1) for s in range(0, n, 1_000_000)])
        return np.argsort(dist)[:10]

    def best(key: str, value: float) -> None:
        lat[key] = min(lat.get(key, float("inf")), value)

    for _ in range(args.rounds):
        best("ann_single_ms", time_single(lambda x: index.search(x, 10), queries, 300))
        best("ann_batch64_ms_per_query", time_batch(lambda x: index.search(x, 10), queries, 10))
        if flat is not None:
            best("flat_single_ms", time_single(lambda x: flat.search(x, 10), queries, args.flat_queries))
            best("flat_batch64_ms_per_query", time_batch(lambda x: flat.search(x, 10), queries, 2))
            best("numpy_single_ms", time_single(numpy_scan, queries, args.numpy_queries))
        load.append(os.getloadavg()[0])
    results["load_average_1min"] = [round(v, 2) for v in load]
    if flat is not None:
        lat["numpy_batch64_ms_per_query"] = lat["numpy_single_ms"]  # numpy users loop over queries
        known64 = xb.astype(np.float64) if n <= 2_000_000 else None
        del xb, flat  # xb was a view into flat's storage
        # what face_recognition really holds: float64 encodings, often a list; one round (slowest)
        if known64 is not None:

            def face_distance(known: np.ndarray | list, x: np.ndarray) -> np.ndarray:
                return np.argsort(np.linalg.norm(known - x[0].astype(np.float64), axis=1))[:10]

            lat["numpy64_single_ms"] = time_single(lambda x: face_distance(known64, x), queries, args.numpy_queries)
            known_list = list(known64)
            del known64
            lat["numpy_list_single_ms"] = time_single(lambda x: face_distance(known_list, x), queries, 3)
            del known_list
    results["latency"] = lat
    results["memory"] = {
        "rss_after_load": rss_loaded,
        "searchable_bytes": searchable,
        "bytes_per_face": searchable / n,
        "files": file_sizes,
        "flat_float32_bytes": n * d * 4,
    }
    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "faiss": faiss.__version__,
    }
    print(json.dumps({k: results[k] for k in ("quality", "latency", "memory")}, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results["n"] = n
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    args.out.write_text(render(results, n))
    return 0


def exact_rows(src: EmbeddingFile, rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), src.d), dtype=np.float32)
    for chunk in src.chunks(262_144):
        sel = (rows >= chunk.start) & (rows < chunk.start + len(chunk))
        x = chunk.embeddings[rows[sel] - chunk.start]
        out[sel] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def render(r: dict, n: int) -> str:
    m, q, lat, mem = r["manifest"], r["quality"], r["latency"], r["memory"]
    b = m["build"]
    flat = lat.get("flat_single_ms")
    npy = lat.get("numpy_single_ms")
    ann = lat["ann_single_ms"]
    lines = [
        f"# Index benchmark: {n:,} faces",
        "",
        f"Command: `{' '.join(['nice -n 10 .venv/bin/python bench/index_bench.py', *_argv(r['args'])])}`",
        f"Machine: {r['machine']['cores']} cores ({r['machine']['cpu']}), shared with other jobs; FAISS "
        f"{r['machine']['faiss']}. Latency is one thread, median over single queries; batch is ms per query "
        f"in batches of 64; best of {r['args']['rounds']} interleaved rounds (1-min load average during the "
        f"rounds: {r.get('load_average_1min')}).",
        "",
        f"Index: `{m['factory']}`"
        + (f" + {m['refine']} re-ranking store" if m["refine"] else "")
        + (
            " + exact re-scoring of the best candidates from exact.npy on disk (pread, not resident)"
            if m.get("exact_on_disk")
            else ""
        )
        + f", nlist {m['nlist']}, tuned search {json.dumps(m['search'])}",
        f"Build-time tuning on {m['recall']['queries']} held-out gallery faces: recall@1 "
        f"{m['recall']['recall_at_1']}, identity agreement {m['recall']['identity_agreement']} (targets "
        f"{m['recall']['target_recall_at_1']} / {m['recall']['target_identity_agreement']}).",
        "",
        "| search | bytes/face | recall@1 | recall@10 | top-1 identity = exact | 1 query (ms) "
        "| batch 64 (ms/query) | speed vs flat | speed vs numpy |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| facesearch index | {mem['bytes_per_face']:.0f} | {q['recall_at_1']:.4f} | "
        f"{q['recall_at_10']:.4f} | "
        f"{q['identity_agreement']:.4f} | {ann:.3f} | {lat['ann_batch64_ms_per_query']:.3f} | "
        + (f"{flat / ann:.1f}x" if flat else "-")
        + " | "
        + (f"{npy / ann:.0f}x" if npy else "-")
        + " |",
    ]
    if flat:
        lines.append(
            f"| exact IndexFlatIP | {mem['flat_float32_bytes'] / n:.0f} | 1 | 1 | 1 | {flat:.2f} | "
            f"{lat['flat_batch64_ms_per_query']:.3f} | 1x | {npy / flat:.0f}x |"
        )
    if npy:
        lines.append(
            f"| numpy scan, float32 array | {mem['flat_float32_bytes'] / n:.0f} | 1 | 1 | 1 | {npy:.1f} | "
            f"{lat['numpy_batch64_ms_per_query']:.1f} | {flat / npy:.3f}x | 1x |"
        )
    for key, label in (
        ("numpy64_single_ms", "face_recognition.face_distance, float64 array"),
        ("numpy_list_single_ms", "face_recognition.face_distance, list of encodings"),
    ):
        if key in lat:
            lines.append(
                f"| {label} | {2 * mem['flat_float32_bytes'] / n:.0f} | 1 | 1 | 1 | {lat[key]:.1f} | "
                f"{lat[key]:.1f} | {flat / lat[key]:.3f}x | {npy / lat[key]:.2f}x; index is "
                f"{lat[key] / ann:.0f}x faster |"
            )
    lines += [
        "",
        (
            f"Quality is on {r['args']['queries']} mated queries (new faces of enrolled people, not in the gallery)."
            if r["args"].get("embeddings") in (None, "None")
            else f"Quality is on {r['args']['queries']} held-out gallery faces (leave-one-out: each searched "
            "with itself excluded from exact and approximate results)."
        )
        + (
            f" Top-1 is the right person for {q['exact_top1_correct_identity']:.4f} of them with exact "
            "search and "
            f"{q['ann_top1_correct_identity']:.4f} with the index."
            if "exact_top1_correct_identity" in q
            else ""
        ),
        "",
        "## Build",
        "",
        *(["(Search re-measured on the same published build.)", ""] if r.get("reused_build") else []),
        f"Wall {r['build_wall_s']} s, CPU {b.get('cpu_s', '?')} s (data generation {r['data_s']} s not "
        "included); peak RSS "
        f"{format_size(b['peak_rss'])} with --memory-budget {r['args']['memory_budget']}.",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    for k in ("ingest_s", "train_s", "add_s", "tune_s", "write_s", "total_s"):
        if k in b:
            lines.append(f"| {k.removesuffix('_s')} | {b[k]} |")
    lines += [
        "",
        f"Memory: searchable files {format_size(mem['searchable_bytes'])} "
        f"({mem['bytes_per_face']:.0f} B/face; float32 flat would be "
        f"{format_size(mem['flat_float32_bytes'])}); "
        f"RSS grew {format_size(mem['rss_after_load'])} on load. Artifact files: "
        + ", ".join(f"{k} {format_size(v)}" for k, v in sorted(mem["files"].items()))
        + ".",
        "",
        "Tuning sweep (held-out gallery faces, build time):",
        "",
        "| nprobe | quantizer ef | k_factor | recall@1 | recall@10 | identity |",
        "|---|---|---|---|---|---|",
    ]
    for s in b.get("sweep", []):
        lines.append(
            f"| {s['nprobe']} | {s['quantizer_ef']} | {s['refine_k_factor']} | {s['recall_at_1']} | "
            f"{s['recall_at_10']} | {s['identity_agreement']} |"
        )
    return "\n".join(lines) + "\n"


def _argv(args: dict) -> list[str]:
    out = []
    keys = ("n", "memory_budget", "index_options", "out")
    if args.get("embeddings") not in (None, "None"):
        keys = ("embeddings", "queries", "memory_budget", "index_options", "out")
    for k in keys:
        v = args.get(k)
        if v and v != "None":
            out += [f"--{k.replace('_', '-')}", v]
    return out


if __name__ == "__main__":
    sys.exit(main())
