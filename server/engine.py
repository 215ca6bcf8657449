"""Photo -> faces for the server: decode, detect, align on a worker thread; embed in batches.

The CPU stages of one request run on one worker thread (numpy, OpenCV and onnxruntime
release the GIL); the request's :class:`~server.admission.Deadline` (deadline + cancel flag) is
checked between stages and at checkpoints inside them (pyramid levels, detector tiles, face chips,
embedding batches), so abandoned work stops within one checkpoint, and the awaiting coroutine
returns only once the thread has stopped (:func:`server.admission.run_stoppable`).

Faces per photo are capped (``max_faces``, FACESEARCH_MAX_FACES): of more faces found, the largest
``max_faces`` are aligned and embedded, and the result says how many were found in all
(``faces_found``), so a crowd photo costs a bounded amount of work and the reply says it was
limited. Embedding goes through the :class:`EmbedBatcher`, which batches chips across concurrent
requests. Each stage's duration is reported to ``observe``.

Before any pixel is decoded, :meth:`FaceEngine.survey` reads the photo's header and plans its
detection (:mod:`facesearch.vision.detection_plan`): the smallest face searched, and the memory
the request will hold, which admission control counts. A large JPEG scanned at half its size or
less is decoded twice: first reduced in the DCT domain for the detector (the full photo is not
held while the pyramid is), then in full for landmarks and chips, only if a face was found. With the
detection cascade on (FACESEARCH_DETECTOR=cascade), its proposals are found and confirmed in the
reduced decode too, boxes mapped to the photo's pixels; landmarks and chips still come from the full one.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from facesearch.vision.decode import ImageHeader, decode_image, read_header
from facesearch.vision.detection_plan import DetectionPlan, work_bytes
from facesearch.vision.detector import Detection
from facesearch.vision.image_limits import DecodeLimits
from facesearch.vision.pipeline import Face, FacePipeline, scan_copy
from facesearch.vision.quality import FaceQuality, measure_quality
from facesearch.vision.selection import largest_first
from server.admission import Busy, Deadline, run_stoppable
from server.batcher import EmbedBatcher

Observe = Callable[[str, float], None]


#: A scan at this scale or less decodes a JPEG reduced first (DCT scaling gives 1/2, 1/4, 1/8).
REDUCED_DECODE_SCALE = 0.5


@dataclass(frozen=True, slots=True)
class PhotoSurvey:
    """What a photo's header tells before decoding: its size, how it will be scanned, its cost (bytes)."""

    header: ImageHeader
    plan: DetectionPlan
    cost: int
    min_face: int | None = None  # the request's own smallest face, if it named one


@dataclass(frozen=True, slots=True)
class FoundFace:
    """A detected, aligned face before embedding."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray  # (5, 2)
    quality: FaceQuality


@dataclass(frozen=True, slots=True)
class PreparedPhoto:
    width: int
    height: int
    found: list[FoundFace]  # largest first
    chips: np.ndarray  # (n, s, s, 3) uint8, row i for found[i]
    plan: DetectionPlan | None = None  # what the detector searched
    faces_found: int = -1  # faces the detector found (more than found[] when capped); -1: len(found)

    @property
    def total_faces(self) -> int:
        return len(self.found) if self.faces_found < 0 else self.faces_found


@dataclass(frozen=True, slots=True)
class AnalyzedPhoto:
    width: int
    height: int
    faces: list[Face]  # largest first; embeddings are zeros when not embedded
    plan: DetectionPlan | None = None  # what the detector searched
    faces_found: int = -1  # faces the detector found (more than faces[] when capped); -1: len(faces)

    @property
    def total_faces(self) -> int:
        return len(self.faces) if self.faces_found < 0 else self.faces_found


class FaceEngine:
    def __init__(
        self,
        pipeline: FacePipeline,
        batcher: EmbedBatcher,
        executor: ThreadPoolExecutor,
        limits: DecodeLimits,
        observe: Observe,
        *,
        max_faces: int | None = None,
    ) -> None:
        self.max_faces = max_faces  # None: no cap (the service sets it from FACESEARCH_MAX_FACES)
        self.busy = Busy()  # worker threads executing a request's stages now
        self.pipeline = pipeline
        self.batcher = batcher
        self.executor = executor
        self.limits = limits
        self.observe = observe
        self.dim = pipeline.embedder.dim

    def survey(self, data: bytes, min_face: int | None = None) -> PhotoSurvey:
        """Header, detection plan and cost of a photo (fast: no pixel is decoded). Raises the decode
        errors a header shows, and ``MIN_FACE_TOO_SMALL`` for a ``min_face`` the server cannot search."""
        header = read_header(data, self.limits)
        plan = self.pipeline.plan(header.width, header.height, min_face)
        return PhotoSurvey(header, plan, work_bytes(plan), min_face)

    def _decode_and_detect(
        self, data: bytes, survey: PhotoSurvey, deadline: Deadline
    ) -> tuple[np.ndarray | None, list[Detection], DetectionPlan]:
        """The photo's pixels (None when no face was found on the reduced path), its detections and the plan used."""
        plan = survey.plan
        t0 = time.perf_counter()
        if not plan.exact and survey.header.reducible and plan.scale <= REDUCED_DECODE_SCALE:
            scan = scan_copy(decode_image(data, self.limits, reduce_to=(plan.scan_width, plan.scan_height)), plan)
            t1 = time.perf_counter()
            deadline.check("detect")
            detections = self.pipeline.detect_reduced(scan, plan, deadline)
            del scan
            t2 = time.perf_counter()
            rgb = decode_image(data, self.limits) if detections else None
            self.observe("decode", t1 - t0 + time.perf_counter() - t2)
            self.observe("detect", t2 - t1)
            return rgb, detections, plan
        rgb = decode_image(data, self.limits)
        t1 = time.perf_counter()
        self.observe("decode", t1 - t0)
        deadline.check("detect")
        if rgb.shape[:2] != (plan.height, plan.width):  # a header that under-reports (a GIF canvas)
            plan = self.pipeline.plan(int(rgb.shape[1]), int(rgb.shape[0]), survey.min_face)
        detections = self.pipeline.detect(rgb, plan, deadline)
        self.observe("detect", time.perf_counter() - t1)
        return rgb, detections, plan

    def prepare(
        self, data: bytes, deadline: Deadline, largest_only: bool, survey: PhotoSurvey | None = None
    ) -> PreparedPhoto:
        """Decode, detect and align (blocking; run on a worker thread). Of more than ``max_faces``
        faces, the largest ``max_faces`` are aligned; ``faces_found`` counts them all."""
        deadline.check("decode")
        survey = survey or self.survey(data)
        rgb, detections, plan = self._decode_and_detect(data, survey, deadline)
        order = largest_first([d.box for d in detections])  # LARGEST_FACE takes the first
        keep = 1 if largest_only else (len(order) if self.max_faces is None else self.max_faces)
        dets = [detections[i] for i in order[:keep]]
        deadline.check("align")
        t2 = time.perf_counter()
        # rgb is None only when nothing was found (the reduced path then skips the full decode)
        marks, chips = (
            self.pipeline.align(rgb, [d.box for d in dets], deadline) if rgb is not None else self.pipeline.no_faces()
        )
        found = []
        for i, (d, m, c) in enumerate(zip(dets, marks, chips, strict=True)):
            if i % 16 == 15:
                deadline.check("face quality")
            found.append(FoundFace(d.box, d.score, m, measure_quality(d.box, c)))
        self.observe("align", time.perf_counter() - t2)
        return PreparedPhoto(plan.width, plan.height, found, chips, plan, len(detections))

    async def run(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def prepare_async(
        self, data: bytes, deadline: Deadline, largest_only: bool, survey: PhotoSurvey | None = None
    ) -> PreparedPhoto:
        """:meth:`prepare` on a worker; when the caller is cancelled, returns only once the worker stopped."""
        work = functools.partial(self.prepare, data, deadline, largest_only, survey)
        return await run_stoppable(self.executor, deadline, work, self.busy)

    async def embed(self, photo: PreparedPhoto, deadline: Deadline) -> list[Face]:
        """Embed every face of ``photo``."""
        return await self.embed_rows([(photo, i) for i in range(len(photo.found))], deadline)

    async def embed_rows(self, rows: list[tuple[PreparedPhoto, int]], deadline: Deadline) -> list[Face]:
        """Embed the given ``(photo, face row)`` pairs in one batch -> faces with embeddings."""
        if not rows:
            return []
        deadline.check("embed")
        t0 = time.perf_counter()
        chips = np.stack([photo.chips[i] for photo, i in rows])
        embeddings, norms = await self.batcher.embed(chips, deadline)
        self.observe("embed", time.perf_counter() - t0)
        out = []
        for j, (photo, i) in enumerate(rows):
            f = photo.found[i]
            out.append(
                Face(
                    box=f.box,
                    score=f.score,
                    landmarks=f.landmarks,
                    embedding=embeddings[j],
                    norm=float(norms[j]),
                    quality=f.quality,
                )
            )
        return out

    async def analyze(
        self, data: bytes, deadline: Deadline, *, largest_only: bool, survey: PhotoSurvey | None = None
    ) -> AnalyzedPhoto:
        photo = await self.prepare_async(data, deadline, largest_only, survey)
        faces = await self.embed(photo, deadline)
        return AnalyzedPhoto(photo.width, photo.height, faces, photo.plan, photo.total_faces)

    def unembedded(self, photo: PreparedPhoto) -> AnalyzedPhoto:
        zero = np.zeros(self.dim, np.float32)
        faces = [
            Face(box=f.box, score=f.score, landmarks=f.landmarks, embedding=zero, norm=0.0, quality=f.quality)
            for f in photo.found
        ]
        return AnalyzedPhoto(photo.width, photo.height, faces, photo.plan, photo.total_faces)
