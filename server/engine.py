"""Photo -> faces for the server: decode, detect, align on a worker thread; embed in batches.

The CPU stages of one request run on one worker thread (numpy, OpenCV and onnxruntime
release the GIL); the request's deadline is checked between stages, so abandoned work stops
at the next stage boundary. Embedding goes through the :class:`EmbedBatcher`, which batches
chips across concurrent requests. Each stage's duration is reported to ``observe``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from facesearch.vision.decode import decode_image
from facesearch.vision.image_limits import DecodeLimits
from facesearch.vision.pipeline import Face, FacePipeline
from facesearch.vision.quality import FaceQuality, measure_quality
from facesearch.vision.selection import largest_first
from server.admission import Deadline
from server.batcher import EmbedBatcher

Observe = Callable[[str, float], None]


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


@dataclass(frozen=True, slots=True)
class AnalyzedPhoto:
    width: int
    height: int
    faces: list[Face]  # largest first; embeddings are zeros when not embedded


class FaceEngine:
    def __init__(
        self,
        pipeline: FacePipeline,
        batcher: EmbedBatcher,
        executor: ThreadPoolExecutor,
        limits: DecodeLimits,
        observe: Observe,
    ) -> None:
        self.pipeline = pipeline
        self.batcher = batcher
        self.executor = executor
        self.limits = limits
        self.observe = observe
        self.dim = pipeline.embedder.dim

    def prepare(self, data: bytes, deadline: Deadline, largest_only: bool) -> PreparedPhoto:
        """Decode, detect and align (blocking; run on a worker thread)."""
        deadline.check("decode")
        t0 = time.perf_counter()
        rgb = decode_image(data, self.limits)
        t1 = time.perf_counter()
        self.observe("decode", t1 - t0)
        deadline.check("detect")
        detections = self.pipeline.detect(rgb)
        order = largest_first([d.box for d in detections])  # LARGEST_FACE takes the first
        dets = [detections[i] for i in (order[:1] if largest_only else order)]
        t2 = time.perf_counter()
        self.observe("detect", t2 - t1)
        deadline.check("align")
        marks, chips = self.pipeline.align(rgb, [d.box for d in dets])
        found = [
            FoundFace(d.box, d.score, m, measure_quality(d.box, c)) for d, m, c in zip(dets, marks, chips, strict=True)
        ]
        self.observe("align", time.perf_counter() - t2)
        return PreparedPhoto(int(rgb.shape[1]), int(rgb.shape[0]), found, chips)

    async def run(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def prepare_async(self, data: bytes, deadline: Deadline, largest_only: bool) -> PreparedPhoto:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.prepare, data, deadline, largest_only)

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

    async def analyze(self, data: bytes, deadline: Deadline, *, largest_only: bool) -> AnalyzedPhoto:
        photo = await self.prepare_async(data, deadline, largest_only)
        faces = await self.embed(photo, deadline)
        return AnalyzedPhoto(photo.width, photo.height, faces)

    def unembedded(self, photo: PreparedPhoto) -> AnalyzedPhoto:
        zero = np.zeros(self.dim, np.float32)
        faces = [
            Face(box=f.box, score=f.score, landmarks=f.landmarks, embedding=zero, norm=0.0, quality=f.quality)
            for f in photo.found
        ]
        return AnalyzedPhoto(photo.width, photo.height, faces)
