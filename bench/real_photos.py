"""Realistic-photo benchmark: phone photos, video frames, group photos and selfies, same run.

Photos as people send them go through a real server, ``facesearch embed`` and dlib's own
pipelines in one run, so the ratios hold on a busy machine.

Photos (``bench/photo_compose.py``): lfw-dev faces planted at known boxes in 12 MP and 8 MP
phone photos, 1080p frames with many small faces, group photos, portrait selfies, plus the LFW
originals. About half the planted faces are of people enrolled first (other photos of them); the
rest are strangers.

- server: a real ``facesearch-server`` (``python -m server``, by ``server_fixtures.start_server``)
  on 127.0.0.1, with its own FACESEARCH_HOME and empty index root, the server's defaults
  (FACESEARCH_MIN_FACE, one worker per core; ``--server-env`` adds settings). The enrolled people go
  in through Enroll (largest face of 2 photos each). Then per kind and per ``--clients`` level,
  Identify (every face, top 5) of the kind's photos, each client a thread with its own channel
  (at least one request per client); each reply or error is counted, errors by status/reason.
  The server's RSS is sampled from /proc while each kind runs; a server over ``--max-server-rss``
  is killed (and the kill recorded) and a fresh one started for the next kind.
- embed: ``facesearch embed --all-faces --workers 1`` as its own process on the kind's photos: wall
  time per photo (less the start-up of a one-photo run) and the process's peak RSS (wait4).
- dlib, as face_recognition users run it (it is what ``face_locations(img, 1, model)`` and
  ``face_encodings`` call, with the models of ``face_recognition_models``): HOG or CNN detector at
  upsample 1, 5-point landmarks, one descriptor per face, on the photo as it is (``hog``, ``cnn``)
  or downscaled first to a max side (``hog-1600``). The CNN detector takes minutes on large
  photos on CPU: photos whose detector input (after upsampling) is over ``--cnn-max-pixels`` are
  skipped and reported as skipped.

Scores: recall of planted faces (a found box with IoU >= 0.3) by face height in px and as a share
of the photo's short side; rank-1 of planted enrolled faces (the server's top candidate, or
dlib's nearest enrolled descriptor; a face not found is a miss) and identified at the default
decision (the server's threshold; dlib's distance 0.6).

    nice -n 10 .venv/bin/python bench/real_photos.py     # 10-12 min on 2 busy cores
    .venv/bin/python bench/real_photos.py --types phone12,phone8 --per-type 4 --parts server,embed
    .venv/bin/python bench/real_photos.py --report-from bench/out/real_photos/report.pickle  # render again

Photos, logs and ``report.pickle`` (what was measured, saved after each part) go to
``bench/out/real_photos``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.common import PeakSampler, machine, table  # noqa: E402
from bench.photo_compose import (  # noqa: E402
    PHOTO_KINDS,
    Box,
    ComposedPhoto,
    FaceSource,
    PhotoSet,
    match_boxes,
    write_photo_set,
)
from bench.server_bench import Server, bundle_path, lfw_people, stage_means  # noqa: E402
from facesearch.client.service_client import FaceSearchClient, RpcFailedError  # noqa: E402
from facesearch.errors import FaceSearchError  # noqa: E402
from indexer.sizes import parse_size  # noqa: E402
from tests.integration.server_fixtures import ServerProcess, start_server  # noqa: E402

WORK = REPO / "bench" / "out" / "real_photos"
ENROLLED_PEOPLE = 60
ENROLL_PHOTOS = 2
REQUEST_TIMEOUT_S = 600.0
PX_EDGES = (40, 80, 160, 320)
SHARE_EDGES = (0.05, 0.10, 0.20)
DLIB_TOLERANCE = 0.6  # face_recognition's default distance
MB = 1 << 20


# -- what a method made of a photo, and how it scores ---------------------------------------------
@dataclass(frozen=True, slots=True)
class Detected:
    boxes: tuple[Box, ...] = ()
    top: tuple[str | None, ...] = ()  # rank-1 identity of each box
    matched: tuple[str | None, ...] = ()  # identity matched at the default decision (None: unknown)
    seconds: float = 0.0
    error: str | None = None  # "STATUS/REASON" (server) or the reason (embed); None: answered
    skipped: bool = False


@dataclass
class Tally:
    planted_px: Counter[str] = field(default_factory=Counter)
    found_px: Counter[str] = field(default_factory=Counter)
    planted_share: Counter[str] = field(default_factory=Counter)
    found_share: Counter[str] = field(default_factory=Counter)
    enrolled: int = 0
    rank1: int = 0
    identified: int = 0
    strangers: int = 0
    strangers_matched: int = 0  # a stranger's face matched to an enrolled person at the default decision
    other_boxes: int = 0  # found boxes paired with no planted face
    errors: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    seconds: list[float] = field(default_factory=list)  # answered photos

    def recall(self) -> str:
        return _ratio(sum(self.found_px.values()), sum(self.planted_px.values()))


def bucket(value: float, edges: Sequence[float], unit: str = "") -> str:
    scale = 100 if unit == "%" else 1
    labels = [f"<{edges[0] * scale:g}{unit}"]
    labels += [f"{a * scale:g}-{b * scale:g}{unit}" for a, b in itertools.pairwise(edges)]
    labels.append(f">={edges[-1] * scale:g}{unit}")
    return labels[int(np.searchsorted(edges, value, side="right"))]


def bucket_labels(edges: Sequence[float], unit: str = "") -> list[str]:
    return [bucket(v, edges, unit) for v in [edges[0] / 2, *edges]]


def tally(results: Sequence[tuple[ComposedPhoto, Detected]], enrolled: set[str]) -> Tally:
    t = Tally()
    for photo, det in results:
        if det.skipped:
            t.skipped += 1
            continue
        if det.error is not None:
            t.errors[det.error] += 1
        else:
            t.seconds.append(det.seconds)
        pairs = match_boxes([f.box for f in photo.faces], det.boxes)
        t.other_boxes += len(det.boxes) - sum(j is not None for j in pairs)
        for face, j in zip(photo.faces, pairs, strict=True):
            px, share = bucket(face.height, PX_EDGES), bucket(face.height / photo.short_side, SHARE_EDGES, "%")
            t.planted_px[px] += 1
            t.planted_share[share] += 1
            if j is not None:
                t.found_px[px] += 1
                t.found_share[share] += 1
            if face.identity in enrolled:
                t.enrolled += 1
                t.rank1 += int(j is not None and det.top[j] == face.identity)
                t.identified += int(j is not None and det.matched[j] == face.identity)
            else:
                t.strangers += 1
                t.strangers_matched += int(j is not None and det.matched[j] is not None)
    return t


def _ratio(n: int, d: int) -> str:
    return f"{n}/{d} ({100 * n / d:.0f}%)" if d else "-"


def _ms(seconds: Sequence[float], q: float) -> str:
    return f"{np.percentile(seconds, q) * 1e3:.0f}" if seconds else "-"


# -- the people ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class People:
    enrolled: dict[str, list[Path]]  # identity -> enrollment photos
    pool: list[FaceSource]  # faces to plant: other photos of the enrolled, and strangers


def choose_people(seed: int) -> People:
    everyone = lfw_people(1)
    rng = np.random.default_rng(seed)
    many = [(n, ps) for n, ps in everyone if len(ps) > ENROLL_PHOTOS]
    picked = [many[i] for i in sorted(rng.choice(len(many), ENROLLED_PEOPLE, replace=False))]
    enrolled = {n: ps[:ENROLL_PHOTOS] for n, ps in picked}
    held_out = [FaceSource(n, p) for n, ps in picked for p in ps[ENROLL_PHOTOS:]]
    others = [FaceSource(n, p) for n, ps in everyone if n not in enrolled for p in ps]
    strangers = [others[i] for i in sorted(rng.choice(len(others), len(held_out), replace=False))]
    return People(enrolled, held_out + strangers)


# -- the server ----------------------------------------------------------------------------------
def server_defaults(extra: dict[str, str]) -> dict[str, str]:
    """The server's own defaults where the test helper sets others (min face, workers)."""
    from server.config import ServerConfig

    min_face = next(f.default for f in fields(ServerConfig) if f.name == "min_face")
    cores = len(os.sched_getaffinity(0))
    return {"FACESEARCH_MIN_FACE": str(min_face), "FACESEARCH_WORKERS": str(cores), "FACESEARCH_ACCESS_LOG": "off"} | (
        extra
    )


class BenchServer:
    """The benchmark's server, started when needed; the enrolled people survive restarts (live journal)."""

    def __init__(self, bundle: Path, home: Path, env: dict[str, str], people: People, rss_cap: int) -> None:
        self.bundle, self.home, self.people, self.rss_cap = bundle, home, people, rss_cap
        self.env = {**env, "FACESEARCH_HOME": str(home)}
        self.process: ServerProcess | None = None
        self.killed_at = 0  # RSS at which the guard killed it (0: not killed)
        self.enrolled = ""
        self.baseline_rss = 0  # of the first server, after enrolling
        self.starts = 0

    @property
    def server(self) -> Server:
        assert self.process is not None
        return Server(self.process.proc, self.process.port, self.process.metrics_port)

    def ensure(self) -> Server:
        if self.process is None or self.process.proc.poll() is not None:
            self.killed_at = 0
            self.process = start_server(self.bundle, self.home / "index", WORK / "logs", env=self.env)
            with self.process.client(timeout=REQUEST_TIMEOUT_S) as c:
                if int(c.stats()["identities"]) == 0:
                    self.enroll(c)
            self.starts += 1
            self.baseline_rss = self.baseline_rss or self.server.rss()[0]
        return self.server

    def enroll(self, c: FaceSearchClient) -> None:
        t0 = time.perf_counter()
        rejected: Counter[str] = Counter()
        for identity, photos in self.people.enrolled.items():
            r = c.enroll(identity, photos, name=identity.replace("_", " "), use_largest_face=True)
            rejected.update(image.reject_reason for image in r.images if not image.accepted)
        stats = c.stats()
        self.enrolled = (
            f"{stats['identities']} people enrolled through Enroll ({stats['faces']} faces from "
            f"{ENROLL_PHOTOS * len(self.people.enrolled)} photos, largest face; rejected: "
            f"{dict(rejected) or 'none'}) in {time.perf_counter() - t0:.1f} s; decision: {stats['threshold_note']}"
        )

    def guard(self, rss: int) -> None:
        if rss > self.rss_cap and self.process is not None and self.process.proc.poll() is None:
            self.killed_at = rss
            self.process.proc.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def error_label(err: FaceSearchError) -> str:
    status = err.status.name if isinstance(err, RpcFailedError) else err.code.value
    return f"{status}/{err.reason}"


def identify_all(
    target: str, jobs: Sequence[tuple[ComposedPhoto, bytes]], clients: int, warm: bytes
) -> list[tuple[ComposedPhoto, Detected]]:
    """Identify every job's photo with ``clients`` threads, each on its own channel."""
    work: queue.Queue[tuple[ComposedPhoto, bytes]] = queue.Queue()
    for job in jobs:
        work.put(job)
    out: list[tuple[ComposedPhoto, Detected]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client() -> None:
        with FaceSearchClient(target, timeout=REQUEST_TIMEOUT_S) as c:
            with contextlib.suppress(FaceSearchError):
                c.identify(warm)  # open the channel
            barrier.wait()
            while True:
                try:
                    photo, data = work.get_nowait()
                except queue.Empty:
                    return
                t0 = time.perf_counter()
                try:
                    r = c.identify(data, top_k=5)
                    faces = r.faces
                    det = Detected(
                        boxes=tuple(f.box for f in faces),
                        top=tuple(f.candidates[0].identity_id if f.candidates else None for f in faces),
                        matched=tuple(f.match.identity_id if f.match else None for f in faces),
                        seconds=time.perf_counter() - t0,
                    )
                except FaceSearchError as err:
                    det = Detected(seconds=time.perf_counter() - t0, error=error_label(err))
                with lock:
                    out.append((photo, det))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@dataclass
class ServerKind:
    levels: dict[int, list[tuple[ComposedPhoto, Detected]]] = field(default_factory=dict)
    peak_rss: int = 0  # sampled while the kind ran
    rss_after: int = 0
    hwm_after: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    killed_at: int = 0
    died: str = ""


def run_server_kind(bench: BenchServer, photos: PhotoSet, kind: str, clients: list[int], warm: bytes) -> ServerKind:
    out = ServerKind()
    data = [(p, photos.path(p).read_bytes()) for p in photos.of_kind(kind)]
    server = bench.ensure()
    target = f"127.0.0.1:{server.port}"
    for level in clients:
        jobs = [data[i % len(data)] for i in range(max(len(data), level))]
        before = server.metrics()
        with PeakSampler(lambda: server.rss()[0], on_sample=bench.guard) as sampler:
            out.levels[level] = identify_all(target, jobs, level, warm)
        out.peak_rss = max(out.peak_rss, sampler.peak)
        try:
            stages = stage_means(before, server.metrics())
            out.rss_after, out.hwm_after = server.rss()
        except (OSError, AttributeError):  # gone (killed by the guard, or crashed): /proc and metrics fail
            server.proc.wait(30)
            out.killed_at, out.died = bench.killed_at, f"exited {server.proc.returncode}"
            break
        out.stages = out.stages or stages  # the first level's
    return out


# -- facesearch embed ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EmbedRun:
    wall: float
    peak_rss: int
    exit_code: int
    results: list[tuple[ComposedPhoto, Detected]]


def run_embed(bundle: Path, paths: list[Path], photos: Sequence[ComposedPhoto], start_up: float) -> EmbedRun:
    """``facesearch embed --all-faces --workers 1`` on ``paths`` as its own process."""
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        listing, out = Path(tmp) / "list.txt", Path(tmp) / "embed.npz"
        listing.write_text("".join(f"{p}\n" for p in paths))
        cmd = [sys.executable, "-m", "facesearch", "embed", "--bundle", str(bundle), "--list", str(listing)]
        cmd += ["--out", str(out), "--all-faces", "--workers", "1", "--quiet"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with (WORK / "logs" / "embed.log").open("a") as log:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        per_photo = max(0.0, wall - start_up) / max(1, len(paths))
        if not out.is_file():
            det = Detected(seconds=per_photo, error=f"job exited {code}, no output")
            return EmbedRun(wall, usage.ru_maxrss * 1024, code, [(p, det) for p in photos])
        with np.load(out) as rows:
            index, found, boxes, errors = rows["image_index"], rows["found"], rows["boxes"], rows["errors"]
    results = []
    for i, photo in enumerate(photos):
        mine = index == i
        error = next((str(e).split(":", 1)[0] for e in errors[mine] if str(e)), None)
        kept = tuple(tuple(float(v) for v in b) for b in boxes[mine & found])
        no_id = (None,) * len(kept)
        results.append((photo, Detected(kept, no_id, no_id, per_photo, error)))  # type: ignore[arg-type]
    return EmbedRun(wall, usage.ru_maxrss * 1024, code, results)


# -- dlib as face_recognition users run it -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DlibVariant:
    name: str  # MODEL or MODEL-MAXSIDE: hog, cnn, hog-1600
    model: str
    max_side: int | None

    @classmethod
    def parse(cls, text: str) -> DlibVariant:
        model, _, side = text.partition("-")
        if model not in {"hog", "cnn"} or (side and not side.isdigit()):
            raise SystemExit(f"--dlib: {text!r} is not hog|cnn[-MAXSIDE]")
        return cls(text, model, int(side) if side else None)


class DlibPipeline:
    UPSAMPLE = 1  # face_locations' default

    def __init__(self, enrolled: dict[str, list[Path]], cnn_max_pixels: float) -> None:
        import dlib

        from facesearch.nets.dlib_sources import DLIB_FILES, default_models_dir

        models = default_models_dir()
        self.hog = dlib.get_frontal_face_detector()
        self.cnn = dlib.cnn_face_detection_model_v1(str(models / DLIB_FILES["detector"]))
        self.shapes = dlib.shape_predictor(str(models / DLIB_FILES["landmarks"]))
        self.encoder = dlib.face_recognition_model_v1(str(models / DLIB_FILES["embedder"]))
        self.cnn_max_pixels = cnn_max_pixels
        gallery, labels = [], []
        for identity, photos in enrolled.items():  # face_recognition's way: largest face of each photo
            for path in photos:
                image = self.load(path, None)[0]
                boxes = sorted(self.hog(image, self.UPSAMPLE), key=lambda r: -r.area())
                if boxes:
                    gallery.append(self.encode(image, boxes[:1])[0])
                    labels.append(identity)
        self.gallery, self.labels = np.stack(gallery), labels

    @staticmethod
    def load(path: Path, max_side: int | None) -> tuple[np.ndarray, float]:
        from PIL import Image

        with Image.open(path) as img:
            rgb = img.convert("RGB")
        scale = 1.0
        if max_side and max(rgb.size) > max_side:
            scale = max_side / max(rgb.size)
            rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BILINEAR)
        return np.asarray(rgb), scale

    def encode(self, image: np.ndarray, rects: list) -> list[np.ndarray]:
        return [np.asarray(self.encoder.compute_face_descriptor(image, self.shapes(image, r), 1)) for r in rects]

    def run(self, variant: DlibVariant, photo: ComposedPhoto, path: Path) -> Detected:
        shrink = min(1.0, (variant.max_side or 1e9) / max(photo.width, photo.height))
        work = photo.width * photo.height * shrink**2 * 4**self.UPSAMPLE  # pixels the detector scans first
        if variant.model == "cnn" and work > self.cnn_max_pixels:
            return Detected(skipped=True)
        t0 = time.perf_counter()
        image, scale = self.load(path, variant.max_side)
        if variant.model == "hog":
            rects = list(self.hog(image, self.UPSAMPLE))
        else:
            rects = [d.rect for d in self.cnn(image, self.UPSAMPLE)]
        encodings = self.encode(image, rects)
        seconds = time.perf_counter() - t0
        boxes = tuple(
            (r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale) for r in rects
        )
        top, matched = [], []
        for e in encodings:
            distance = np.linalg.norm(self.gallery - e, axis=1)
            best = int(np.argmin(distance))
            top.append(self.labels[best])
            matched.append(self.labels[best] if distance[best] <= DLIB_TOLERANCE else None)
        return Detected(boxes, tuple(top), tuple(matched), seconds)


# -- main ----------------------------------------------------------------------------------------
def parse_per_type(text: str, kinds: list[str]) -> dict[str, int]:
    """``N`` or ``N,KIND=M,...``: photos of each kind."""
    default, *rest = text.split(",")
    counts = dict.fromkeys(kinds, int(default))
    for item in rest:
        kind, _, n = item.partition("=")
        counts[kind] = int(n)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="model bundle (default: bench/out/bundle, exported if missing)")
    parser.add_argument("--types", default=",".join(PHOTO_KINDS), help="photo kinds, in the order run")
    parser.add_argument("--per-type", default="2,lfw=8,selfie=3", help="photos per kind: N or N,KIND=M,...")
    parser.add_argument("--clients", default="1,4", help="concurrent Identify clients, per level")
    parser.add_argument("--parts", default="server,embed,dlib", help="what to run")
    parser.add_argument("--dlib", default="hog,hog-1600,cnn", help="dlib variants: hog|cnn[-MAXSIDE]")
    parser.add_argument("--cnn-max-pixels", type=float, default=1.0e6, help="skip CNN where detector input is larger")
    parser.add_argument("--max-server-rss", default="8G", help="kill the server above this RSS (the machine's guard)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "real_photos.md")
    parser.add_argument("--report-from", type=Path, default=None, help="render a saved run (report.pickle) again")
    args = parser.parse_args(argv)
    if args.report_from is not None:
        saved: Report = pickle.loads(args.report_from.read_bytes())
        return saved.write(args.out)
    kinds = args.types.split(",")
    unknown = [k for k in kinds if k not in PHOTO_KINDS]
    if unknown:
        raise SystemExit(f"--types: unknown {unknown}; known: {', '.join(PHOTO_KINDS)}")
    parts = set(args.parts.split(","))
    counts = parse_per_type(args.per_type, kinds)
    clients = [int(c) for c in args.clients.split(",")]
    load_before, started = os.getloadavg(), time.perf_counter()
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    bundle = bundle_path(args.bundle)
    people = choose_people(args.seed)
    enrolled = set(people.enrolled)

    t0 = time.perf_counter()
    plan = [(PHOTO_KINDS[k], counts[k]) for k in kinds]
    photos = write_photo_set(WORK / "photos", plan, people.pool, args.seed)
    print(f"composed {len(photos.photos)} photos in {time.perf_counter() - t0:.1f} s", flush=True)
    warm = next(iter(people.enrolled.values()))[0].read_bytes()

    report = Report(args, kinds, photos, enrolled, load_before, bundle, started)
    if "server" in parts:
        env = server_defaults(dict(e.split("=", 1) for e in args.server_env))
        report.server_env = env
        home = Path(tempfile.mkdtemp(prefix="home-", dir=WORK))
        bench = BenchServer(bundle, home, env, people, parse_size(args.max_server_rss))
        try:
            for kind in kinds:
                try:
                    report.server[kind] = run_server_kind(bench, photos, kind, clients, warm)
                except Exception as err:  # one kind's failure must not lose the others' numbers
                    print(f"server {kind}: benchmark error {err!r}", flush=True)
                    report.server[kind] = ServerKind(died=f"benchmark error: {err!r}")
                report.enrolled_note, report.baseline_rss = bench.enrolled, bench.baseline_rss
                report.server_starts = bench.starts
                log_kind("server", kind, report.server[kind].levels.get(1, []), enrolled)
                report.save()
        finally:
            bench.stop()
            shutil.rmtree(home, ignore_errors=True)
    if "embed" in parts:
        report.embed_start_up = run_embed(bundle, [next(iter(people.enrolled.values()))[0]], [], 0.0).wall
        for kind in kinds:
            mine = photos.of_kind(kind)
            report.embed[kind] = run_embed(bundle, [photos.path(p) for p in mine], mine, report.embed_start_up)
            log_kind("embed", kind, report.embed[kind].results, enrolled)
            report.save()
    if "dlib" in parts:
        pipeline = DlibPipeline(people.enrolled, args.cnn_max_pixels)
        for variant in map(DlibVariant.parse, args.dlib.split(",")):
            for kind in kinds:
                results = [(p, pipeline.run(variant, p, photos.path(p))) for p in photos.of_kind(kind)]
                report.dlib[(variant.name, kind)] = results
                log_kind(f"dlib {variant.name}", kind, results, enrolled)
    report.save()
    return report.write(args.out)


def log_kind(what: str, kind: str, results: list[tuple[ComposedPhoto, Detected]], enrolled: set[str]) -> None:
    t = tally(results, enrolled)
    rank1 = _ratio(t.rank1, t.enrolled) if what != "embed" else "-"
    print(
        f"{what:14} {kind:10} recall {t.recall():14} rank-1 {rank1:14} "
        f"p50 {_ms(t.seconds, 50)} ms errors {dict(t.errors)} skipped {t.skipped}",
        flush=True,
    )


# -- the report ----------------------------------------------------------------------------------
def code_version() -> str:
    """The commit the library and server came from, and whether they had uncommitted changes."""
    git = ["git", "-C", str(REPO)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "facesearch", "server"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return f"{REPO} (not a git checkout)"
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty.stdout.strip() else "")


@dataclass
class Report:
    args: argparse.Namespace
    kinds: list[str]
    photos: PhotoSet
    enrolled: set[str]
    load_before: tuple[float, float, float]
    bundle: Path
    started: float  # perf_counter at the start of the run
    command: str = field(default_factory=lambda: " ".join(sys.argv[1:]))
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    minutes: float = 0.0
    server_env: dict[str, str] = field(default_factory=dict)
    enrolled_note: str = ""
    baseline_rss: int = 0
    server_starts: int = 0
    server: dict[str, ServerKind] = field(default_factory=dict)
    embed_start_up: float = 0.0
    embed: dict[str, EmbedRun] = field(default_factory=dict)
    dlib: dict[tuple[str, str], list[tuple[ComposedPhoto, Detected]]] = field(default_factory=dict)

    def save(self, path: Path = WORK / "report.pickle") -> None:
        """Keep what was measured so far: ``--report-from`` renders it again without measuring."""
        self.load_after = os.getloadavg()
        self.minutes = (time.perf_counter() - self.started) / 60
        path.write_bytes(pickle.dumps(self))

    def write(self, out: Path) -> int:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.render())
        print(f"wrote {out}")
        return 0

    def render(self) -> str:
        load_after = self.load_after
        lines = [
            "# Realistic photos: the server, `facesearch embed` and dlib's pipelines, same run",
            "",
            f"Command: `nice -n 10 .venv/bin/python bench/real_photos.py {self.command}`  ",
            f"Machine: {machine()}, shared with other jobs: load average {self.load_before[0]:.2f} before the run, "
            f"{load_after[0]:.2f} after (15 min: {load_after[2]:.2f}); compare ratios, not absolute times. "
            f"The run took {self.minutes:.1f} min.  ",
            f"Code: {code_version()}. "
            f"Bundle: `{self.bundle.relative_to(REPO) if self.bundle.is_relative_to(REPO) else self.bundle}`; "
            f"photos composed by `bench/photo_compose.py` (seed {self.photos.seed}; ground truth in "
            f"`{self.photos.root.relative_to(REPO)}/truth.json`); what runs how: the docstring of "
            "`bench/real_photos.py`.",
            "",
            *self._photos(),
            *self._server(),
            *self._speed(),
            *self._recall(),
            *self._identification(),
        ]
        return "\n".join(lines) + "\n"

    def _photos(self) -> list[str]:
        rows = []
        for kind in self.kinds:
            spec, mine = PHOTO_KINDS[kind], self.photos.of_kind(kind)
            faces = [f for p in mine for f in p.faces]
            heights = [f.height for f in faces] or [0.0]
            rows.append(
                [
                    kind,
                    spec.description,
                    str(len(mine)),
                    str(len(faces)),
                    str(sum(f.identity in self.enrolled for f in faces)),
                    f"{min(heights):.0f}-{max(heights):.0f}",
                    f"{100 * min(heights) / spec.short_side:.1f}-{100 * max(heights) / spec.short_side:.1f}",
                ]
            )
        header = ["kind", "photos of", "photos", "faces", "enrolled faces", "face px", "% of short side"]
        return ["## Photos", "", table(rows, header), ""]

    def _server(self) -> list[str]:
        if not self.server:
            return []
        env = " ".join(f"{k}={v}" for k, v in self.server_env.items())
        lines = [
            "## Server: Identify (every face, top 5)",
            "",
            f"Settings: {env}. {self.enrolled_note}. RSS after enrolling: {self.baseline_rss / MB:.0f} MB. "
            f"Server processes started: {self.server_starts} (a fresh one after a kill, its enrolled people "
            "replayed from the live journal). "
            "Latency over answered requests; a refused request is counted under errors, with its status/reason. "
            "Peak RSS: sampled every 50 ms while the kind ran; RSS after: once the kind's requests were done; "
            "VmHWM: the process's peak so far (kinds run in the order listed).",
            "",
        ]
        rows = []
        for kind, sk in self.server.items():
            for level, results in sk.levels.items():
                t = tally(results, self.enrolled)
                errors = ", ".join(f"{k} x{v}" for k, v in sorted(t.errors.items())) or "none"
                rows.append(
                    [
                        kind,
                        str(level),
                        str(len(results)),
                        str(len(t.seconds)),
                        _ms(t.seconds, 50),
                        _ms(t.seconds, 99),
                        f"{sk.peak_rss / MB:.0f}",
                        f"{sk.rss_after / MB:.0f}" if sk.rss_after else sk.died,
                        f"{sk.hwm_after / MB:.0f}" if sk.hwm_after else "-",
                        errors,
                    ]
                )
            if not sk.levels:
                rows.append([kind, *[""] * 8, sk.died])
            if sk.killed_at:
                killed = (
                    f"server killed at RSS {sk.killed_at / MB:.0f} MB (over --max-server-rss); later levels not run"
                )
                rows.append([kind, *[""] * 8, killed])
        header = ["kind", "clients", "requests", "answered", "p50 ms", "p99 ms", "peak RSS MB", "RSS after MB"]
        header += ["VmHWM MB", "errors"]
        lines += [table(rows, header), ""]
        stages = sorted({s for sk in self.server.values() for s in sk.stages})
        if stages:
            srows = [[k, *(f"{sk.stages.get(s, 0):.0f}" for s in stages)] for k, sk in self.server.items()]
            lines += ["Mean ms per call of each server stage, 1 client (server histograms):", ""]
            lines += [table(srows, ["kind", *stages]), ""]
        return lines

    def _speed(self) -> list[str]:
        variants = sorted({v for v, _ in self.dlib}, key=self.args.dlib.split(",").index)
        baselines = [v for v in variants if v.startswith("hog")]
        rows = []
        for kind in self.kinds:
            sk, run = self.server.get(kind), self.embed.get(kind)
            single = tally(sk.levels.get(1, []), self.enrolled).seconds if sk else []
            server_s = float(np.median(single)) if single else None
            embed_s = run.results[0][1].seconds if run and run.results and not run.results[0][1].error else None
            row = [kind, _ms(single, 50), f"{embed_s * 1e3:.0f}" if embed_s else "-"]
            row.append(f"{run.peak_rss / MB:.0f}" if run else "-")
            medians: dict[str, float | None] = {}
            for v in variants:
                t = tally(self.dlib[(v, kind)], self.enrolled)
                medians[v] = float(np.median(t.seconds)) if t.seconds else None
                row.append(f"{medians[v] * 1e3:.0f}" if medians[v] else ("skipped" if t.skipped else "-"))
            for v in baselines:
                base = medians[v]
                row.append(" / ".join(f"{base / s:.1f}x" if base and s else "-" for s in (server_s, embed_s)))
            rows.append(row)
        header = ["kind", "server p50 ms (1 client)", "embed ms/photo", "embed peak RSS MB"]
        header += [f"dlib {v} ms/photo" for v in variants]
        header += [f"dlib {v} / ours (server, embed)" for v in baselines]
        return [
            "## Time per photo",
            "",
            "`facesearch embed --all-faces --workers 1` (onnxruntime on all cores): ms per photo after its start-up "
            f"({self.embed_start_up:.1f} s, a one-photo run), over the kind's photos; peak RSS of the job's process. "
            "dlib: median over the kind's photos of decode (+ downscale) + detect + a descriptor for every face "
            "found, one thread. The ratios say how many times longer dlib takes than the server's p50 (1 client) "
            f"and than embed. CNN skipped where its input after upsampling is over {self.args.cnn_max_pixels:.3g} "
            "pixels: its time grows with pixels (see its time on the LFW photos, 0.25 MP at upsample 1).",
            "",
            table(rows, header),
            "",
        ]

    def _methods(self, kind: str) -> list[tuple[str, list[tuple[ComposedPhoto, Detected]]]]:
        out = []
        if kind in self.server and 1 in self.server[kind].levels:
            out.append(("server", self.server[kind].levels[1]))
        if kind in self.embed:
            out.append(("embed", self.embed[kind].results))
        out += [(f"dlib {v}", res) for (v, k), res in self.dlib.items() if k == kind]
        return out

    def _recall(self) -> list[str]:
        px, share = bucket_labels(PX_EDGES), bucket_labels(SHARE_EDGES, "%")
        rows = []
        for kind in self.kinds:
            for method, results in self._methods(kind):
                t = tally(results, self.enrolled)
                cells = [_ratio(t.found_px[b], t.planted_px[b]) for b in px]
                cells += [_ratio(t.found_share[b], t.planted_share[b]) for b in share]
                note = f"{t.skipped} skipped" if t.skipped else ""
                rows.append([kind, method, *cells, t.recall(), str(t.other_boxes), note])
        header = ["kind", "method", *(f"{b} px" for b in px), *share, "all", "other boxes", ""]
        return [
            "## Recall of planted faces, by face height",
            "",
            "Found/planted (a box with IoU >= 0.3 with the planted face box), by face height in px and as a share "
            "of the photo's short side. Faces of refused photos count as not found; skipped photos are left out. "
            "Other boxes: found boxes paired with no planted face (faces in the pasted photos' backgrounds, "
            "or false detections). Server: the 1-client run; embed: `--all-faces`.",
            "",
            table(rows, header),
            "",
        ]

    def _identification(self) -> list[str]:
        rows = []
        for kind in self.kinds:
            for method, results in self._methods(kind):
                if method == "embed":
                    continue
                t = tally(results, self.enrolled)
                rank1, identified = _ratio(t.rank1, t.enrolled), _ratio(t.identified, t.enrolled)
                rows.append(
                    [kind, method, str(t.enrolled), rank1, identified, _ratio(t.strangers_matched, t.strangers)]
                )
        return [
            "## Planted enrolled people",
            "",
            "Rank-1: the planted face was found and its first candidate is the right person (server: top of 5 "
            "candidates; dlib: the nearest of the enrolled people's descriptors, made by the HOG pipeline from the "
            "same enrollment photos). Identified: found and matched to the right person at the default decision "
            "(server: its default threshold; dlib: distance <= 0.6, face_recognition's default). Strangers matched: "
            "planted faces of people not enrolled that were found and matched to someone at the default decision.",
            "",
            table(rows, ["kind", "method", "planted enrolled faces", "rank-1", "identified", "strangers matched"]),
            "",
        ]


if __name__ == "__main__":
    sys.exit(main())
