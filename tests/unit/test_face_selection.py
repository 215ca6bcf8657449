"""facesearch.vision.selection: which face of a photo (the dominant one by default), the reject
vocabulary and its wire strings, failures vs outcomes, the quality gate, and the per-photo ladder
that turns a bad photo into a rejection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.errors import ImageTooLargeError, InvalidInputError
from facesearch.vision.quality import FaceQuality
from facesearch.vision.selection import (
    DOMINANCE_RATIO,
    MULTI_FACE_SETTINGS,
    Audience,
    Policy,
    QualityGate,
    Reject,
    Rejection,
    choose_face,
    dominance,
    is_failure,
    largest_first,
    policy_key,
    process_photo,
    rejection_for_error,
    visible_area,
)


@dataclass(frozen=True)
class Boxed:
    box: tuple[float, float, float, float]


SMALL = Boxed((0, 0, 10, 10))
BIG = Boxed((100, 100, 160, 160))
BIG_TOO = Boxed((200, 0, 260, 60))
CENTRED = Boxed((45, 45, 55, 55))  # centre (50, 50) of a 100x100 image


def test_no_face_is_rejected_under_every_policy() -> None:
    for policy in Policy:
        assert choose_face([], policy, image_shape=(100, 100, 3)) == Rejection("NO_FACE", "")
    enroll = choose_face([], Policy.LARGEST, audience=Audience.ENROLL)
    assert enroll == Rejection("NO_FACE", "no face found")


def test_one_face_is_kept_under_every_policy() -> None:
    for policy in Policy:
        assert choose_face([SMALL], policy, image_shape=(100, 100, 3)) == 0


def test_reject_multiple_names_the_count_in_each_wording() -> None:
    faces = [SMALL, BIG, BIG_TOO]
    assert choose_face(faces, Policy.REJECT_MULTIPLE) == Rejection("MULTIPLE_FACES", "3 faces")
    enroll = choose_face(faces, Policy.REJECT_MULTIPLE, audience=Audience.ENROLL)
    assert enroll == Rejection("MULTIPLE_FACES", "3 faces found; send a photo of one person or set use_largest_face")


def test_largest_keeps_the_first_of_equal_areas() -> None:
    assert choose_face([SMALL, BIG, BIG_TOO], Policy.LARGEST) == 1
    assert choose_face([SMALL, BIG_TOO, BIG], Policy.LARGEST) == 1
    assert largest_first([SMALL.box, BIG.box, BIG_TOO.box]) == [1, 2, 0]


def test_nearest_centre_needs_the_image_shape() -> None:
    faces = [BIG, CENTRED, SMALL]
    assert choose_face(faces, Policy.NEAREST_CENTRE, image_shape=(100, 100, 3)) == 1
    # (H, W): the centre of a 20 px high, 400 px wide image is (200, 10), nearest BIG_TOO's (230, 30)
    assert choose_face([*faces, BIG_TOO], Policy.NEAREST_CENTRE, image_shape=(20, 400, 3)) == 3
    with pytest.raises(ValueError, match="image shape"):
        choose_face(faces, Policy.NEAREST_CENTRE)


def test_policy_values_are_the_multi_face_settings() -> None:
    assert Policy("reject") is Policy.REJECT_MULTIPLE and Policy("largest") is Policy.LARGEST
    assert MULTI_FACE_SETTINGS == ("dominant", "largest", "reject")  # the default first
    assert policy_key(Policy.REJECT_MULTIPLE) == "reject" and policy_key(Policy.LARGEST) == "largest"
    assert policy_key(Policy.DOMINANT) == f"dominant@{DOMINANCE_RATIO:g}"
    assert policy_key(Policy.DOMINANT, 2.0) == "dominant@2"  # another ratio is another job


def _square(x: float, side: float) -> Boxed:
    return Boxed((x, 0.0, x + side, side))


SHAPE = (400, 1000, 3)  # H, W of the photo the boxes below are in


def test_dominance_is_the_largest_visible_area_over_the_next() -> None:
    assert dominance([_square(0, 10).box, _square(50, 20).box, _square(90, 5).box], SHAPE) == (1, 4.0)
    assert dominance([_square(0, 10).box, _square(50, 10).box], SHAPE) == (0, 1.0)  # a tie: the first
    assert dominance([_square(0, 10).box], SHAPE) == (0, float("inf"))
    assert dominance([_square(0, 10).box, (5.0, 5.0, 5.0, 9.0)], SHAPE) == (0, float("inf"))  # the next shows nothing
    # a face cut by the frame counts by what the photo shows: 20 px of its 40 px width
    cut = Boxed((-20.0, 0.0, 20.0, 40.0))
    assert visible_area(cut.box, SHAPE) == 800.0 and visible_area(cut.box, (30, 1000)) == 600.0
    assert dominance([cut.box, _square(100, 30).box], SHAPE) == (1, 900.0 / 800.0)
    with pytest.raises(ValueError, match="no boxes"):
        dominance([], SHAPE)


def test_dominant_keeps_a_clearly_larger_face_and_rejects_a_tie() -> None:
    side = 100.0
    just_enough = Boxed((300.0, 0.0, 300.0 + side * DOMINANCE_RATIO, side))  # DOMINANCE_RATIO times the area
    just_short = Boxed((300.0, 0.0, 300.0 + side * DOMINANCE_RATIO * 0.99, side))
    assert choose_face([_square(0, side), just_enough, _square(600, 20)], Policy.DOMINANT, image_shape=SHAPE) == 1
    assert isinstance(choose_face([_square(0, side), just_short], Policy.DOMINANT, image_shape=SHAPE), Rejection)
    pair = [_square(0, side), _square(300, side * 1.05)]
    rejection = choose_face(pair, Policy.DOMINANT, image_shape=SHAPE)
    assert isinstance(rejection, Rejection) and rejection.reason == "MULTIPLE_FACES"
    assert rejection.detail == (
        f"2 faces, none dominates (the largest shows 1.10x the next one's area, {DOMINANCE_RATIO:g}x needed)"
    )
    enroll = choose_face(pair, Policy.DOMINANT, image_shape=SHAPE, audience=Audience.ENROLL)
    assert isinstance(enroll, Rejection) and enroll.reason == "MULTIPLE_FACES"
    assert "none is clearly the largest" in enroll.detail and enroll.detail.endswith("set use_largest_face")
    assert choose_face(pair, Policy.DOMINANT, image_shape=SHAPE, dominance_ratio=1.05) == 1  # the caller's ratio
    assert choose_face([_square(0, side)], Policy.DOMINANT, image_shape=SHAPE) == 0
    assert choose_face(pair, Policy.LARGEST) == 1  # largest never rejects
    with pytest.raises(ValueError, match="dominant policy needs the image shape"):
        choose_face(pair, Policy.DOMINANT)


def test_a_face_cut_by_the_frame_does_not_dominate_by_its_hidden_part() -> None:
    """LFW's typical group photo: the subject in the middle, a neighbour cut by the left edge whose
    box is 1.44x the subject's area, of which the photo shows only two thirds."""
    subject, neighbour = Boxed((86.0, 85.0, 169.0, 167.0)), Boxed((-33.0, 82.0, 66.0, 181.0))
    assert choose_face([subject, neighbour], Policy.LARGEST) == 1
    assert isinstance(choose_face([subject, neighbour], Policy.DOMINANT, image_shape=(250, 250, 3)), Rejection)


def test_failures_are_unreadable_photos_not_judgements() -> None:
    for outcome in ("NO_FACE", "MULTIPLE_FACES", "FACE_TOO_SMALL", "LOW_QUALITY", "FACE_TOO_BLURRY"):
        assert not is_failure(outcome), outcome
    for failure in ("MISSING_FILE", "UNDECODABLE", "TOO_LARGE", "ERROR", "IMAGE_LAYOUT", "BAD_EMBEDDING"):
        assert is_failure(failure), failure


def test_quality_gate_checks_size_then_blur_and_skips_unset_thresholds() -> None:
    gate = QualityGate(min_face_size=50, min_blur=30.0)
    assert gate.check(FaceQuality(face_size=80, blur=40.0)) is None
    small_and_blurred = FaceQuality(face_size=20, blur=10.0)
    assert gate.check(small_and_blurred, Audience.ENROLL) == Rejection(
        "FACE_TOO_SMALL", "face is 20 px, the minimum is 50 px"
    )
    assert gate.check(FaceQuality(80, 12.34), Audience.ENROLL) == Rejection(
        "FACE_TOO_BLURRY", "sharpness 12.3 is below the minimum 30.0"
    )
    assert gate.check(FaceQuality(80, 12.34)) == Rejection("LOW_QUALITY", "blur 12.3 < --min-blur 30.0")
    assert QualityGate(min_blur=30.0).check(FaceQuality(1, 40.0)) is None  # no size threshold
    assert QualityGate().check(FaceQuality(-1, -1.0)) is None  # nothing checked
    assert QualityGate(min_blur=0.0).check(FaceQuality(80, 0.0)) is None  # the indexer's default: off


def test_enroll_wire_strings_are_the_protos_reject_reasons() -> None:
    documented = {name for name, _ in pb.RejectReason.items() if name != "REJECT_REASON_UNSPECIFIED"}
    enroll = {r.wire(Audience.ENROLL) for r in Reject if r.value[1] is not None}
    assert enroll == documented
    assert Reject.TOO_BLURRY.wire(Audience.BATCH) == "LOW_QUALITY"
    assert Reject.TOO_BLURRY.wire(Audience.ENROLL) == "FACE_TOO_BLURRY"
    with pytest.raises(ValueError, match="not an Enroll reject reason"):
        Reject.MISSING_FILE.wire(Audience.ENROLL)


def test_errors_map_to_batch_rejections() -> None:
    assert rejection_for_error(ImageTooLargeError("12000x12000 is too large")) == Rejection(
        "TOO_LARGE", "12000x12000 is too large"
    )
    assert rejection_for_error(InvalidInputError("bad layout", reason="IMAGE_LAYOUT")) == Rejection(
        "IMAGE_LAYOUT", "bad layout"
    )
    assert rejection_for_error(RuntimeError("boom")) == Rejection("ERROR", "RuntimeError: boom")


def test_a_bad_photo_becomes_a_rejection_never_an_exception(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 24), (10, 20, 30)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing = str(tmp_path / "missing.jpg")

    def shape(image: np.ndarray) -> tuple[int, ...]:
        return image.shape

    def explode(image: np.ndarray) -> None:
        raise RuntimeError("detector crashed")

    assert process_photo(str(good), shape) == (24, 32, 3)
    assert process_photo(missing, shape) == Rejection("MISSING_FILE", missing)
    undecodable = process_photo(str(truncated), shape)
    assert isinstance(undecodable, Rejection) and undecodable.reason == "UNDECODABLE"
    assert undecodable.detail.startswith("IMAGE_")  # the decoder's reason, then its message
    assert process_photo(str(good), explode) == Rejection("ERROR", "RuntimeError: detector crashed")
