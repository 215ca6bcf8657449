"""Helpers and fixtures for the server's integration tests: real server processes on port 0,
indices built by the real indexer from seeded synthetic embeddings, LFW people, a bundle
calibrated on other LFW people, and reference embeddings computed in-process exactly as the
server enrolls them.

The open-set fixtures need hundreds of people (a calibration on 330, a gallery of 140), far more
photos than the committed fixture set holds: they read those people's embeddings, made from the
lfw-dev photos by ``tests/data/make_fixtures.py`` with the default exported bundle, from
``tests/data/server_embeddings.npz`` (refused when the exported bundle's contract differs).

Import the fixtures into a test module with ``from tests.integration.server_fixtures import *``
(the names are listed in ``__all__``).
"""

from __future__ import annotations

import io
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import FaceSearchError
from facesearch.vision.decode import load_image

REPO = Path(__file__).resolve().parents[2]

__all__ = [
    "ServerProcess",
    "build_index",
    "calibrated_bundle",
    "largest_face_embeddings",
    "lfw_gallery",
    "people",
    "server_bundle",
    "server_embeddings",
    "start_server",
    "synthetic_embeddings",
    "wait_until",
]

SERVER_EMBEDDINGS = REPO / "tests" / "data" / "server_embeddings.npz"
GALLERY_PEOPLE = 140  # above the open-set calibration's 128: decisions on the normalised score


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    log_path: Path
    lines: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> FaceSearchClient:
        return FaceSearchClient(self.target, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (what a crash or the OOM killer does)."""
        self.stop(signal.SIGKILL)


def start_server(
    bundle: Path,
    index_root: Path,
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    timeout: float = 120.0,
) -> ServerProcess:
    """Start ``python -m server`` on 127.0.0.1:0 and wait for its "listening" line."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FACESEARCH_MIN_FACE": "80",  # LFW faces are ~100 px: 4x less detector work than 40
        "FACESEARCH_INDEX_POLL_S": "0.3",
        "FACESEARCH_METRICS_LISTEN": "127.0.0.1:0",
        "FACESEARCH_SHUTDOWN_GRACE_S": "5",
        "FACESEARCH_WORKERS": "2",
        **(env or {}),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{time.time_ns()}.log"
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--bundle",
        str(bundle),
        "--index",
        str(index_root),
        "--listen",
        "127.0.0.1:0",
        *args,
    ]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=full_env, cwd=REPO)
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(remaining, 0.01))
        except queue.Empty:
            proc.kill()
            raise TimeoutError(f"server did not start in {timeout}s:\n{log_path.read_text()[-4000:]}") from None
        if line is None:
            proc.wait(10)
            raise RuntimeError(f"server exited ({proc.returncode}) before listening:\n{log_path.read_text()[-4000:]}")
        if line.startswith("facesearch-server listening on port"):
            words = line.split()
            metrics = words[6]
            return ServerProcess(proc, int(words[4]), int(metrics) if metrics.isdigit() else 0, log_path, [line])


def start_replica(
    bundle: Path,
    index_root: Path,
    log_dir: Path,
    dsn: str,
    name: str,
    *,
    env: dict[str, str] | None = None,
    wait_serving: bool = True,
) -> ServerProcess:
    """A replica on the PostgreSQL store ``dsn`` (issue 14): polls the store every 0.5 s, fenced after 4 s
    out of touch (``env`` overrides either); with ``wait_serving``, returned once it reports SERVING
    (caught up with the store's log)."""
    srv = start_server(
        bundle,
        index_root,
        log_dir,
        env={
            "FACESEARCH_STORE": dsn,
            "FACESEARCH_REPLICA_ID": name,
            "FACESEARCH_STORE_POLL_S": "0.5",
            "FACESEARCH_STORE_FENCE_S": "4",
            **(env or {}),
        },
    )
    if wait_serving:
        with srv.client(timeout=60) as c:
            wait_until(lambda: _health_or_down(c) == "SERVING", timeout=120, what=f"{name} SERVING")
    return srv


def _health_or_down(c: FaceSearchClient) -> str:
    try:
        return c.health()
    except FaceSearchError:
        return "DOWN"


#: A 12 MP phone photo (:func:`phone_photo_jpeg`): its size and where its three faces go.
PHONE_SIZE = (4032, 3024)
PHONE_PLACES = [(250, 400, 1000), (1600, 250, 1000), (2800, 1500, 1000)]  # (x, y, side): LFW faces ~400 px


def phone_photo_jpeg(people: dict[str, list[Path]]) -> bytes:
    """A 12 MP JPEG: the 5th photo of each of the first three people, enlarged, at PHONE_PLACES."""

    canvas = np.full((PHONE_SIZE[1], PHONE_SIZE[0], 3), 118, np.uint8)
    for name, (x, y, s) in zip(list(people)[:3], PHONE_PLACES, strict=True):
        canvas[y : y + s, x : x + s] = cv2.resize(load_image(people[name][4]), (s, s), interpolation=cv2.INTER_CUBIC)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def wait_until(predicate: object, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def synthetic_embeddings(
    n_faces: int, *, seed: int, faces_per_identity: float = 4.0, prefix: str = "syn"
) -> tuple[np.ndarray, list[str]]:
    """Seeded face-like embeddings (``facesearch.evaluation.synthetic``) and identity ids ``{prefix}-{label}``."""
    from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path

    path = default_model_path()
    if not path.is_file():
        pytest.skip(f"face embedding model not found at {path} (committed in tests/data; FACESEARCH_DATA overrides)")
    gallery = SyntheticGallery(FaceEmbeddingModel.load(path), n_faces, faces_per_identity=faces_per_identity, seed=seed)
    chunk = gallery.materialize()
    return chunk.embeddings, [f"{prefix}-{int(i)}" for i in chunk.identities]


def build_index(
    root: Path,
    embeddings: np.ndarray,
    identities: list[str],
    contract_id: str,
    *,
    work: Path,
    names: list[str] | None = None,
    options: dict[str, object] | None = None,
) -> Path:
    """Publish a version of ``embeddings`` under ``root`` with the real indexer; returns its directory."""
    from indexer.build import run
    from indexer.config import BuildConfig, InputSpec
    from indexer.plan import IndexOptions

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"emb-{time.time_ns()}.npz"
    extra = {"names": np.asarray(names)} if names is not None else {}
    np.savez(
        path,
        embeddings=embeddings.astype(np.float32),
        identities=np.asarray(identities),
        contract_id=np.asarray(contract_id),
        **extra,
    )
    result = run(
        BuildConfig(
            out=root,
            input=InputSpec("embeddings", path),
            bundle=None,
            memory_budget=1 << 30,
            index=IndexOptions(**{"queries": 50, **(options or {})}),
            progress=False,
        )
    )
    return result.version_dir


@pytest.fixture(scope="session")
def server_bundle(bundle_dir: Path) -> Path:
    """The exported model bundle the servers load."""
    return bundle_dir


@pytest.fixture(scope="session")
def people(lfw_dir: Path) -> dict[str, list[Path]]:
    """Eight LFW people with at least 6 photos each: name -> sorted photo paths."""
    out: dict[str, list[Path]] = {}
    for folder in sorted((lfw_dir / "images").iterdir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= 6:
            out[folder.name] = photos
        if len(out) == 8:
            break
    if len(out) < 8:
        pytest.skip("LFW dev data has too few people with 6+ photos")
    return out


@dataclass(frozen=True)
class ServerEmbeddings:
    """``tests/data/server_embeddings.npz``: lfw-dev people embedded by the default exported bundle
    (which people and photos: ``tests/data/make_fixtures.py``)."""

    contract_id: str
    gallery: np.ndarray  # the first photo of each gallery person with a face at min_face 80, by name
    gallery_names: list[str]
    calibration: np.ndarray  # up to two photos of each calibration person, every face found
    calibration_labels: np.ndarray  # the person of each calibration row

    @classmethod
    def load(cls, path: Path) -> ServerEmbeddings:
        with np.load(path) as data:
            return cls(
                contract_id=str(data["contract_id"]),
                gallery=data["gallery_embeddings"].astype(np.float32),
                gallery_names=[str(x) for x in data["gallery_names"]],
                calibration=data["calibration_embeddings"].astype(np.float32),
                calibration_labels=data["calibration_labels"],
            )


@pytest.fixture(scope="session")
def server_embeddings(server_bundle: Path, people: dict[str, list[Path]]) -> ServerEmbeddings:
    """The gallery and calibration people's embeddings, made with the bundle the servers load, of
    people disjoint from ``people`` and from each other."""
    from facesearch.bundle.manifest import ModelBundle

    found = ServerEmbeddings.load(SERVER_EMBEDDINGS)
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    if found.contract_id != contract:
        pytest.fail(
            f"{SERVER_EMBEDDINGS} holds embeddings of model contract {found.contract_id}, the exported bundle's "
            f"is {contract}: rerun tests/data/make_fixtures.py"
        )
    gallery, calibration = set(found.gallery_names), {str(x) for x in found.calibration_labels}
    assert not gallery & calibration, "gallery and calibration people must be disjoint"
    assert not (gallery | calibration) & set(people), "the test people must be nobody's gallery or calibration"
    return found


@pytest.fixture(scope="session")
def calibrated_bundle(
    server_bundle: Path, server_embeddings: ServerEmbeddings, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the exported bundle with calibration.json and open_set_calibration.json measured as
    ``facesearch eval calibrate`` measures them (``facesearch.evaluation.calibrate``), on the faces of 330
    lfw-dev people disjoint from ``people`` and from the gallery (the other end of the alphabet, at most 2
    photos each), so the calibration is out of sample and covers galleries up to ~165 identities. The
    faces come embedded (``server_embeddings``): their photos are not in the repository. The command
    itself runs on the fixture photos in ``tests/integration/test_ident_eval_cli.py``."""
    from facesearch.bundle.manifest import CALIBRATION_FILE
    from facesearch.evaluation.calibrate import calibrate, calibrate_open_set
    from facesearch.scoring.open_set_calibration import OPEN_SET_CALIBRATION_FILE

    bundle = tmp_path_factory.mktemp("calibrated") / "dlib"
    shutil.copytree(server_bundle, bundle)
    faces, labels = server_embeddings.calibration, server_embeddings.calibration_labels
    result = calibrate(faces, labels, source=f"{SERVER_EMBEDDINGS.name} ({len(faces)} faces)")
    result.write(bundle / CALIBRATION_FILE)
    calibrate_open_set(faces, labels, source=result.source).write(bundle / OPEN_SET_CALIBRATION_FILE)
    return bundle


def largest_face_embeddings(bundle: Path, photos: list[Path], min_face: int = 80) -> np.ndarray:
    """The embedding of each photo's largest face, as the server enrolls it (``use_largest_face``)."""
    from facesearch.bundle.manifest import ModelBundle
    from facesearch.vision.decode import decode_image
    from facesearch.vision.pipeline import FacePipeline, PipelineConfig

    pipeline = FacePipeline(ModelBundle.load(bundle, verify=False), PipelineConfig(min_face=min_face, threads=1))

    def area(box: tuple[float, float, float, float]) -> float:
        return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])

    out = []
    for photo in photos:
        rgb = decode_image(photo.read_bytes())
        largest = sorted(pipeline.detect(rgb), key=lambda d: -area(d.box))[0]
        _, chips = pipeline.align(rgb, [largest.box])
        out.append(pipeline.embed_chips(chips)[0])
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="session")
def lfw_gallery(server_embeddings: ServerEmbeddings) -> tuple[np.ndarray, list[str]]:
    """Real faces to publish: the first photo of 140 lfw-dev people from the start of the alphabet
    (not in ``people``, not among the calibration people at the other end), embedded by
    ``facesearch.jobs.embed`` at min_face 80: ``(embeddings, names)``."""
    return server_embeddings.gallery[:GALLERY_PEOPLE], server_embeddings.gallery_names[:GALLERY_PEOPLE]
