"""The face pipeline: photo -> faces (box, score, landmarks, chip, embedding, quality).

detect (MMOD CNN over an image pyramid) -> 5-point landmarks -> 150x150 chip exactly
as dlib's ``get_face_chip`` -> batched embedding. Everything runs on onnxruntime and
numpy; models are loaded once when the pipeline is built, never at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import InvalidInputError, Reason
from facesearch.vision.align import face_chip
from facesearch.vision.detector import Detection, FaceDetector, upsample_for_min_face
from facesearch.vision.embedder import Embedder
from facesearch.vision.landmarks import LandmarkPredictor
from facesearch.vision.quality import FaceQuality, measure_quality
from facesearch.vision.selection import nearest_centre_index

Box = tuple[float, float, float, float]


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

    def __post_init__(self) -> None:
        if self.min_face < 10:
            raise InvalidInputError(f"min_face must be >= 10 px, got {self.min_face}", reason=Reason.BAD_CONFIG)
        if self.max_batch < 1:
            raise InvalidInputError(f"max_batch must be >= 1, got {self.max_batch}", reason=Reason.BAD_CONFIG)


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
        self.landmarks = LandmarkPredictor.from_file(bundle.path("landmarks"))
        self.embedder = Embedder(
            bundle.path("embedder"),
            chip_size=bundle.chip_size,
            max_batch=self.config.max_batch,
            intra_op_threads=threads,
            flip_average=bundle.flip_average,
        )
        self.upsample = upsample_for_min_face(self.config.min_face)

    def detect(self, image: np.ndarray) -> list[Detection]:
        _check_image(image)
        return self.detector.detect(image, upsample=self.upsample, adjust_threshold=self.config.detection_threshold)

    def align(self, image: np.ndarray, boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (n, 5, 2) and chips (n, 150, 150, 3) for the given boxes."""
        if not boxes:
            size = self.bundle.chip_size
            return np.zeros((0, 5, 2), np.float32), np.zeros((0, size, size, 3), np.uint8)
        marks = self.landmarks.predict_many(image, list(boxes))
        chips = np.stack(
            [face_chip(image, m, size=self.bundle.chip_size, padding=self.bundle.chip_padding) for m in marks]
        )
        return marks, chips

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


def nearest_centre(faces: Sequence[Face], image_shape: tuple[int, ...]) -> Face | None:
    """The face whose box centre is nearest the image centre (the `embed` contract), by
    :func:`facesearch.vision.selection.nearest_centre_index`."""
    return faces[nearest_centre_index([f.box for f in faces], image_shape)] if faces else None
