"""Phone-size photos through a real server with a small detection budget: a 12 MP photo is accepted,
its faces found and identified, and every reply says the smallest face searched; a request for
smaller faces than the server allows is refused with its reason; a burst of large photos is
refused by cost (RESOURCE_EXHAUSTED, WORK_MEMORY_FULL), never run out of memory."""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from facesearch.cli import client_commands
from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import FaceSearchError, InvalidInputError, ResourceExhaustedError
from facesearch.vision.detection_plan import worst_work_bytes
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import PHONE_PLACES, PHONE_SIZE, ServerProcess, phone_photo_jpeg, start_server

pytestmark = pytest.mark.slow

BUDGET, MAX_BUDGET, MAX_IMAGE = 1_200_000, 2_500_000, 13_000_000


@pytest.fixture(scope="module")
def server(server_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("large")
    memory = worst_work_bytes(MAX_IMAGE, MAX_BUDGET) + (1 << 20)  # one photo at the worst, not two
    env = {
        "FACESEARCH_DETECT_PIXELS": str(BUDGET),
        "FACESEARCH_MAX_DETECT_PIXELS": str(MAX_BUDGET),
        "FACESEARCH_MAX_IMAGE_PIXELS": str(MAX_IMAGE),
        "FACESEARCH_WORK_MEMORY": str(memory),
        "FACESEARCH_MIN_SIMILARITY": "0.91",
    }
    srv = start_server(server_bundle, root / "index", root / "logs", env=env)
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> FaceSearchClient:
    with server.client(timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def phone_photo(people: dict[str, list[Path]]) -> bytes:
    return phone_photo_jpeg(people)


def test_a_12_mp_photo_is_accepted_its_faces_found_and_identified(
    client: FaceSearchClient, people: dict[str, list[Path]], phone_photo: bytes
) -> None:
    names = list(people)[:3]
    for name in names[:2]:
        assert client.enroll(name, people[name][:2], use_largest_face=True).face_ids
    result = client.identify(phone_photo)
    assert (result.width, result.height) == PHONE_SIZE
    scope = result.detection
    assert scope is not None and scope.limited and scope.scanned_pixels <= BUDGET
    assert 200 < scope.min_face_px < 320  # 80 px window / sqrt(1.2 MP / 12.2 MP)
    assert len(result.faces) == 3
    for name, (x, y, s) in zip(names, PHONE_PLACES, strict=True):
        face = min(result.faces, key=lambda f: abs((f.box[0] + f.box[2]) / 2 - x - s / 2) + abs(f.box[1] - y - s / 4))
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        assert abs(cx - x - s / 2) < s / 5 and abs(cy - y - s / 2) < s / 5  # boxes in the photo's own pixels
        assert (face.match.identity_id if face.match else None) == (name if name in names[:2] else None)


def test_every_reply_says_what_was_searched(
    client: FaceSearchClient, people: dict[str, list[Path]], phone_photo: bytes
) -> None:
    small = client.detect_result(people[list(people)[3]][0])
    assert small.detection is not None and small.detection.min_face_px == 80 and not small.detection.limited
    assert small.faces
    large = client.detect_result(phone_photo)
    assert large.detection is not None and large.detection.limited and len(large.faces) == 3
    enrolled = client.enroll("group", [phone_photo], use_largest_face=True)
    try:
        assert enrolled.images[0].detection == large.detection
    finally:  # the module's server is shared: leave no enrolled face behind for the other tests
        client.delete_identity("group")


def test_a_smaller_min_face_is_searched_up_to_the_maximum_and_refused_beyond(
    client: FaceSearchClient, phone_photo: bytes
) -> None:
    result = client.identify(phone_photo, min_face_px=250)  # 1.25 MP: over the budget, within the maximum
    assert result.detection is not None and result.detection.min_face_px <= 250 and not result.detection.limited
    assert len(result.faces) == 3
    with pytest.raises(InvalidInputError) as err:
        client.identify(phone_photo, min_face_px=100)  # 7.8 MP: over FACESEARCH_MAX_DETECT_PIXELS
    assert err.value.reason == "MIN_FACE_TOO_SMALL"
    assert "FACESEARCH_MAX_DETECT_PIXELS" in err.value.message and "smallest face" in err.value.message
    with pytest.raises(InvalidInputError) as err:
        client.detect(phone_photo, min_face_px=5)
    assert err.value.reason == "MIN_FACE_TOO_SMALL"


def test_a_burst_of_large_photos_is_refused_by_cost(client: FaceSearchClient, phone_photo: bytes) -> None:
    def call(_: int) -> str:
        try:
            client.detect(phone_photo)
        except ResourceExhaustedError as err:
            return str(err.reason)
        except FaceSearchError as err:
            return f"unexpected {err.reason}"
        return "ok"

    with ThreadPoolExecutor(5) as pool:
        outcomes = list(pool.map(call, range(5)))
    assert set(outcomes) == {"ok", "WORK_MEMORY_FULL"}, outcomes  # one runs, one waits, the rest are refused
    assert client.detect(phone_photo)  # and the server serves on


def test_identify_json_states_the_searched_face_size(
    server: ServerProcess, phone_photo: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "phone.jpg"
    photo.write_bytes(phone_photo)
    parser = argparse.ArgumentParser(prog="facesearch")
    client_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["identify", "--json", "--target", server.target, "--timeout", "120", str(photo)])
    assert client_commands.dispatch(args) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert row["detection"]["limited"] is True and 200 < row["detection"]["min_face_px"] < 320
    assert len(row["faces"]) == 3
