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
    ``LARGEST`` keeps the face with the largest box area (the first of equals);
    ``NEAREST_CENTRE`` the one whose box centre is nearest the image centre (``facesearch
    embed``); ``REJECT_MULTIPLE`` rejects the photo with ``MULTIPLE_FACES``. A photo with no face
    is ``NO_FACE`` under every policy. The values ``"largest"`` and ``"reject"`` are the
    indexer's and training's ``multi_face`` settings.

Quality gate
    :class:`QualityGate` rejects the chosen face when its box's shorter side is below
    ``min_face_size`` (``FACE_TOO_SMALL``), else when its chip's blur measure is below
    ``min_blur`` (``TOO_BLURRY``); a threshold left at ``None`` is not checked.

Who uses what today: the Enroll RPC: ``REJECT_MULTIPLE`` (``LARGEST`` with
``use_largest_face``) and the server's size and blur gate; the indexer: its ``multi_face``
policy (``REJECT_MULTIPLE`` by default) and a blur gate (``min_blur``, 0 by default);
training chips: its ``multi_face`` policy, no gate; ``facesearch embed``: ``NEAREST_CENTRE``
(or every face with ``--all-faces``), no gate. Identify and Detect with ``LARGEST_FACE`` take
the first of :func:`largest_first`.
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

    LARGEST = "largest"
    NEAREST_CENTRE = "nearest_centre"
    REJECT_MULTIPLE = "reject"


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


def choose_face(
    faces: Sequence[HasBox],
    policy: Policy,
    *,
    image_shape: tuple[int, ...] | None = None,
    audience: Audience = Audience.BATCH,
) -> int | Rejection:
    """Index of the face ``policy`` keeps, or why the photo is rejected (``NO_FACE``, ``MULTIPLE_FACES``).

    ``image_shape`` is needed by ``NEAREST_CENTRE``.
    """
    if not faces:
        return Rejection.of(Reject.NO_FACE, audience)
    if len(faces) > 1 and policy is Policy.REJECT_MULTIPLE:
        return Rejection.of(Reject.MULTIPLE_FACES, audience, faces=len(faces))
    boxes = [f.box for f in faces]
    if policy is Policy.NEAREST_CENTRE:
        if image_shape is None:
            raise ValueError("the nearest-centre policy needs the image shape")
        return nearest_centre_index(boxes, image_shape)
    return max(range(len(boxes)), key=lambda i: box_area(boxes[i]))


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
