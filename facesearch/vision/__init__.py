"""The face pipeline: safe photo decoding and limits, the MMOD detector and its pyramid, 5-point
landmarks, chip alignment, the embedder, quality signals, and which face of a photo a caller takes.

Layer: pipeline. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs |
client) > storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors |
util | api) > reasons.

Modules (and the tests that cover them):

- ``align``: The aligned face chip, cut exactly as dlib's ``get_face_chip(img, shape, 150, 0.25)``
  cuts it. Tests: ``tests/integration/test_parity_landmarks_chips.py``,
  ``tests/unit/test_landmarks_align.py``.
- ``decode``: Decode any supported photo safely into a C-contiguous HxWx3 uint8 RGB array. Tests:
  ``tests/integration/test_cascade.py``, ``tests/integration/test_checkpoint_export.py``,
  ``tests/integration/test_detect_budget.py``, ``tests/integration/test_exposure_pipeline.py``,
  ``tests/integration/test_flip_average.py``, ``tests/integration/test_indexer_images.py``,
  ``tests/integration/test_pipeline_embed.py``, ``tests/integration/test_server_detector.py``,
  ``tests/integration/test_training_export.py``, ``tests/unit/test_decode.py``,
  ``tests/unit/test_decode_fuzz.py``, ``tests/unit/test_decode_reduced.py``,
  ``tests/unit/test_exposure.py``.
- ``detection_plan``: How much of a photo the face detector scans: a budget in pyramid pixels, and
  what it buys. Tests: ``tests/integration/test_server_large_photos.py``,
  ``tests/unit/test_detection_plan.py``.
- ``detector``: Face detection with dlib's MMOD CNN detector, exported to ONNX, run by onnxruntime.
  Tests: ``tests/integration/test_cascade.py``, ``tests/integration/test_detect_budget.py``,
  ``tests/integration/test_detector_int8.py``, ``tests/integration/test_parity_detector.py``,
  ``tests/integration/test_server_detector.py``, ``tests/unit/test_detector.py``.
- ``embedder``: The face embedder: aligned 150x150 RGB chips -> 128-d descriptors, via onnxruntime.
  Tests: ``tests/integration/test_flip_average.py``, ``tests/integration/test_parity_embedder.py``.
- ``exposure``: Overexposed photos (a flash, a backlight): measuring it, and a darker copy to detect
  faces in. Tests: ``tests/integration/test_exposure_pipeline.py``, ``tests/unit/test_exposure.py``.
- ``image_limits``: Size limits a photo must meet before its pixels are decoded. Tests:
  ``tests/integration/test_server_detector.py``.
- ``landmarks``: Five-point face landmarks, computed exactly as dlib's ``shape_predictor`` does.
  Tests: ``tests/integration/test_parity_landmarks_chips.py``,
  ``tests/unit/test_landmarks_align.py``.
- ``nms``: dlib's greedy non-maximum suppression for MMOD detections. Tests:
  ``tests/unit/test_detector.py``.
- ``onnx_session``: Creating onnxruntime sessions the one way facesearch does it. Tests: through its
  callers.
- ``pipeline``: The face pipeline: photo -> faces (box, score, landmarks, chip, embedding, quality).
  Tests: ``tests/integration/test_cascade.py``, ``tests/integration/test_checkpoint_export.py``,
  ``tests/integration/test_detect_budget.py``, ``tests/integration/test_exposure_pipeline.py``,
  ``tests/integration/test_flip_average.py``, ``tests/integration/test_indexer_images.py``,
  ``tests/integration/test_pipeline_embed.py``, ``tests/integration/test_server_detector.py``,
  ``tests/integration/test_training_export.py``, ``tests/unit/test_detection_plan.py``,
  ``tests/unit/test_exposure.py``, ``tests/unit/test_jobs_runner.py``,
  ``tests/unit/test_proposals.py``.
- ``proposals``: Face proposals: where a photo's faces probably are, from a much cheaper network
  than MMOD. Tests: ``tests/unit/test_proposals.py``.
- ``pyramid``: dlib's image pyramids, reproduced bit for bit in numpy. Tests:
  ``tests/unit/test_detector.py``, ``tests/unit/test_pyramid_blocks.py``,
  ``tests/unit/test_pyramid_fast.py``, ``tests/unit/test_service_bounds.py``.
- ``quality``: Simple, explainable face quality signals used to gate enrollment and to report.
  Tests: ``tests/unit/test_face_selection.py``, ``tests/unit/test_jobs_runner.py``.
- ``selection``: Which face of a photo a caller uses, and why a photo gives none: one reject
  vocabulary. Tests: ``tests/integration/test_batch_bad_photos.py``,
  ``tests/unit/test_face_selection.py``, ``tests/unit/test_jobs_runner.py``.
"""

from __future__ import annotations

from facesearch.vision.align import (
    MEAN_FACE_5,
    chip_transform,
    extract_chip,
    face_chip,
    face_chip_details,
    pyramid_down2,
)
from facesearch.vision.decode import (
    DEFAULT_LIMITS,
    ImageHeader,
    decode_image,
    jpeg_scan_count,
    load_image,
    read_header,
)
from facesearch.vision.detection_plan import (
    MIN_FACE_FLOOR,
    DetectionPlan,
    plan_detection,
    work_bytes,
    worst_work_bytes,
)
from facesearch.vision.detector import (
    Detection,
    DetectorConfig,
    FaceDetector,
    upsample_for_min_face,
)
from facesearch.vision.embedder import Embedder
from facesearch.vision.exposure import (
    measure_exposure,
    normalise_exposure,
)
from facesearch.vision.image_limits import DecodeLimits
from facesearch.vision.landmarks import (
    LandmarkPredictor,
    sum_in_order,
)
from facesearch.vision.nms import (
    box_overlaps,
    greedy_nms,
)
from facesearch.vision.onnx_session import (
    create_session,
    default_threads,
)
from facesearch.vision.pipeline import (
    CASCADE_CROP_PX,
    CASCADE_FACE_PX,
    DEFAULT_DETECT_PIXELS,
    DEFAULT_DETECTOR_MODE,
    MIN_DETECT_PIXELS,
    DetectorMode,
    Face,
    FacePipeline,
    PipelineConfig,
    detector_mode,
    nearest_centre,
    scan_copy,
)
from facesearch.vision.pyramid import (
    build_pyramid_tensor,
    lround,
    pyramid2_rect_down,
    pyramid_up_size,
    resize_float_planes,
    resize_rgb_u8,
    tiled_pyramid_layout,
    tiled_pyramid_to_image,
)
from facesearch.vision.quality import (
    FaceQuality,
    measure_quality,
)
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

__all__ = [
    "CASCADE_CROP_PX",
    "CASCADE_FACE_PX",
    "DEFAULT_DETECTOR_MODE",
    "DEFAULT_DETECT_PIXELS",
    "DEFAULT_LIMITS",
    "DOMINANCE_RATIO",
    "MEAN_FACE_5",
    "MIN_DETECT_PIXELS",
    "MIN_FACE_FLOOR",
    "MULTI_FACE_SETTINGS",
    "Audience",
    "DecodeLimits",
    "Detection",
    "DetectionPlan",
    "DetectorConfig",
    "DetectorMode",
    "Embedder",
    "Face",
    "FaceDetector",
    "FacePipeline",
    "FaceQuality",
    "ImageHeader",
    "LandmarkPredictor",
    "PipelineConfig",
    "Policy",
    "QualityGate",
    "Reject",
    "Rejection",
    "box_overlaps",
    "build_pyramid_tensor",
    "chip_transform",
    "choose_face",
    "create_session",
    "decode_image",
    "default_threads",
    "detector_mode",
    "dominance",
    "extract_chip",
    "face_chip",
    "face_chip_details",
    "greedy_nms",
    "is_failure",
    "jpeg_scan_count",
    "largest_first",
    "load_image",
    "lround",
    "measure_exposure",
    "measure_quality",
    "nearest_centre",
    "normalise_exposure",
    "plan_detection",
    "policy_key",
    "process_photo",
    "pyramid2_rect_down",
    "pyramid_down2",
    "pyramid_up_size",
    "read_header",
    "rejection_for_error",
    "resize_float_planes",
    "resize_rgb_u8",
    "scan_copy",
    "sum_in_order",
    "tiled_pyramid_layout",
    "tiled_pyramid_to_image",
    "upsample_for_min_face",
    "visible_area",
    "work_bytes",
    "worst_work_bytes",
]
