"""Which face of a photo a caller uses, and why a photo gives none: one reject vocabulary.

Vocabulary
    :class:`Reject` is the closed set of reasons a photo yields no usable face. Each member
    carries its wire string for each :class:`Audience`; the table below is the only place those
    strings are spelled. The audiences name one thing differently in one case, and both
    spellings are contracts:

    ==============  =======================================  =====================================
    member          ``BATCH`` (indexer rejects, chip cache)   ``ENROLL`` (proto ``RejectReason``)
    ==============  =======================================  =====================================
    NO_FACE         ``NO_FACE``                              ``NO_FACE``
    MULTIPLE_FACES  ``MULTIPLE_FACES``                       ``MULTIPLE_FACES``
    FACE_TOO_SMALL  ``FACE_TOO_SMALL``                       ``FACE_TOO_SMALL``
    TOO_BLURRY      ``LOW_QUALITY``                          ``FACE_TOO_BLURRY``
    MISSING_FILE    ``MISSING_FILE``                         (Enroll fails the call instead)
    UNDECODABLE     ``UNDECODABLE``                          (idem)
    TOO_LARGE       ``TOO_LARGE``                            (idem)
    ERROR           ``ERROR``                                (idem)
    ==============  =======================================  =====================================

    A :class:`Rejection` is the reason as its audience spells it plus a detail text (the
    indexer's rejects file and the chip manifest keep the batch details; the Enroll RPC shows the
    enroll messages).

Photo ladder (batch jobs)
    :func:`process_photo` reads a photo and runs the caller's analysis on it; a photo never
    raises: a missing file is ``MISSING_FILE`` (detail: the path), a decoder error
    ``UNDECODABLE`` (detail: ``"<decoder reason>: <message>"``), a photo over the limits
    ``TOO_LARGE``, any other facesearch error its own reason, and anything unexpected ``ERROR``
    (detail: ``"<exception type>: <message>"``), so one bad photo never stops a job.

Policies (several faces in one photo)
    ``DOMINANT`` keeps the face that *dominates*: the one with the largest visible area (the
    part of its box inside the photo: a face cut by the frame counts by what the photo shows of
    it) when that area is at least :data:`DOMINANCE_RATIO` times the next largest one's (a photo
    of one person with others in the background); when no face dominates (two people side by
    side, a group) the photo is rejected with ``MULTIPLE_FACES``, whose detail gives the ratio
    found and the one needed. ``LARGEST`` keeps the face with the largest box area (the first of
    equals); ``NEAREST_CENTRE`` the one whose box centre is nearest the image centre;
    ``REJECT_MULTIPLE`` rejects any photo with more than one face (``MULTIPLE_FACES``). A photo
    with no face is ``NO_FACE`` under every policy. ``DOMINANT`` and ``NEAREST_CENTRE`` need the
    image shape. The values ``"dominant"``, ``"largest"`` and ``"reject"`` are the indexer's and
    training's ``multi_face`` settings; :func:`policy_key` is how a job's fingerprint names a
    policy (``DOMINANT`` with its ratio).

    :data:`DOMINANCE_RATIO` was measured on lfw-dev (``bench/face_selection.py``, results in
    ``bench/results/face_selection.md``): the smallest ratio at which the dominant face of a
    multi-face photo is the labelled person in at least 99.5% of the photos where one face is
    verified as that person by similarity to their other photos (1.5: 140 of 214 photos have a
    dominant face, none wrong; 1.4 would take 164, one wrong). MMOD boxes grow in pyramid steps of
    1.44x in area, so 1.5 means two steps larger, or larger while the other face is cut by the
    frame. Held-out identification on lfw-dev, a gallery of one photo per person enrolled by the
    rule: coverage 96.1% (``REJECT_MULTIPLE``: 88.4%), rank-1 90.5% (81.7%), FNIR at FPIR 1%
    27.7% (38.3%); dlib's pipeline told the central face: 91.8% and 26.2%.

Quality gate
    :class:`QualityGate` rejects the chosen face when its box's shorter side is below
    ``min_face_size`` (``FACE_TOO_SMALL``), else when its chip's blur measure is below
    ``min_blur`` (``TOO_BLURRY``); a threshold left at ``None`` is not checked.

Failures and outcomes
    ``NO_FACE``, ``MULTIPLE_FACES``, ``FACE_TOO_SMALL`` and ``TOO_BLURRY`` are *outcomes*: the
    photo was read and judged. Every other rejection is a *failure*: the photo could not be read
    or analysed (:func:`is_failure`); batch jobs exit 1 when any row failed.

Who uses what today: the Enroll RPC: ``DOMINANT`` (``LARGEST`` with ``use_largest_face``) and
the server's size and blur gate; the indexer: its ``multi_face`` policy (``DOMINANT`` by
default) and a blur gate (``min_blur``, 0 by default); training chips: its ``multi_face``
policy (``DOMINANT`` by default), no gate; ``facesearch embed``: ``NEAREST_CENTRE`` by default
(``--face dominant|largest|centre``, or every face with ``--all-faces``), no gate. Identify and
Detect with ``LARGEST_FACE`` take the first of :func:`largest_first`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from facesearch.errors import FaceSearchError, ImageDecodeError, ImageTooLargeError
from facesearch.vision.decode import load_image
from facesearch.vision.quality import FaceQuality

Box = tuple[float, float, float, float]
T = TypeVar("T")


class Audience(Enum):
    """Who reads a rejection: batch jobs' reports, or the Enroll RPC (proto ``RejectReason``)."""

    BATCH = "batch"
    ENROLL = "enroll"


class Reject(Enum):
    """Why a photo gives no usable face. Value: ``(batch wire string, enroll wire string or None)``."""

    NO_FACE = ("NO_FACE", "NO_FACE")
    MULTIPLE_FACES = ("MULTIPLE_FACES", "MULTIPLE_FACES")
    FACE_TOO_SMALL = ("FACE_TOO_SMALL", "FACE_TOO_SMALL")
    TOO_BLURRY = ("LOW_QUALITY", "FACE_TOO_BLURRY")
    MISSING_FILE = ("MISSING_FILE", None)
    UNDECODABLE = ("UNDECODABLE", None)
    TOO_LARGE = ("TOO_LARGE", None)
    ERROR = ("ERROR", None)

    def wire(self, audience: Audience) -> str:
        """This reason as ``audience`` spells it."""
        batch, enroll = self.value
        if audience is Audience.ENROLL:
            if enroll is None:
                raise ValueError(f"{self.name} is not an Enroll reject reason")
            return str(enroll)
        return str(batch)


# Detail texts per audience; fields: faces (count), value (measured), minimum (threshold).
_TEXT: dict[tuple[Reject, Audience], str] = {
    (Reject.NO_FACE, Audience.BATCH): "",
    (Reject.NO_FACE, Audience.ENROLL): "no face found",
    (Reject.MULTIPLE_FACES, Audience.BATCH): "{faces} faces",
    (Reject.MULTIPLE_FACES, Audience.ENROLL): "{faces} faces found; send a photo of one person or set use_largest_face",
    (Reject.FACE_TOO_SMALL, Audience.BATCH): "face size {value:.0f} < {minimum}",
    (Reject.FACE_TOO_SMALL, Audience.ENROLL): "face is {value:.0f} px, the minimum is {minimum:.0f} px",
    (Reject.TOO_BLURRY, Audience.BATCH): "blur {value:.1f} < --min-blur {minimum}",
    (Reject.TOO_BLURRY, Audience.ENROLL): "sharpness {value:.1f} is below the minimum {minimum:.1f}",
}

# MULTIPLE_FACES under DOMINANT: value = the largest face's area over the next one's, minimum = the ratio needed.
_NONE_DOMINATES: dict[Audience, str] = {
    Audience.BATCH: "{faces} faces, none dominates (the largest shows {value:.2f}x the next one's area, "
    "{minimum:g}x needed)",
    Audience.ENROLL: "{faces} faces found and none is clearly the largest (it shows {value:.2f}x the next one's "
    "area, {minimum:g}x needed); send a photo of one person or set use_largest_face",
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """A photo that gives no usable face: the reason as its audience spells it, and a detail text."""

    reason: str
    detail: str = ""

    @classmethod
    def of(
        cls,
        reject: Reject,
        audience: Audience = Audience.BATCH,
        *,
        detail: str = "",
        faces: int = 0,
        value: float = 0.0,
        minimum: float = 0.0,
    ) -> Rejection:
        """``reject`` in ``audience``'s words; ``detail`` is used where the table has no text."""
        text = _TEXT.get((reject, audience))
        if text is not None:
            detail = text.format(faces=faces, value=value, minimum=minimum)
        return cls(reject.wire(audience), detail)


class Policy(Enum):
    """Which face of a photo with several faces is used."""

    DOMINANT = "dominant"
    LARGEST = "largest"
    NEAREST_CENTRE = "nearest_centre"
    REJECT_MULTIPLE = "reject"


#: ``DOMINANT``: the largest face must have at least this many times the box area of the next
#: largest. Measured on lfw-dev (see the module docstring).
DOMINANCE_RATIO = 1.5

#: The batch jobs' ``multi_face`` settings (indexer, training chips): the policy values, default first.
MULTI_FACE_SETTINGS = (Policy.DOMINANT.value, Policy.LARGEST.value, Policy.REJECT_MULTIPLE.value)


def policy_key(policy: Policy, dominance: float = DOMINANCE_RATIO) -> str:
    """The policy as a job fingerprint names it: its value, with the ratio for ``DOMINANT``
    (``"dominant@1.5"``), so a change of the ratio is a change of the job."""
    return f"{policy.value}@{dominance:g}" if policy is Policy.DOMINANT else policy.value


class HasBox(Protocol):
    @property
    def box(self) -> Box: ...


@dataclass(frozen=True, slots=True)
class QualityGate:
    """Thresholds a chosen face must meet; ``None`` = not checked."""

    min_face_size: float | None = None  # px, the box's shorter side (FaceQuality.face_size)
    min_blur: float | None = None  # variance of the Laplacian on the chip (FaceQuality.blur)

    def check(self, quality: FaceQuality, audience: Audience = Audience.BATCH) -> Rejection | None:
        """The first threshold ``quality`` fails (size, then blur), or None when it passes."""
        if self.min_face_size is not None and quality.face_size < self.min_face_size:
            return Rejection.of(Reject.FACE_TOO_SMALL, audience, value=quality.face_size, minimum=self.min_face_size)
        if self.min_blur is not None and quality.blur < self.min_blur:
            return Rejection.of(Reject.TOO_BLURRY, audience, value=quality.blur, minimum=self.min_blur)
        return None


def box_area(box: Box) -> float:
    """Area of a pixel box ``(x1, y1, x2, y2)``; a degenerate box has area 0."""
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def largest_first(boxes: Sequence[Box]) -> list[int]:
    """Indices of ``boxes`` by decreasing area (equal areas keep their order)."""
    return sorted(range(len(boxes)), key=lambda i: -box_area(boxes[i]))


def nearest_centre_index(boxes: Sequence[Box], image_shape: tuple[int, ...]) -> int:
    """Index of the box whose centre is nearest the centre of an ``(H, W, ...)`` image (the first of equals)."""
    cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0

    def distance(i: int) -> float:
        x1, y1, x2, y2 = boxes[i]
        return ((x1 + x2) / 2.0 - cx) ** 2 + ((y1 + y2) / 2.0 - cy) ** 2

    return min(range(len(boxes)), key=distance)


def visible_area(box: Box, image_shape: tuple[int, ...]) -> float:
    """Area of the part of ``box`` inside an ``(H, W, ...)`` image (a face cut by the frame counts
    by what the photo shows of it)."""
    height, width = float(image_shape[0]), float(image_shape[1])
    return box_area((max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height)))


def dominance(boxes: Sequence[Box], image_shape: tuple[int, ...]) -> tuple[int, float]:
    """``(index, ratio)``: the box with the largest visible area (the first of equals), and its
    visible area over the next largest one's (1.0 for a tie; ``inf`` for a single box, or when the
    next shows no area)."""
    if not boxes:
        raise ValueError("dominance of no boxes")
    areas = [visible_area(b, image_shape) for b in boxes]
    order = sorted(range(len(areas)), key=lambda i: -areas[i])
    if len(order) == 1 or areas[order[1]] <= 0.0:
        return order[0], float("inf")
    return order[0], areas[order[0]] / areas[order[1]]


def choose_face(
    faces: Sequence[HasBox],
    policy: Policy,
    *,
    image_shape: tuple[int, ...] | None = None,
    audience: Audience = Audience.BATCH,
    dominance_ratio: float = DOMINANCE_RATIO,
) -> int | Rejection:
    """Index of the face ``policy`` keeps, or why the photo is rejected (``NO_FACE``, ``MULTIPLE_FACES``).

    ``image_shape`` ``(H, W, ...)`` is needed by ``NEAREST_CENTRE`` and ``DOMINANT``;
    ``dominance_ratio`` is ``DOMINANT``'s ratio.
    """
    if policy in (Policy.NEAREST_CENTRE, Policy.DOMINANT) and image_shape is None:
        raise ValueError(f"the {policy.value} policy needs the image shape")
    if not faces:
        return Rejection.of(Reject.NO_FACE, audience)
    if len(faces) == 1:
        return 0
    if policy is Policy.REJECT_MULTIPLE:
        return Rejection.of(Reject.MULTIPLE_FACES, audience, faces=len(faces))
    boxes = [f.box for f in faces]
    if policy is Policy.LARGEST:
        return largest_first(boxes)[0]
    assert image_shape is not None  # checked above
    if policy is Policy.NEAREST_CENTRE:
        return nearest_centre_index(boxes, image_shape)
    index, ratio = dominance(boxes, image_shape)
    if ratio < dominance_ratio:
        text = _NONE_DOMINATES[audience].format(faces=len(faces), value=ratio, minimum=dominance_ratio)
        return Rejection(Reject.MULTIPLE_FACES.wire(audience), text)
    return index


#: The rejections that judge a photo that was read (any audience's spelling); all others are failures.
_OUTCOMES = frozenset(
    r.wire(a)
    for r in (Reject.NO_FACE, Reject.MULTIPLE_FACES, Reject.FACE_TOO_SMALL, Reject.TOO_BLURRY)
    for a in Audience
)


def is_failure(reason: str) -> bool:
    """Whether a rejection ``reason`` says the photo could not be read or analysed (``MISSING_FILE``,
    ``UNDECODABLE``, ``TOO_LARGE``, ``ERROR``, a decoder's own reason) rather than judged by the
    face choice or the quality gate."""
    return reason not in _OUTCOMES


def rejection_for_error(err: Exception) -> Rejection:
    """The batch rejection for an exception raised while reading or analysing one photo."""
    if isinstance(err, ImageDecodeError):
        return Rejection.of(Reject.UNDECODABLE, detail=f"{err.reason}: {err}")
    if isinstance(err, ImageTooLargeError):
        return Rejection.of(Reject.TOO_LARGE, detail=str(err))
    if isinstance(err, FaceSearchError):
        return Rejection(err.reason, str(err))
    return Rejection.of(Reject.ERROR, detail=f"{type(err).__name__}: {err}")


def process_photo(path: str, analyse: Callable[[np.ndarray], T]) -> T | Rejection:
    """``analyse(pixels)`` of the photo at ``path``, or the batch rejection of the photo; never raises
    for one photo's fault (the ladder in the module docstring)."""
    if not Path(path).is_file():
        return Rejection.of(Reject.MISSING_FILE, detail=path)
    try:
        return analyse(load_image(path))
    except Exception as err:  # one bad photo must not kill the job
        return rejection_for_error(err)
