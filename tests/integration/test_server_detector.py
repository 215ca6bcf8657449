"""The detection cascade chosen by users: ``FACESEARCH_DETECTOR=cascade`` on a real server identifies
enrolled people, also in a 12 MP JPEG that takes the reduced-decode path (where the cascade runs on
the reduced pixels: its boxes, mapped to the photo's, are the ones the server replies with, not the
budget scan's); a bad setting, and the cascade with a bundle that has no proposal model, are refused
at start; ``facesearch embed --detector cascade`` and ``--embed-options detector=cascade`` choose it."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.cli.main import main as facesearch_main
from facesearch.errors import ExitCode, InvalidInputError
from facesearch.vision.decode import decode_image, load_image, read_header
from facesearch.vision.detector import Detection
from facesearch.vision.image_limits import DecodeLimits
from facesearch.vision.pipeline import DetectorMode, FacePipeline, PipelineConfig, scan_copy
from indexer.main import _embed_options
from server.engine import REDUCED_DECODE_SCALE
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import PHONE_PLACES, PHONE_SIZE, ServerProcess, phone_photo_jpeg, start_server

pytestmark = pytest.mark.slow

MIN_FACE, BUDGET, MAX_BUDGET, MAX_IMAGE = 80, 1_200_000, 2_500_000, 13_000_000
SERVER_ENV = {
    "FACESEARCH_DETECTOR": "cascade",
    "FACESEARCH_MIN_FACE": str(MIN_FACE),
    "FACESEARCH_DETECT_PIXELS": str(BUDGET),
    "FACESEARCH_MAX_DETECT_PIXELS": str(MAX_BUDGET),
    "FACESEARCH_MAX_IMAGE_PIXELS": str(MAX_IMAGE),
    "FACESEARCH_MIN_SIMILARITY": "0.91",
}


@pytest.fixture(scope="module")
def server(server_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("cascade-server")
    srv = start_server(server_bundle, root / "index", root / "logs", env=SERVER_ENV)
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def phone_photo(people: dict[str, list[Path]]) -> bytes:
    return phone_photo_jpeg(people)


def _reduced_detections(bundle: Path, data: bytes, mode: DetectorMode) -> list[Detection]:
    """What the server's reduced-decode path should find, computed here with the library's own steps."""
    config = PipelineConfig(
        min_face=MIN_FACE, threads=1, detect_pixels=BUDGET, max_detect_pixels=MAX_BUDGET, detector_mode=mode
    )
    pipeline = FacePipeline(ModelBundle.load(bundle), config)
    limits = DecodeLimits(max_pixels=MAX_IMAGE)
    header = read_header(data, limits)
    plan = pipeline.plan(header.width, header.height)
    assert header.reducible and not plan.exact and plan.scale <= REDUCED_DECODE_SCALE  # the reduced path
    scan = scan_copy(decode_image(data, limits, reduce_to=(plan.scan_width, plan.scan_height)), plan)
    if mode is DetectorMode.CASCADE:
        sx, sy = plan.width / plan.scan_width, plan.height / plan.scan_height
        found = pipeline.detect_cascade(scan, min(float(MIN_FACE), plan.min_face) / max(sx, sy))
        assert found, "the cascade should confirm the phone photo's faces"
        return [Detection((d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy), d.score) for d in found]
    return pipeline.detect_scan(scan, plan)


def _box_gap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_a_cascade_server_identifies_enrolled_people_in_small_and_large_photos(
    server: ServerProcess, server_bundle: Path, people: dict[str, list[Path]], phone_photo: bytes
) -> None:
    assert "detector: cascade" in server.log()
    names = list(people)[:3]
    with server.client(timeout=120) as client:
        for name in names[:2]:
            assert client.enroll(name, people[name][:2], use_largest_face=True).face_ids
        small = client.identify(people[names[0]][2])
        assert small.faces and small.faces[0].match is not None
        assert small.faces[0].match.identity_id == names[0]
        result = client.identify(phone_photo)
    assert (result.width, result.height) == PHONE_SIZE and len(result.faces) == 3
    for name, (x, y, s) in zip(names, PHONE_PLACES, strict=True):
        face = min(result.faces, key=lambda f: abs((f.box[0] + f.box[2]) / 2 - x - s / 2) + abs(f.box[1] - y - s / 4))
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        assert abs(cx - x - s / 2) < s / 5 and abs(cy - y - s / 2) < s / 5  # boxes in the photo's own pixels
        assert (face.match.identity_id if face.match else None) == (name if name in names[:2] else None)
    # the server's boxes are the cascade's on the reduced decode, not the budget scan's
    cascade = _reduced_detections(server_bundle, phone_photo, DetectorMode.CASCADE)
    budget = _reduced_detections(server_bundle, phone_photo, DetectorMode.BUDGET)
    for face in result.faces:
        assert min(_box_gap(face.box, d.box) for d in cascade) < 1.0, (face.box, cascade)
    assert max(min(_box_gap(d.box, b.box) for b in budget) for d in cascade) > 2.0, "cascade and budget agree"


def test_a_bad_detector_setting_is_refused_at_start(server_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as err:
        start_server(server_bundle, tmp_path / "index", tmp_path / "logs", env={"FACESEARCH_DETECTOR": "fast"})
    assert "FACESEARCH_DETECTOR='fast': expected one of budget, cascade" in str(err.value)


def test_the_cascade_with_a_bundle_without_proposals_is_refused_at_start(server_bundle: Path, tmp_path: Path) -> None:
    old = tmp_path / "bundle"
    shutil.copytree(server_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    name = manifest.pop("proposals")["file"]
    del manifest["files"][name]
    (old / name).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest, indent=2))
    assert ModelBundle.load(old).proposals_model() is None  # a bundle exported before the cascade
    with pytest.raises(RuntimeError) as err:
        start_server(old, tmp_path / "index", tmp_path / "logs", env={"FACESEARCH_DETECTOR": "cascade"})
    assert "FACESEARCH_DETECTOR=cascade needs a model bundle with the face-proposal model" in str(err.value)


def test_embed_with_the_cascade_gives_the_cascades_faces(
    server_bundle: Path, people: dict[str, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = [people[name][0] for name in list(people)[:2]]
    listing = tmp_path / "photos.txt"
    listing.write_text("".join(f"{p}\n" for p in photos))
    rows = {}
    for mode in ("cascade", "budget"):
        out = tmp_path / f"{mode}.npz"
        args = ["embed", "--bundle", str(server_bundle), "--list", str(listing), "--out", str(out)]
        assert facesearch_main([*args, "--detector", mode, "--workers", "1", "--quiet"]) == ExitCode.OK
        with np.load(out) as data:
            rows[mode] = {k: data[k] for k in data.files}
        assert rows[mode]["found"].all()
    cascade = FacePipeline(ModelBundle.load(server_bundle), PipelineConfig(detector_mode=DetectorMode.CASCADE))
    for i, photo in enumerate(photos):
        expected = cascade.detect_cascade(load_image(photo), cascade.config.min_face)
        assert min(_box_gap(tuple(rows["cascade"]["boxes"][i]), d.box) for d in expected) < 0.5
    assert not np.array_equal(rows["cascade"]["boxes"], rows["budget"]["boxes"])
    bad = ["embed", "--bundle", str(server_bundle), "--list", str(listing), "--out", str(tmp_path / "x.npz")]
    assert facesearch_main([*bad, "--detector", "fast"]) == ExitCode.ERROR
    assert "--detector='fast': expected one of budget, cascade" in capsys.readouterr().err


def test_index_embed_options_choose_the_detector() -> None:
    def options(text: str) -> argparse.Namespace:
        return argparse.Namespace(ray=None, keep_chips=False, workers=0, embed_options=text)

    assert _embed_options(options("")).detector is DetectorMode.BUDGET
    assert _embed_options(options("detector=cascade,min_face=60")).detector is DetectorMode.CASCADE
    with pytest.raises(InvalidInputError, match=r"--embed-options detector='exact': expected one of budget, cascade"):
        _embed_options(options("detector=exact"))
