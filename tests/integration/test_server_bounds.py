"""Service bounds on a real server process (issue 13): no gallery leaks, admission of every call and
of every stream item, cancellation that frees the worker, bounded fields, idle streams.

One server (workers=1, queue_size=1, a short stream idle limit) serves the module; six LFW people
are enrolled once. Assertions are on the server's own accounting (GetStats.lanes: depth, peak
depth, bound, refusals) and on statuses and reasons, not on latency; the few waits have generous
bounds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import ServerProcess, start_server, wait_until

pytestmark = pytest.mark.slow

IDLE_S = 3.0
MAX_FACES = 8
ENROLLED = 6  # people[0..5] are enrolled; people[6] and [7] are strangers


def reason_of(err: grpc.RpcError) -> str:
    """The facesearch reason of a failed call (google.rpc.ErrorInfo in the status details)."""
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


def lanes(stub: pb_grpc.FaceSearchStub) -> dict[str, pb.AdmissionLane]:
    return {lane.name: lane for lane in stub.GetStats(pb.GetStatsRequest(), timeout=30).lanes}


@pytest.fixture(scope="module")
def server(
    server_bundle: Path, tmp_path_factory: pytest.TempPathFactory, people: dict[str, list[Path]]
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("bounds")
    srv = start_server(
        server_bundle,
        tmp / "index",
        tmp / "logs",
        env={
            "FACESEARCH_WORKERS": "1",
            "FACESEARCH_QUEUE_SIZE": "1",
            "FACESEARCH_STREAM_IDLE_S": str(IDLE_S),
            "FACESEARCH_MAX_DETECT_PIXELS": "25000000",  # the worst-case photo below may scan 22 MP
            "FACESEARCH_MAX_IMAGE_PIXELS": "10000000",
            "FACESEARCH_WORK_MEMORY": "2G",
            "FACESEARCH_MAX_FACES": str(MAX_FACES),
        },
    )
    try:
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.FaceSearchStub(channel)
            for name in list(people)[:ENROLLED]:
                photo = people[name][0].read_bytes()
                stub.Enroll(
                    pb.EnrollRequest(identity_id=name, images=[pb.EnrollImage(image=photo)], use_largest_face=True),
                    timeout=120,
                )
        yield srv
    finally:
        assert srv.stop() == 0


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[pb_grpc.FaceSearchStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.FaceSearchStub(channel)


# -- no leaks --------------------------------------------------------------------------------------
def test_a_strangers_reply_lists_no_candidates(stub: pb_grpc.FaceSearchStub, people: dict[str, list[Path]]) -> None:
    names = list(people)
    for stranger in names[ENROLLED:]:
        reply = stub.Identify(pb.IdentifyRequest(image=people[stranger][1].read_bytes(), top_k=100), timeout=120)
        assert reply.faces, stranger
        for face in reply.faces:
            assert not face.HasField("match") and list(face.candidates) == [], (stranger, face.candidates)


def test_a_match_lists_only_candidates_at_or_above_the_threshold_rounded(
    stub: pb_grpc.FaceSearchStub, people: dict[str, list[Path]]
) -> None:
    name = next(iter(people))
    reply = stub.Identify(pb.IdentifyRequest(image=people[name][1].read_bytes(), top_k=10, faces=pb.LARGEST_FACE))
    face = reply.faces[0]
    assert face.match.identity_id == name
    t = reply.threshold
    assert t.score_kind == pb.SCORE_KIND_RAW  # an uncalibrated bundle: raw cosine
    assert face.candidates and all(c.similarity >= t.value for c in face.candidates)
    for value in (face.match.similarity, t.value, *(c.similarity for c in face.candidates)):
        assert abs(value * 1000 - round(value * 1000)) < 1e-3, value  # 3 decimals (float32 on the wire)


def test_a_looser_threshold_is_refused_and_a_stricter_one_accepted(
    stub: pb_grpc.FaceSearchStub, people: dict[str, list[Path]]
) -> None:
    photo = people[list(people)[ENROLLED]][1].read_bytes()
    with pytest.raises(grpc.RpcError) as err:
        stub.Identify(pb.IdentifyRequest(image=photo, min_similarity=-1.0), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == "THRESHOLD_BELOW_FLOOR" and "floor" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        stub.Verify(pb.VerifyRequest(image=photo, reference_image=photo, min_similarity=0.1), timeout=60)
    assert reason_of(err.value) == "THRESHOLD_BELOW_FLOOR"
    strict = stub.Identify(pb.IdentifyRequest(image=photo, min_similarity=0.99), timeout=60)
    assert strict.threshold.kind == pb.THRESHOLD_KIND_MIN_SIMILARITY and abs(strict.threshold.value - 0.99) < 1e-3


# -- bounded fields ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("identity_id", "source", "reason"),
    [
        ("bidi-\u202eevil", "", "BAD_IDENTITY_ID"),
        ("zero\u200bwidth", "", "BAD_IDENTITY_ID"),
        ("line\u2028sep", "", "BAD_IDENTITY_ID"),
        ("ok-id", "s" * 1025, "FIELD_TOO_LONG"),
        ("x" * 257, "", "BAD_IDENTITY_ID"),
    ],
)
def test_enroll_refuses_bad_ids_and_oversize_fields(
    stub: pb_grpc.FaceSearchStub, people: dict[str, list[Path]], identity_id: str, source: str, reason: str
) -> None:
    photo = people[list(people)[ENROLLED]][0].read_bytes()
    request = pb.EnrollRequest(identity_id=identity_id, images=[pb.EnrollImage(image=photo, source=source)])
    with pytest.raises(grpc.RpcError) as err:
        stub.Enroll(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(err.value) == reason
    assert "identity_id" in (err.value.details() or "") or "source" in (err.value.details() or "")


def test_other_oversize_fields_are_refused_with_their_reason(stub: pb_grpc.FaceSearchStub) -> None:
    cases = [
        (lambda: stub.ListIdentities(pb.ListIdentitiesRequest(page_token="A" * 1025)), "BAD_PAGE_TOKEN"),
        (lambda: stub.DeleteFaces(pb.DeleteFacesRequest(face_ids=["f" * 65])), "FIELD_TOO_LONG"),
        (lambda: stub.GetIdentity(pb.GetIdentityRequest(identity_id="y" * 300)), "BAD_IDENTITY_ID"),
        (
            lambda: stub.Enroll(
                pb.EnrollRequest(identity_id="m", images=[pb.EnrollImage(image=b"x")], metadata={"k": "v" * 5000})
            ),
            "BAD_METADATA",
        ),
    ]
    for call, reason in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(err.value) == reason, reason


# -- streams -----------------------------------------------------------------------------------------
def test_stream_items_go_through_admission(
    server: ServerProcess, stub: pb_grpc.FaceSearchStub, people: dict[str, list[Path]]
) -> None:
    """50 streams x 20 items with workers=1, queue_size=1: the photo lane never holds more than its
    bound, the excess items get QUEUE_FULL one by one, and every stream runs to its end."""
    photo = people[next(iter(people))][1].read_bytes()
    before = lanes(stub)["cpu"]
    outcomes: Counter[str] = Counter()
    replies_per_stream: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def one_stream() -> None:
        with grpc.insecure_channel(server.target) as channel:
            s = pb_grpc.FaceSearchStub(channel)
            s.GetStats(pb.GetStatsRequest(), timeout=60)  # connected before the burst
            barrier.wait(60)
            items = [pb.StreamIdentifyRequest(tag=str(i), request=pb.IdentifyRequest(image=photo)) for i in range(20)]
            seen = 0
            local: Counter[str] = Counter()
            for reply in s.StreamIdentify(iter(items), timeout=300):
                seen += 1
                local["ok" if reply.HasField("result") else f"{reply.error.code}:{reply.error.reason}"] += 1
            with lock:
                outcomes.update(local)
                replies_per_stream.append(seen)

    threads = [threading.Thread(target=one_stream) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert replies_per_stream == [20] * 50  # each stream got a reply per item and ended normally
    exhausted = f"{grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}:QUEUE_FULL"
    assert set(outcomes) <= {"ok", exhausted}, outcomes
    assert outcomes[exhausted] > 0 and outcomes["ok"] > 0, outcomes
    after = lanes(stub)["cpu"]
    assert after.bound == 2  # FACESEARCH_WORKERS=1 + FACESEARCH_QUEUE_SIZE=1
    assert after.peak_depth <= after.bound, after
    assert after.refused - before.refused >= outcomes[exhausted]
    assert after.depth == 0


def test_an_idle_stream_is_closed_with_stream_idle(stub: pb_grpc.FaceSearchStub, people: dict[str, list[Path]]) -> None:
    photo = people[next(iter(people))][1].read_bytes()
    sent_second = threading.Event()

    def items() -> Iterator[pb.StreamIdentifyRequest]:
        yield pb.StreamIdentifyRequest(tag="first", request=pb.IdentifyRequest(image=photo))
        time.sleep(IDLE_S * 4)  # idle well past the limit, then try again
        sent_second.set()
        yield pb.StreamIdentifyRequest(tag="late", request=pb.IdentifyRequest(image=photo))

    replies = []
    with pytest.raises(grpc.RpcError) as err:
        for reply in stub.StreamIdentify(items(), timeout=120):
            replies.append(reply)
    assert [r.tag for r in replies] == ["first"]
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and reason_of(err.value) == "STREAM_IDLE"
    assert "FACESEARCH_STREAM_IDLE_S" in (err.value.details() or "")


def test_an_oversize_tag_is_that_items_error(stub: pb_grpc.FaceSearchStub, people: dict[str, list[Path]]) -> None:
    photo = people[next(iter(people))][1].read_bytes()
    items = [
        pb.StreamIdentifyRequest(tag="t" * 2000, request=pb.IdentifyRequest(image=photo)),
        pb.StreamIdentifyRequest(tag="fine", request=pb.IdentifyRequest(image=photo)),
    ]
    replies = list(stub.StreamIdentify(iter(items), timeout=120))
    assert replies[0].error.reason == "FIELD_TOO_LONG" and replies[1].HasField("result")


# -- deadlines cancel work -----------------------------------------------------------------------------
def collage(photos: list[Path], cols: int, rows: int) -> bytes:
    """A JPEG mosaic of LFW photos (250x250 each): a large photo with many faces."""
    tiles = [cv2.imread(str(p)) for p in photos]
    grid = np.zeros((rows * 250, cols * 250, 3), np.uint8)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        grid[r * 250 : (r + 1) * 250, c * 250 : (c + 1) * 250] = tiles[i % len(tiles)]
    ok, data = cv2.imencode(".jpg", grid, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(data)


def test_a_deadline_stops_the_worker_and_frees_its_slot(
    stub: pb_grpc.FaceSearchStub, lfw_dir: Path, people: dict[str, list[Path]]
) -> None:
    """A worst-case photo (a 3000x2250 collage of 108 LFW photos, 115 faces, scanned for 80 px faces: a
    22 MP pyramid, ~4.5-9 s of detection on one core of this machine) with a 1 s deadline: the worker
    stops at its next checkpoint (a tile's network run is terminated midway: measured 0.02-0.15 s after
    the client's error), the photo lane is empty again soon after the error (the server's own count,
    GetStats.lanes: no slot held, no thread at work), and a small request succeeds."""
    big = collage(sorted((lfw_dir / "images").glob("*/*.jpg"))[:108], 12, 9)
    request = pb.IdentifyRequest(image=big, min_face_px=80)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.Identify(request, timeout=1.0)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    answered = time.monotonic()

    def stopped() -> bool:
        cpu = lanes(stub)["cpu"]
        return cpu.depth == 0 and cpu.busy_threads == 0  # no slot held, and no thread still at work

    wait_until(stopped, timeout=30, interval=0.05, what="the photo lane's work to stop")
    freed = time.monotonic() - answered
    # generous for a loaded 2-core machine (a tile can take 3x longer); the whole photo takes ~8 s more
    assert freed < 4.0, f"worker busy {freed:.1f}s after the caller's deadline (call started {answered - start:.1f}s)"
    small = people[next(iter(people))][1].read_bytes()
    assert stub.Identify(pb.IdentifyRequest(image=small), timeout=60).faces


def test_a_crowd_photo_searches_the_largest_faces_and_says_how_many_were_found(
    stub: pb_grpc.FaceSearchStub, lfw_dir: Path
) -> None:
    crowd = collage(sorted((lfw_dir / "images").glob("*/*.jpg"))[:12], 4, 3)  # 12 photos, a face or more each
    found = stub.Detect(pb.DetectRequest(image=crowd), timeout=120)
    reply = stub.Identify(pb.IdentifyRequest(image=crowd), timeout=120)
    assert found.faces_found >= 12 and reply.faces_found == found.faces_found
    assert len(found.faces) == len(reply.faces) == MAX_FACES  # FACESEARCH_MAX_FACES: the largest
    sizes = [f.face.box.x2 - f.face.box.x1 for f in reply.faces]
    assert sizes == sorted(sizes, reverse=True)
    assert lanes(stub)["cpu"].depth == 0 and stub.GetStats(pb.GetStatsRequest()).max_faces == MAX_FACES


# -- light lanes -------------------------------------------------------------------------------------------
def test_reads_and_deletes_have_their_own_lanes(
    stub: pb_grpc.FaceSearchStub, server: ServerProcess, people: dict[str, list[Path]]
) -> None:
    """32 clients listing as fast as they can while identities are deleted: every delete goes through
    (the write lane is never full), the readers' lane stays within its bound."""
    photo = people[next(iter(people))][2].read_bytes()
    stub.Enroll(
        pb.EnrollRequest(identity_id="lane-doomed", images=[pb.EnrollImage(image=photo)], use_largest_face=True),
        timeout=120,
    )
    stop = threading.Event()
    listed: Counter[str] = Counter()
    lock = threading.Lock()

    def lister() -> None:
        with grpc.insecure_channel(server.target) as channel:
            s = pb_grpc.FaceSearchStub(channel)
            while not stop.is_set():
                try:
                    s.ListIdentities(pb.ListIdentitiesRequest(page_size=1000), timeout=30)
                    outcome = "ok"
                except grpc.RpcError as err:
                    outcome = reason_of(err) or str(err.code())
                with lock:
                    listed[outcome] += 1

    threads = [threading.Thread(target=lister) for _ in range(32)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(listed.values()) > 200, timeout=60, what="the readers to get going")
        assert stub.DeleteIdentity(pb.DeleteIdentityRequest(identity_id="lane-doomed"), timeout=30).faces_deleted == 1
        for name in ("nobody-1", "nobody-2", "nobody-3"):
            with pytest.raises(grpc.RpcError) as err:  # through the write lane, not behind the readers
                stub.DeleteIdentity(pb.DeleteIdentityRequest(identity_id=name), timeout=30)
            assert reason_of(err.value) == "IDENTITY_NOT_FOUND"
        during = lanes(stub)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert set(listed) <= {"ok", "QUEUE_FULL"}, listed
    read, write = during["read"], during["write"]
    assert read.peak_depth <= read.bound and write.peak_depth <= write.bound
    assert read.peak_depth >= 2, read  # the readers really were concurrent
    assert write.refused == 0, write
