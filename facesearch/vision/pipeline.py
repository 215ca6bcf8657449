"""The face pipeline: photo -> faces (box, score, landmarks, chip, embedding, quality).

detect (MMOD CNN over an image pyramid) -> 5-point landmarks -> 150x150 chip exactly
as dlib's ``get_face_chip`` -> batched embedding. Everything runs on onnxruntime and
numpy; models are loaded once when the pipeline is built, never at import.

Detection works under a budget (:mod:`facesearch.vision.detection_plan`): a photo whose dlib scan
would exceed ``PipelineConfig.detect_pixels`` is searched in a copy scaled to fit it, while
landmarks and chips are always taken from the photo's own pixels (boxes are mapped back first).
``detect_pixels=None`` is dlib's exact behaviour at every size (the parity mode); at the default,
photos under ~0.65 MP at the default 40 px minimum face are scanned exactly as dlib scans them.

Overexposed photos (a flash, a backlight): when a scan finds no face and the photo is overexposed,
it is scanned again in an exposure-normalised copy (:mod:`facesearch.vision.exposure`;
``PipelineConfig.exposure_rescue``, off in the parity mode). A photo with a face in the first scan
is processed exactly as before (bench/results/robustness.md).

Memory: a scan of more than :data:`TRIM_ABOVE_PIXELS` ends by giving the C heap's free memory back
to the system (glibc's ``malloc_trim``; elsewhere nothing), so a process's RSS returns to its
baseline after large photos instead of keeping its high-water mark (bench/results/detect_budget.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import cv2
import numpy as np

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import InvalidInputError, Reason
from facesearch.util.cancel import Checkpoint, checkpoint
from facesearch.vision.align import face_chip
from facesearch.vision.detection_plan import DetectionPlan, plan_detection
from facesearch.vision.detector import Detection, FaceDetector
from facesearch.vision.embedder import Embedder
from facesearch.vision.exposure import measure_exposure, rescue_copies
from facesearch.vision.landmarks import LandmarkPredictor
from facesearch.vision.nms import greedy_nms
from facesearch.vision.proposals import DEFAULT_MAX_PIXELS as DEFAULT_PROPOSAL_PIXELS
from facesearch.vision.proposals import FaceProposer, Proposal
from facesearch.vision.quality import FaceQuality, measure_quality
from facesearch.vision.selection import nearest_centre_index

Box = tuple[float, float, float, float]

#: The default detection budget, in pyramid pixels: the smallest budget that found every planted
#: face of 5% or more of the short side in 12 MP photos (bench/results/detect_budget.md); what it
#: states is the nominal 80 px window over the scale, 5.7% of a 4:3 photo's short side.
DEFAULT_DETECT_PIXELS = 2_600_000
#: The mode of a config that names none and has a budget (see :class:`DetectorMode`).
DEFAULT_DETECTOR_MODE = "budget"
MIN_DETECT_PIXELS = 10_000  # a 100x100 scan: below it no photo could hold a findable face
MIN_PROPOSAL_PIXELS = 256  # a 16x16 copy: the proposal network's smallest input
#: Scans larger than this (~50 MB of pyramid) trim the heap when done (a few ms).
TRIM_ABOVE_PIXELS = 1_000_000
#: Face chips cut between two cancellation checks in :meth:`FacePipeline.align` (~1 ms each).
ALIGN_CHECK_EVERY = 8


#: Cascade: a proposal's face is brought to this many pixels in its MMOD crop (MMOD's window is 80 px;
#: the margin absorbs BlazeFace's box size error, ~0.75-1.1x of MMOD's; 90 px in 192 px crops measured as accurate
#: on LFW pairs as 100 in 224 and faster, bench/results/cascade.md).
CASCADE_FACE_PX = 90
#: Cascade: the side of the square crop MMOD confirms a proposal in (the face and its context).
CASCADE_CROP_PX = 192
#: Cascade: an MMOD box belongs to its proposal when its centre lies within the proposal's box
#: grown by this share of its size on each side.
CASCADE_CENTRE_MARGIN = 0.25


class DetectorMode(StrEnum):
    """How faces are found (``PipelineConfig.detector_mode``)."""

    #: dlib's exact scan at every size (the parity mode; ``detect_pixels`` is not applied).
    EXACT = "exact"
    #: MMOD over the whole photo within ``detect_pixels`` (a scaled copy when the scan would be larger).
    BUDGET = "budget"
    #: BlazeFace proposes regions (:mod:`facesearch.vision.proposals`), MMOD confirms each in a small
    #: crop that puts the face near its window, so the boxes are MMOD's. Photos with no confirmed
    #: proposal get the BUDGET scan. Bundles without a proposal model run BUDGET.
    CASCADE = "cascade"


#: The detector modes a setting may choose (EXACT, dlib's parity scan, is not a setting of its own:
#: it is the mode without a detection budget).
DETECTOR_CHOICES = (DetectorMode.BUDGET.value, DetectorMode.CASCADE.value)


def detector_mode(value: str, what: str) -> DetectorMode:
    """A detector setting (``what`` names it in the error: a variable, a flag, an option) -> its mode;
    the one rule of ``FACESEARCH_DETECTOR``, ``facesearch embed --detector`` and ``--embed-options``."""
    setting = value.strip().lower()
    if setting not in DETECTOR_CHOICES:
        raise InvalidInputError(
            f"{what}={value!r}: expected one of {', '.join(DETECTOR_CHOICES)}", reason=Reason.BAD_CONFIG
        )
    return DetectorMode(setting)


def _heap_trimmer() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return None if trim is None else lambda: trim(0)


_TRIM_HEAP = _heap_trimmer()


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    #: Smallest face (px across) the detector must find. The MMOD window is 80 px, so
    #: 40 (the default, what the big cloud APIs promise) upsamples photos 2x; 80 is ~4x faster.
    min_face: int = 40
    #: dlib's ``adjust_threshold`` on the detector score (0 = dlib's default operating point).
    detection_threshold: float = 0.0
    #: onnxruntime intra-op threads per session (None = all cores of this process).
    threads: int | None = None
    max_batch: int = 32
    keep_chips: bool = False
    #: Detection budget in pyramid pixels (the area of the image the detector scans): a photo whose
    #: scan at ``min_face`` would be larger is searched in a copy scaled to fit, so its smallest
    #: face searched grows (:mod:`facesearch.vision.detection_plan`). None: no budget, dlib's exact
    #: scan at any size (parity mode; cost grows with the photo).
    detect_pixels: int | None = DEFAULT_DETECT_PIXELS
    #: The most a call naming its own smallest face (``detect(..., min_face=)``) may scan; None:
    #: ``detect_pixels``.
    max_detect_pixels: int | None = None
    #: When a photo gives no face and is overexposed (:mod:`facesearch.vision.exposure`), search
    #: again in an exposure-normalised copy (boxes from the copy, chips from the photo). None: on
    #: unless ``detect_pixels`` is None (the dlib-parity mode stays exactly dlib's).
    exposure_rescue: bool | None = None
    #: How faces are found (:class:`DetectorMode`). None: EXACT when ``detect_pixels`` is None (the
    #: parity mode), else :data:`DEFAULT_DETECTOR_MODE`.
    detector_mode: DetectorMode | None = None
    #: Cascade: the most pixels of the proposal network's largest scaled copy (photos above it are
    #: searched for proposals down to a larger face, as the MMOD budget does).
    proposal_pixels: int = DEFAULT_PROPOSAL_PIXELS

    @property
    def mode(self) -> DetectorMode:
        if self.detector_mode is not None:
            return self.detector_mode
        return DetectorMode.EXACT if self.detect_pixels is None else DetectorMode(DEFAULT_DETECTOR_MODE)

    @property
    def rescues_exposure(self) -> bool:
        return self.mode is not DetectorMode.EXACT if self.exposure_rescue is None else self.exposure_rescue

    def __post_init__(self) -> None:
        if self.min_face < 10:
            raise InvalidInputError(f"min_face must be >= 10 px, got {self.min_face}", reason=Reason.BAD_CONFIG)
        if self.max_batch < 1:
            raise InvalidInputError(f"max_batch must be >= 1, got {self.max_batch}", reason=Reason.BAD_CONFIG)
        if self.proposal_pixels < MIN_PROPOSAL_PIXELS:
            raise InvalidInputError(
                f"proposal_pixels must be >= {MIN_PROPOSAL_PIXELS}, got {self.proposal_pixels}",
                reason=Reason.BAD_CONFIG,
            )
        for name in ("detect_pixels", "max_detect_pixels"):
            value = getattr(self, name)
            if value is not None and value < MIN_DETECT_PIXELS:
                raise InvalidInputError(
                    f"{name} must be >= {MIN_DETECT_PIXELS} pixels or None, got {value}", reason=Reason.BAD_CONFIG
                )


@dataclass(frozen=True, slots=True, eq=False)
class Face:
    box: Box  # (x1, y1, x2, y2) pixels, x2/y2 exclusive
    score: float  # detector confidence (dlib's MMOD score; > 0 is a detection)
    landmarks: np.ndarray  # (5, 2) float32 x, y
    embedding: np.ndarray  # (d,) float32, L2-normalised
    norm: float  # L2 norm of the chip's raw descriptor (raw = embedding * norm unless the bundle flip-averages)
    quality: FaceQuality
    chip: np.ndarray | None = field(default=None, repr=False)  # (150, 150, 3) uint8 when kept

    @property
    def raw_descriptor(self) -> np.ndarray:
        """dlib's own 128-d descriptor, as ``compute_face_descriptor`` returns it (bundles without
        flip averaging; with it, the flip-averaged embedding at the chip's descriptor norm)."""
        return (self.embedding * self.norm).astype(np.float32)

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return ((x1 + x2) / 2.0, (y1 + y2) / 2.0)


class FacePipeline:
    def __init__(self, bundle: ModelBundle, config: PipelineConfig | None = None) -> None:
        self.bundle = bundle
        self.config = config or PipelineConfig()
        threads = self.config.threads
        self.detector = FaceDetector.from_onnx(
            bundle.path("detector"), bundle.section("detector"), intra_op_threads=threads
        )
        proposals = bundle.proposals_model() if self.config.mode is DetectorMode.CASCADE else None
        #: BlazeFace proposals of the cascade; None when the mode is not CASCADE or the bundle has none.
        self.proposer = None if proposals is None else FaceProposer.from_onnx(*proposals, intra_op_threads=threads)
        self.landmarks = LandmarkPredictor.from_file(bundle.path("landmarks"))
        self.embedder = Embedder(
            bundle.path("embedder"),
            chip_size=bundle.chip_size,
            max_batch=self.config.max_batch,
            intra_op_threads=threads,
            flip_average=bundle.flip_average,
        )

    def plan(self, width: int, height: int, min_face: int | None = None) -> DetectionPlan:
        """How a ``width`` x ``height`` photo is scanned: at the configured minimum face within the
        budget, or at the caller's ``min_face`` (a promise, up to ``max_detect_pixels``; else
        ``MIN_FACE_TOO_SMALL``)."""
        c = self.config
        return plan_detection(
            width,
            height,
            min_face=c.min_face if min_face is None else min_face,
            window=min(self.detector.config.window),
            budget=None if c.mode is DetectorMode.EXACT else c.detect_pixels,
            max_pixels=c.max_detect_pixels,
            requested=min_face is not None,
        )

    def detect(
        self, image: np.ndarray, plan: DetectionPlan | None = None, cancel: Checkpoint | None = None
    ) -> list[Detection]:
        """Faces in a photo, best first, boxes in its pixels; ``plan`` defaults to :meth:`plan`'s.
        ``cancel`` is checked between pyramid levels and detector tiles."""
        _check_image(image)
        height, width = image.shape[:2]
        plan = plan or self.plan(width, height)
        if (plan.width, plan.height) != (width, height):
            raise InvalidInputError(f"a plan for {plan.width}x{plan.height} used on a {width}x{height} photo")
        if self.proposer is not None:
            found = self.detect_cascade(image, min(float(self.config.min_face), plan.min_face), cancel)
            if found:
                return found
        if plan.exact:
            found = self._detect_exposed(
                image,
                lambda pixels: self.detector.detect(
                    pixels, upsample=plan.upsample, adjust_threshold=self.config.detection_threshold, cancel=cancel
                ),
            )
            _after_scan(plan)
            return found
        return self.detect_scan(scan_copy(image, plan), plan, cancel)

    def _detect_exposed(self, image: np.ndarray, run: Callable[[np.ndarray], list[Detection]]) -> list[Detection]:
        """``run(image)``; when that finds nothing in an overexposed photo (and the config rescues
        exposure), ``run`` on its exposure-normalised copies until one gives a face (:func:`rescue_copies`;
        same geometry, so the same boxes)."""
        found = run(image)
        if found or not self.config.rescues_exposure:
            return found
        exposure = measure_exposure(image)
        for copy in rescue_copies(image, exposure) if exposure.overexposed else ():
            found = run(copy)
            if found:
                break
        return found

    def propose(self, image: np.ndarray, min_face: float) -> list[Proposal]:
        """The cascade's BlazeFace proposals for a photo (empty when the cascade is off)."""
        if self.proposer is None:
            return []
        return self.proposer.propose(image, min_face, self.config.proposal_pixels)

    def detect_cascade(self, image: np.ndarray, min_face: float, cancel: Checkpoint | None = None) -> list[Detection]:
        """The cascade (:attr:`DetectorMode.CASCADE`): MMOD detections, best first, in photo pixels, of
        the faces BlazeFace proposes down to ``min_face``; empty when none is confirmed (or the
        bundle has no proposal model). Crops scaled to put faces on the scan's own pyramid scales
        (base x (5/6)^k) measured worse on LFW pairs (98.85-98.95% against 99.05%,
        bench/results/cascade.md), so each face is brought to :data:`CASCADE_FACE_PX` exactly."""
        _check_image(image)
        checkpoint(cancel, "face proposals")
        proposals = self.propose(image, min_face)
        if not proposals:
            return []
        fill = tuple(round(v) for v in self.detector.config.avg_rgb)  # what the scan's padding is
        crops, transforms = zip(*(_proposal_crop(image, p, fill) for p in proposals), strict=True)
        checkpoint(cancel, "the cascade's crops")
        per_crop = self.detector.detect_batch(
            list(crops), 0, self.config.detection_threshold, exact=False, cancel=cancel
        )
        boxes, scores = [], []
        for proposal, (sx, sy, ox, oy), found in zip(proposals, transforms, per_crop, strict=True):
            px1, py1, px2, py2 = proposal.box
            mx, my = CASCADE_CENTRE_MARGIN * (px2 - px1), CASCADE_CENTRE_MARGIN * (py2 - py1)
            for d in found:
                box = (d.box[0] / sx + ox, d.box[1] / sy + oy, d.box[2] / sx + ox, d.box[3] / sy + oy)
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                if px1 - mx <= cx <= px2 + mx and py1 - my <= cy <= py2 + my:
                    boxes.append(box)
                    scores.append(d.score)
        if not boxes:
            return []
        order = np.argsort(-np.asarray(scores), kind="stable")
        rects = np.round(np.asarray(boxes)[order]).astype(np.int64)
        rects[:, 2:] -= 1  # dlib's inclusive rectangles
        c = self.detector.config
        keep = order[greedy_nms(rects, c.nms_iou, c.nms_covered)]
        return [Detection(boxes[i], scores[i]) for i in keep]

    def detect_scan(self, scan: np.ndarray, plan: DetectionPlan, cancel: Checkpoint | None = None) -> list[Detection]:
        """Faces found in a scaled plan's copy (:func:`scan_copy`, or a reduced decode of that size),
        boxes mapped back to the photo's pixels."""
        if plan.exact or scan.shape[:2] != (plan.scan_height, plan.scan_width):
            raise InvalidInputError(
                f"detect_scan needs a {plan.scan_width}x{plan.scan_height} copy, got {scan.shape[1]}x{scan.shape[0]}"
            )
        found = self._detect_exposed(
            scan,
            lambda pixels: self.detector.detect(
                pixels, upsample=0, adjust_threshold=self.config.detection_threshold, exact=False, cancel=cancel
            ),
        )  # a scaled copy is no dlib scan: its pyramid is built the fast way
        _after_scan(plan)
        return _scan_to_photo(found, plan)

    def detect_reduced(
        self, scan: np.ndarray, plan: DetectionPlan, cancel: Checkpoint | None = None
    ) -> list[Detection]:
        """What :meth:`detect` gives the full photo, from a scaled plan's copy only (a reduced decode):
        with the cascade on, its proposals are searched in the copy down to the same smallest face (in
        photo pixels) as on the full photo and confirmed there; a copy with no confirmed proposal gets
        :meth:`detect_scan`. Boxes in the photo's pixels."""
        if self.proposer is not None:
            scale = max(plan.width / plan.scan_width, plan.height / plan.scan_height)
            found = self.detect_cascade(scan, min(float(self.config.min_face), plan.min_face) / scale, cancel)
            if found:
                return _scan_to_photo(found, plan)
        return self.detect_scan(scan, plan, cancel)

    def align(
        self, image: np.ndarray, boxes: Sequence[Box], cancel: Checkpoint | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (n, 5, 2) and chips (n, 150, 150, 3) for the given boxes (``cancel`` is checked
        every :data:`ALIGN_CHECK_EVERY` faces)."""
        if not boxes:
            return self.no_faces()
        checkpoint(cancel, "landmarks")
        marks = self.landmarks.predict_many(image, list(boxes))
        chips = []
        for i, m in enumerate(marks):
            if i % ALIGN_CHECK_EVERY == 0:
                checkpoint(cancel, "face chips")
            chips.append(face_chip(image, m, size=self.bundle.chip_size, padding=self.bundle.chip_padding))
        return marks, np.stack(chips)

    def no_faces(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`align`'s result for no boxes: empty landmarks and chips."""
        size = self.bundle.chip_size
        return np.zeros((0, 5, 2), np.float32), np.zeros((0, size, size, 3), np.uint8)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        return self.embedder.embed(chips)[0]

    def analyze(self, image: np.ndarray) -> list[Face]:
        return self.analyze_many([image])[0]

    def analyze_many(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces of each image; embeddings are computed in one batch across all images."""
        per_image = []
        for image in images:
            dets = self.detect(image)
            marks, chips = self.align(image, [d.box for d in dets])
            per_image.append((dets, marks, chips))
        all_chips = [c for _, _, chips in per_image for c in chips]
        if all_chips:
            embeddings, norms = self.embedder.embed(np.stack(all_chips))
        else:
            embeddings, norms = np.zeros((0, self.embedder.dim), np.float32), np.zeros(0, np.float32)
        out: list[list[Face]] = []
        row = 0
        for dets, marks, chips in per_image:
            faces = []
            for det, mark, chip in zip(dets, marks, chips, strict=True):
                faces.append(
                    Face(
                        box=det.box,
                        score=det.score,
                        landmarks=mark,
                        embedding=embeddings[row],
                        norm=float(norms[row]),
                        quality=measure_quality(det.box, chip),
                        chip=chip if self.config.keep_chips else None,
                    )
                )
                row += 1
            out.append(faces)
        return out


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidInputError(
            f"image must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}", reason=Reason.IMAGE_LAYOUT
        )


def _proposal_crop(
    image: np.ndarray, proposal: Proposal, fill: tuple[int, ...] = (0, 0, 0)
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The square :data:`CASCADE_CROP_PX` crop that holds ``proposal``'s face centred (``fill`` beyond the
    photo: the detector's mean colour, which its input normalisation turns into the zero the scan's
    pyramid pads with) at :data:`CASCADE_FACE_PX` pixels. Returns it and how a crop pixel maps back:
    ``x = x_crop / sx + ox``."""
    x1, y1, x2, y2 = proposal.box
    scale = CASCADE_FACE_PX / max(proposal.size, 1.0)
    half = CASCADE_CROP_PX / (2 * scale)  # the crop's half side in photo pixels
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    h, w = image.shape[:2]
    left, top = round(cx - half), round(cy - half)
    right, bottom = round(cx + half), round(cy + half)
    crop = np.empty((CASCADE_CROP_PX, CASCADE_CROP_PX, 3), np.uint8)
    crop[:] = fill
    l0, t0, r0, b0 = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    if r0 <= l0 or b0 <= t0:
        return crop, (scale, scale, float(left), float(top))
    sx = sy = CASCADE_CROP_PX / (right - left)
    dx0, dy0 = round((l0 - left) * sx), round((t0 - top) * sy)
    dw = max(1, min(CASCADE_CROP_PX - dx0, round((r0 - l0) * sx)))
    dh = max(1, min(CASCADE_CROP_PX - dy0, round((b0 - t0) * sy)))
    region = image[t0:b0, l0:r0]
    interp = cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR
    crop[dy0 : dy0 + dh, dx0 : dx0 + dw] = cv2.resize(region, (dw, dh), interpolation=interp)
    # the pasted region spans photo [l0, r0) onto crop [dx0, dx0 + dw): its own scale per axis
    fx, fy = dw / (r0 - l0), dh / (b0 - t0)
    return crop, (fx, fy, l0 - dx0 / fx, t0 - dy0 / fy)


def _scan_to_photo(found: list[Detection], plan: DetectionPlan) -> list[Detection]:
    """Detections in a scaled plan's copy, boxes mapped back to the photo's pixels."""
    sx, sy = plan.width / plan.scan_width, plan.height / plan.scan_height
    return [Detection((d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy), d.score) for d in found]


def _after_scan(plan: DetectionPlan) -> None:
    if plan.pyramid_pixels > TRIM_ABOVE_PIXELS and _TRIM_HEAP is not None:
        _TRIM_HEAP()


def scan_copy(image: np.ndarray, plan: DetectionPlan) -> np.ndarray:
    """The copy a scaled plan scans, from the photo or a reduced decode of it: area-averaged when
    shrinking, bilinear when enlarging (pixel edges map linearly, so a box's edges scale by
    ``width / scan_width``)."""
    size = (plan.scan_width, plan.scan_height)
    if image.shape[:2] == (plan.scan_height, plan.scan_width):
        return image
    shrink = image.shape[1] > plan.scan_width
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def nearest_centre(faces: Sequence[Face], image_shape: tuple[int, ...]) -> Face | None:
    """The face whose box centre is nearest the image centre (the `embed` contract), by
    :func:`facesearch.vision.selection.nearest_centre_index`."""
    return faces[nearest_centre_index([f.box for f in faces], image_shape)] if faces else None
