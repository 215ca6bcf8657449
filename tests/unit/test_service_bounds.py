"""Service bounds without a network: field bounds and identity-id characters (server.convert), score
rounding, the threshold floor and the candidates a reply may show (server.service), the cancellation
token, and checkpoints that stop work inside the embedder and the pyramid (issue 13)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.errors import InvalidInputError
from facesearch.scoring.decision import DecisionThreshold, ScoredCandidate, ScoreKind, ThresholdKind
from facesearch.util.cancel import AllCancelled, Cancelled, CancelToken, DeadlineExceeded
from facesearch.vision.pyramid import build_pyramid_tensor, tiled_pyramid_layout
from server import convert
from server.admission import Admission, Busy, Deadline, run_stoppable
from server.config import load_config
from server.service import passing, require_stricter


def _refused(fn: object, reason: str, *words: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        fn()  # type: ignore[operator]
    assert err.value.reason == reason
    for word in words:
        assert word in err.value.message, (word, err.value.message)


# -- identity ids ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "category"),
    [
        ("a\u202eb", "Cf"),  # RIGHT-TO-LEFT OVERRIDE
        ("a\u2066b", "Cf"),  # LEFT-TO-RIGHT ISOLATE
        ("a\u200bb", "Cf"),  # ZERO WIDTH SPACE
        ("a\u200db", "Cf"),  # ZERO WIDTH JOINER
        ("a\ufeffb", "Cf"),  # BOM
        ("a\u2028b", "Zl"),
        ("a\u2029b", "Zp"),
        ("a\ue000b", "Co"),  # private use
        ("a\U000e0001b", "Cf"),  # LANGUAGE TAG
        ("a\u0378b", "Cn"),  # unassigned
        ("a\x85b", "Cc"),  # NEL: a C1 control
    ],
)
def test_enrolled_ids_refuse_invisible_and_bidi_characters(value: str, category: str) -> None:
    _refused(lambda: convert.identity_id(value, new=True), "BAD_IDENTITY_ID", "identity_id", category)


def test_printable_ids_pass_and_lookups_only_check_length() -> None:
    for ok in ("Colin_Powell", "José Álvarez", "李小龍", "a b-c.d@e", "x" * 256):
        assert convert.identity_id(ok, new=True) == ok
    assert convert.identity_id("legacy\u200bid") == "legacy\u200bid"  # an old id can still be looked up and deleted
    _refused(lambda: convert.identity_id("x" * 257), "BAD_IDENTITY_ID", "256")
    _refused(lambda: convert.identity_id("é" * 129), "BAD_IDENTITY_ID", "258 bytes", "256")
    _refused(lambda: convert.identity_id(""), "BAD_IDENTITY_ID")
    _refused(lambda: convert.identity_id("tab\there"), "BAD_IDENTITY_ID", "control")


# -- field bounds ----------------------------------------------------------------------------------------
def _enroll(**fields: object) -> pb.EnrollRequest:
    base: dict[str, object] = {"identity_id": "p", "images": [pb.EnrollImage(image=b"x")]}
    return pb.EnrollRequest(**{**base, **fields})  # type: ignore[arg-type]


def test_enroll_fields_are_bounded() -> None:
    assert convert.enroll_query(_enroll(images=[pb.EnrollImage(image=b"x", source="s" * 1024)])).images[0][1]
    cases = [
        (
            _enroll(images=[pb.EnrollImage(image=b"x", source="s" * 1025)]),
            "FIELD_TOO_LONG",
            ("images[0].source", "1024"),
        ),
        (_enroll(display_name="n" * 1025), "BAD_NAME", ("display_name", "1024")),
        (_enroll(display_name="a\x00b"), "BAD_NAME", ("control",)),
        (_enroll(metadata={"k" * 129: "v"}), "BAD_METADATA", ("metadata key", "128")),
        (_enroll(metadata={"k": "v" * 4097}), "BAD_METADATA", ("metadata['k']", "4096")),
        (_enroll(metadata={"": "v"}), "BAD_METADATA", ("empty key",)),
        (_enroll(metadata={f"k{i}": "v" for i in range(65)}), "BAD_METADATA", ("65 keys", "64")),
        (_enroll(metadata={f"k{i}": "v" * 4000 for i in range(5)}), "BAD_METADATA", ("16384",)),
        (_enroll(identity_id="bidi\u202e"), "BAD_IDENTITY_ID", ("U+202E",)),
    ]
    for request, reason, words in cases:
        _refused(lambda r=request: convert.enroll_query(r), reason, *words)


def test_other_request_fields_are_bounded() -> None:
    _refused(
        lambda: convert.page(pb.ListIdentitiesRequest(page_token="A" * 1025)), "BAD_PAGE_TOKEN", "page_token", "1024"
    )
    _refused(
        lambda: convert.face_ids(pb.DeleteFacesRequest(face_ids=["ok", "f" * 65])),
        "FIELD_TOO_LONG",
        "face_ids[1]",
        "64",
    )
    _refused(lambda: convert.stream_tag("t" * 1025), "FIELD_TOO_LONG", "tag", "1024")
    assert convert.stream_tag("t" * 1024)


# -- scores, floor, candidates ---------------------------------------------------------------------------
def _threshold(value: float, kind: ScoreKind = ScoreKind.RAW, fpir: float | None = None) -> DecisionThreshold:
    return DecisionThreshold(ThresholdKind.DEFAULT, value, kind, 100, None, fpir, False, "")


def _cand(identity: str, sim: float, normalised: float | None = None) -> ScoredCandidate:
    return ScoredCandidate(identity, sim, sim, normalised)


def test_scores_leave_rounded_and_never_below_their_threshold() -> None:
    c = convert.candidate(_cand("a", 0.845612, 0.0312345))
    assert c.similarity == pytest.approx(0.846, abs=1e-6) and c.normalised_score == pytest.approx(0.031, abs=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(2000):  # monotone: a matched score never shows below the shown threshold
        t, s = sorted(rng.uniform(-1, 1, 2))
        assert convert.score(s) >= convert.score(t)


def test_only_candidates_reaching_the_threshold_are_shown() -> None:
    ranked = (_cand("a", 0.90), _cand("b", 0.80), _cand("c", 0.79999), _cand("d", 0.5))
    assert [c.identity_id for c in passing(ranked, _threshold(0.8))] == ["a", "b"]
    assert passing(ranked, _threshold(0.95)) == ()
    normalised = (_cand("a", 0.9, 0.01), _cand("b", 0.5, 0.05))
    assert [c.identity_id for c in passing(normalised, _threshold(0.03, ScoreKind.NORMALISED))] == ["b"]


def test_a_threshold_may_only_be_stricter_than_the_floor() -> None:
    floor = _threshold(0.8, fpir=0.01)
    require_stricter(_threshold(0.8), floor, "Identify")
    require_stricter(_threshold(0.95), floor, "Identify")
    _refused(lambda: require_stricter(_threshold(-1.0), floor, "Identify"), "THRESHOLD_BELOW_FLOOR", "0.8000", "floor")
    # another score: compared by the FPIR both stand for; unknown is refused
    require_stricter(_threshold(0.05, ScoreKind.NORMALISED, fpir=0.001), floor, "Identify")
    _refused(
        lambda: require_stricter(_threshold(0.0, ScoreKind.NORMALISED, fpir=0.2), floor, "Identify"),
        "THRESHOLD_BELOW_FLOOR",
    )
    _refused(lambda: require_stricter(_threshold(0.05, ScoreKind.NORMALISED), floor, "Verify"), "THRESHOLD_BELOW_FLOOR")
    # a raw cosine against a normalised floor: at or above the cosine of the floor's FMR
    normalised_floor = _threshold(0.03, ScoreKind.NORMALISED, fpir=0.01)
    require_stricter(_threshold(0.97), normalised_floor, "Identify", raw_floor=0.95)
    _refused(
        lambda: require_stricter(_threshold(0.9), normalised_floor, "Identify", raw_floor=0.95),
        "THRESHOLD_BELOW_FLOOR",
        "normalised score 0.0300",
    )


# -- cancellation --------------------------------------------------------------------------------------
def test_cancel_token_stops_at_the_next_check() -> None:
    token = CancelToken.after(None)
    token.check("a")
    token.cancel("the client went away")
    with pytest.raises(Cancelled, match="went away before b"):
        token.check("b")
    late = CancelToken(time.monotonic() - 1)
    assert late.cancelled
    with pytest.raises(DeadlineExceeded, match="before c"):
        late.check("c")
    shared = AllCancelled([token, CancelToken()])
    shared.check("one still wants it")
    with pytest.raises(Cancelled):
        AllCancelled([token, late]).check("nobody wants it")


def test_on_stop_runs_once_at_cancel_or_deadline() -> None:
    fired: list[str] = []
    token = CancelToken.after(None)
    unregister = token.on_stop(lambda: fired.append("a"))
    token.cancel()
    token.cancel()
    unregister()
    assert fired == ["a"]
    timed = CancelToken.after(0.05)  # a timer fires at the deadline, while a callback is registered
    event = threading.Event()
    timed.on_stop(event.set)
    assert event.wait(5)
    quiet = CancelToken.after(0.05)
    quiet.on_stop(lambda: fired.append("never"))()  # unregistered before the deadline
    time.sleep(0.15)
    assert fired == ["a"]
    first, second = CancelToken(), CancelToken()
    AllCancelled([first, second]).on_stop(lambda: fired.append("batch"))
    first.cancel()
    assert fired == ["a"]  # one request of the batch still wants it
    second.cancel()
    assert fired == ["a", "batch"]


def test_pyramid_building_stops_between_levels() -> None:
    planes = np.zeros((1, 3, 400, 400), np.uint8)
    layout = tiled_pyramid_layout(400, 400, 6, 10, 11)
    assert build_pyramid_tensor(planes, (122.0, 117.0, 104.0), layout, cancel=CancelToken()).shape[0] == 1
    for exact in (True, False):
        with pytest.raises(DeadlineExceeded, match="pyramid level"):
            build_pyramid_tensor(
                planes, (122.0, 117.0, 104.0), layout, exact=exact, cancel=CancelToken(time.monotonic() - 1)
            )


def test_a_cancelled_caller_keeps_its_slot_until_the_thread_stopped() -> None:
    """The slot is given back only when the worker has stopped at a checkpoint, not when the caller is
    cancelled: while the worker runs, the lane's depth and busy count still show it."""

    async def scenario() -> None:
        adm, busy = Admission(workers=1, queue_size=0), Busy()
        started, release = threading.Event(), threading.Event()
        deadline = Deadline()

        def work() -> None:
            started.set()
            while True:  # a stage with checkpoints; ``release`` lets the test look first
                release.wait(5)
                deadline.check("the next tile")

        async def call() -> None:
            async with adm.slot(deadline):
                await run_stoppable(pool, deadline, work, busy)

        with ThreadPoolExecutor(1) as pool:
            task = asyncio.create_task(call())
            await asyncio.to_thread(started.wait, 5)
            task.cancel()  # the client went away
            await asyncio.sleep(0.05)
            assert not task.done() and adm.active == 1 and busy.count == 1  # still at work: slot held
            assert deadline.cancelled
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert adm.active == 0 and busy.count == 0

    asyncio.run(scenario())


def test_face_cap_and_stream_idle_settings() -> None:
    base = {"FACESEARCH_BUNDLE": "/nonexistent", "FACESEARCH_INDEX": "/tmp/none"}
    c = load_config(env=base)
    assert (c.max_faces, c.stream_idle_s) == (64, 60.0)
    c = load_config(env={**base, "FACESEARCH_MAX_FACES": "8", "FACESEARCH_STREAM_IDLE_S": "2.5"})
    assert (c.max_faces, c.stream_idle_s) == (8, 2.5)
    for name, value in (("FACESEARCH_MAX_FACES", "0"), ("FACESEARCH_STREAM_IDLE_S", "0")):
        with pytest.raises(InvalidInputError) as err:
            load_config(env={**base, name: value})
        assert err.value.reason == "BAD_CONFIG" and name in err.value.message
