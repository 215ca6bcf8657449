"""Server benchmark: Identify latency and throughput over gRPC with a 1M-face gallery, against
face_recognition doing the same work per image (CNN and HOG detectors + a numpy scan over the
same gallery), in the same run.

Gallery: a published index of 1,000,000 seeded synthetic face embeddings (``facesearch.evaluation.synthetic``,
stamped with the bundle's contract) plus real lfw-dev people enrolled through the server's
Enroll call (live delta). Queries: other photos of the enrolled people (mated) and photos of
people not enrolled (strangers), LFW-size (250x250) JPEGs. Clients are separate threads with
their own channels; the server is its own process (its RSS is read from /proc). The per-stage
breakdown comes from the server's own Prometheus histograms over the single-client run.

    # once: the 1M-face index (about 4 minutes on 2 cores)
    .venv/bin/python bench/server_bench.py --make-index
    # the benchmark
    .venv/bin/python bench/server_bench.py --out bench/results/server_1m.md
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.common import data_dir, machine, table  # noqa: E402
from facesearch.client.service_client import FaceSearchClient  # noqa: E402

OUT = REPO / "bench" / "out"
INDEX = OUT / "server-index-1m"
EMBEDDINGS = OUT / "server-synthetic-1m.npz"


# -- setup ---------------------------------------------------------------------------------------
def bundle_path(explicit: str | None) -> Path:
    path = Path(explicit or os.environ.get("FACESEARCH_BUNDLE") or OUT / "bundle")
    if not (path / "manifest.json").is_file():
        print(f"exporting the model bundle to {path} ...", flush=True)
        subprocess.run([sys.executable, "-m", "export", "dlib", "--out", str(path)], cwd=REPO, check=True)
    return path


def make_index(bundle: Path, n: int) -> None:
    from facesearch.bundle.manifest import ModelBundle
    from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path

    contract = ModelBundle.load(bundle, verify=False).contract_id
    if EMBEDDINGS.is_file() and str(np.load(EMBEDDINGS)["contract_id"]) != contract:
        EMBEDDINGS.unlink()  # made for another model: restamp (the embeddings are synthetic, seeded)
    if not EMBEDDINGS.is_file():
        g = SyntheticGallery(FaceEmbeddingModel.load(default_model_path()), n, 10.0, seed=1).materialize()
        np.savez(
            EMBEDDINGS,
            embeddings=g.embeddings,
            identities=np.char.add("syn-", g.identities.astype(str)),
            contract_id=np.asarray(contract),
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "indexer",
            "build",
            "--embeddings",
            str(EMBEDDINGS),
            "--out",
            str(INDEX),
            "--bundle",
            str(bundle),
            "--memory-budget",
            "6G",
        ],
        cwd=REPO,
        check=True,
    )


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int

    def rss(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the server process, bytes."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        cur = int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) * 1024  # type: ignore[union-attr]
        peak = int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) * 1024  # type: ignore[union-attr]
        return cur, peak

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def start_server(bundle: Path, live: Path, env: dict[str, str]) -> Server:
    shutil.rmtree(live, ignore_errors=True)
    full = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FACESEARCH_LIVE_DIR": str(live),
        "FACESEARCH_METRICS_LISTEN": "127.0.0.1:0",
        "FACESEARCH_ACCESS_LOG": "off",
        **env,
    }
    log = (OUT / "server-bench.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--bundle", str(bundle), "--index", str(INDEX), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=full,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("facesearch-server listening"):
        raise SystemExit(f"server failed to start: {line!r}; see {OUT / 'server-bench.log'}")
    words = line.split()
    return Server(proc, int(words[4]), int(words[6]))


def lfw_people(min_photos: int) -> list[tuple[str, list[Path]]]:
    root = data_dir() / "lfw-dev" / "images"
    people = [(p.name, sorted(p.glob("*.jpg"))) for p in sorted(root.iterdir()) if p.is_dir()]
    return [(n, ps) for n, ps in people if len(ps) >= min_photos]


# -- measurement ---------------------------------------------------------------------------------
@dataclass
class Run:
    concurrency: int
    latencies: list[float]
    wall: float
    mated_top1: int  # enrolled person's photo: the right identity ranked first
    mated: int
    strangers_unknown: int  # not-enrolled person's photo: no match at the threshold
    strangers: int
    server_cpu: float = 0.0  # server CPU seconds during the run

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall


def load(target: str, queries: list[tuple[bytes, str | None]], concurrency: int, requests: int) -> Run:
    lat: list[float] = []
    tally = {"mated_top1": 0, "mated": 0, "strangers_unknown": 0, "strangers": 0}
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker(offset: int) -> None:
        with FaceSearchClient(target, timeout=60) as c:
            c.identify(queries[offset % len(queries)][0])  # warm the channel
            barrier.wait()
            for i in counter:
                data, truth = queries[i % len(queries)]
                t0 = time.perf_counter()
                r = c.identify(data, largest_only=True)
                dt = time.perf_counter() - t0
                face = r.faces[0] if r.faces else None
                top = face.candidates[0].identity_id if face and face.candidates else None
                with lock:
                    lat.append(dt)
                    if truth is None:
                        tally["strangers"] += 1
                        tally["strangers_unknown"] += int(face is None or face.match is None)
                    else:
                        tally["mated"] += 1
                        tally["mated_top1"] += int(top == truth)

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return Run(concurrency, lat, time.perf_counter() - t0, **tally)


def stage_means(before: str, after: str) -> dict[str, float]:
    """Mean ms per call of each pipeline stage between two /metrics scrapes."""

    def parse(text: str) -> dict[tuple[str, str], float]:
        out = {}
        for m in re.finditer(r'facesearch_stage_seconds_(sum|count)\{stage="(\w+)"\} ([0-9.e+-]+)', text):
            out[(m.group(2), m.group(1))] = float(m.group(3))
        return out

    a, b = parse(before), parse(after)
    stages = sorted({s for s, _ in b})
    out = {}
    for s in stages:
        n = b.get((s, "count"), 0) - a.get((s, "count"), 0)
        if n > 0:
            out[s] = (b[(s, "sum")] - a.get((s, "sum"), 0)) / n * 1e3
    return out


def baseline(queries: list[tuple[Path, str | None]], gallery: np.ndarray, model: str, n: int) -> dict[str, float]:
    """face_recognition per image: decode, detect (upsample 1, its default), encode, numpy scan."""
    import face_recognition

    times: dict[str, list[float]] = {"decode": [], "detect": [], "embed": [], "search": [], "total": []}
    face_recognition.face_locations(face_recognition.load_image_file(str(queries[0][0])), 1, model)
    for path, _ in queries[:n]:
        t0 = time.perf_counter()
        image = face_recognition.load_image_file(str(path))
        t1 = time.perf_counter()
        boxes = face_recognition.face_locations(image, 1, model)
        t2 = time.perf_counter()
        encodings = face_recognition.face_encodings(image, boxes[:1])
        t3 = time.perf_counter()
        for e in encodings:
            d = face_recognition.face_distance(gallery, e)
            int(np.argmin(d))
        t4 = time.perf_counter()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
            times[k].append(v)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


# -- main ----------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--make-index", action="store_true", help="build the 1M-face index and exit")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, default=150, help="LFW people to enroll (3 photos each)")
    parser.add_argument("--requests", type=int, default=120, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--min-face", default="40,80", help="FACESEARCH_MIN_FACE values to run")
    parser.add_argument("--baseline-images", type=int, default=6, help="0 skips the face_recognition baseline")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra FACESEARCH_* setting for the server (repeatable)",
    )
    parser.add_argument(
        "--min-similarity", type=float, default=None, help="decision threshold (default: the bundle's calibrated one)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "server_1m.md")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    args.load_before = f"{os.getloadavg()[0]:.2f}"
    bundle = bundle_path(args.bundle)
    if args.make_index:
        make_index(bundle, args.n)
        return 0
    if not (INDEX / "CURRENT").is_file():
        raise SystemExit(f"no index at {INDEX}: run `bench/server_bench.py --make-index` first")

    people = lfw_people(4)
    enrolled = people[: args.people]
    strangers = [p for p in lfw_people(1) if p[0] not in {n for n, _ in enrolled}][:40]
    queries = [(p.read_bytes(), name) for name, ps in enrolled for p in ps[3:5]]
    queries += [(ps[0].read_bytes(), None) for _, ps in strangers]
    queries = [queries[i] for i in np.random.default_rng(0).permutation(len(queries))]
    query_paths = [(p, name) for name, ps in enrolled for p in ps[3:4]]
    levels = [int(c) for c in args.concurrency.split(",")]
    sections = []
    gallery_faces = 0
    for min_face in [int(m) for m in args.min_face.split(",")]:
        env = dict(e.split("=", 1) for e in args.env)
        if args.min_similarity is not None:
            env["FACESEARCH_MIN_SIMILARITY"] = str(args.min_similarity)
        server = start_server(bundle, OUT / "server-bench-live", {"FACESEARCH_MIN_FACE": str(min_face), **env})
        try:
            rss_loaded = server.rss()
            target = f"127.0.0.1:{server.port}"
            t0 = time.perf_counter()
            with FaceSearchClient(target, timeout=120) as c:
                for name, ps in enrolled:
                    c.enroll(name, ps[:3], name=name.replace("_", " "), use_largest_face=True)
                stats = c.stats()
            enroll_s = time.perf_counter() - t0
            gallery_faces = int(stats["faces"])
            rss_enrolled = server.rss()
            runs = []
            stages: dict[str, float] = {}
            for level in levels:
                before = server.metrics()
                cpu0 = server.cpu_seconds()
                runs.append(load(target, queries, level, args.requests if level > 1 else args.requests // 2))
                runs[-1].server_cpu = server.cpu_seconds() - cpu0
                if level == 1:
                    stages = stage_means(before, server.metrics())
                print(
                    f"min_face {min_face} c={level}: p50 {runs[-1].pct(50):.1f} ms p99 {runs[-1].pct(99):.1f} ms "
                    f"{runs[-1].throughput:.2f} req/s",
                    flush=True,
                )
            rss_after = server.rss()
            batch = re.search(
                r"facesearch_embed_batch_size_sum ([0-9.e+]+)\s+.*?facesearch_embed_batch_size_count"
                r" ([0-9.e+]+)",
                server.metrics().replace("\n", " "),
            )
        finally:
            server.stop()
        sections.append((min_face, stats, enroll_s, rss_loaded, rss_enrolled, rss_after, runs, stages, batch))

    if args.baseline_images <= 0:
        return 0
    print("baseline: face_recognition ...", flush=True)
    with np.load(EMBEDDINGS) as data:
        gallery = np.asarray(data["embeddings"], dtype=np.float64)
    gallery = (
        np.concatenate([gallery, gallery[: gallery_faces - len(gallery)]]) if gallery_faces > len(gallery) else gallery
    )
    base = {m: baseline(query_paths, gallery, m, args.baseline_images) for m in ("hog", "cnn")}
    del gallery
    args.out.write_text(report(args, sections, base, len(queries)))
    print(f"wrote {args.out}")
    return 0


def report(args: argparse.Namespace, sections: list, base: dict[str, dict[str, float]], n_queries: int) -> str:
    mb = 1 << 20
    lines = [
        "# Server benchmark: Identify over gRPC with a 1M-face gallery",
        "",
        f"Command: `.venv/bin/python bench/server_bench.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}, shared with other jobs (load average {args.load_before} before the run, "
        f"{os.getloadavg()[0]:.2f} after). Server: its own process, FACESEARCH_WORKERS=cores, "
        "onnxruntime 1 thread per inference, FAISS 1 thread per search; clients: threads with their own channels.",
        "",
        f"Gallery: {args.n:,} synthetic face embeddings in a published IVF index + {args.people} lfw-dev people "
        f"enrolled live (3 photos each, Enroll RPC). Queries: {n_queries} LFW photos (250x250 JPEG, sent as bytes): "
        "other photos of enrolled people and photos of 40 people not enrolled. Largest face, top-5, threshold "
        f"{sections[0][1]['default_min_similarity']:.3f} ({sections[0][1]['threshold_note']}).",
        "",
    ]
    for min_face, stats, enroll_s, rss_loaded, rss_enrolled, rss_after, runs, stages, batch in sections:
        single = runs[0]
        lines += [
            f"## FACESEARCH_MIN_FACE={min_face} (detector upsampling {'2x' if min_face < 80 else 'none'})",
            "",
            f"Index {stats['index_version']} `{stats['index_factory']}`: {stats['index_ntotal']:,} faces + "
            f"{stats['live_faces']} live = {stats['faces']:,} faces, {stats['identities']:,} identities. "
            f"Enrolling {args.people} people took {enroll_s:.1f} s.",
            f"Server RSS: {rss_loaded[0] / mb:.0f} MB loaded, {rss_enrolled[0] / mb:.0f} MB after enrolling, "
            f"{rss_after[0] / mb:.0f} MB after the load runs (peak {rss_after[1] / mb:.0f} MB).",
            "",
        ]
        rows = []
        for r in runs:
            rows.append(
                [
                    str(r.concurrency),
                    f"{r.pct(50):.1f}",
                    f"{r.pct(99):.1f}",
                    f"{r.throughput:.2f}",
                    f"{r.throughput / single.throughput:.2f}x",
                    f"{r.server_cpu / r.wall:.2f}",
                    f"{r.server_cpu / len(r.latencies) * 1e3:.1f}",
                    f"{r.mated_top1}/{r.mated}",
                    f"{r.strangers_unknown}/{r.strangers}",
                ]
            )
        lines += [
            table(
                rows,
                [
                    "clients",
                    "p50 ms",
                    "p99 ms",
                    "req/s",
                    "vs 1 client",
                    "server cores used",
                    "server CPU ms/req",
                    "enrolled: rank-1 right",
                    "strangers: unknown",
                ],
            ),
            "",
        ]
        if batch:
            lines.append(
                f"Mean embedding batch over all runs: {float(batch.group(1)) / float(batch.group(2)):.2f} faces."
            )
        lines += ["", "Per-stage mean, single client (server histograms):", ""]
        lines += [table([[s, f"{v:.1f}"] for s, v in stages.items()], ["stage", "ms"]), ""]
        fr = [
            [
                m,
                *(f"{base[m][k]:.1f}" for k in ("decode", "detect", "embed", "search", "total")),
                f"{base[m]['total'] / single.pct(50):.1f}x",
            ]
            for m in ("hog", "cnn")
        ]
        lines += [
            f"face_recognition doing the same per image (median of {args.baseline_images} images, one client, "
            "numpy scan over the same number of faces), and how much slower it is than the server's p50:",
            "",
            table(fr, ["detector", "decode", "detect", "embed", "numpy scan", "total ms", "vs server p50"]),
            "",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
