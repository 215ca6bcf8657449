"""The face pipeline: safe photo decoding and limits, the MMOD detector and its pyramid, 5-point
landmarks, chip alignment, the embedder, quality signals, and which face of a photo a caller takes.

Layer: pipeline. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs |
client) > storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors |
util | api).

Modules (and the tests that cover them):

- ``align``: The aligned face chip, cut exactly as dlib's ``get_face_chip(img, shape, 150, 0.25)``
  cuts it. Tests: ``tests/integration/test_parity_landmarks_chips.py``,
  ``tests/unit/test_landmarks_align.py``.
- ``decode``: Decode any supported photo safely into a C-contiguous HxWx3 uint8 RGB array. Tests:
  ``tests/integration/test_checkpoint_export.py``, ``tests/integration/test_flip_average.py``,
  ``tests/integration/test_indexer_images.py``, ``tests/integration/test_pipeline_embed.py``,
  ``tests/integration/test_training_export.py``, ``tests/unit/test_decode.py``.
- ``detector``: Face detection with dlib's MMOD CNN detector, exported to ONNX, run by onnxruntime.
  Tests: ``tests/integration/test_parity_detector.py``, ``tests/unit/test_detector.py``.
- ``embedder``: The face embedder: aligned 150x150 RGB chips -> 128-d descriptors, via onnxruntime.
  Tests: ``tests/integration/test_flip_average.py``, ``tests/integration/test_parity_embedder.py``.
- ``image_limits``: Size limits a photo must meet before its pixels are decoded. Tests: through its
  callers.
- ``landmarks``: Five-point face landmarks, computed exactly as dlib's ``shape_predictor`` does.
  Tests: ``tests/integration/test_parity_landmarks_chips.py``,
  ``tests/unit/test_landmarks_align.py``.
- ``nms``: dlib's greedy non-maximum suppression for MMOD detections. Tests:
  ``tests/unit/test_detector.py``.
- ``onnx_session``: Creating onnxruntime sessions the one way facesearch does it. Tests: through its
  callers.
- ``pipeline``: The face pipeline: photo -> faces (box, score, landmarks, chip, embedding, quality).
  Tests: ``tests/integration/test_checkpoint_export.py``,
  ``tests/integration/test_flip_average.py``, ``tests/integration/test_indexer_images.py``,
  ``tests/integration/test_pipeline_embed.py``, ``tests/integration/test_training_export.py``.
- ``pyramid``: dlib's image pyramids, reproduced bit for bit in numpy. Tests:
  ``tests/unit/test_detector.py``.
- ``quality``: Simple, explainable face quality signals used to gate enrollment and to report.
  Tests: through its callers.
"""

from __future__ import annotations

from facesearch.vision.align import face_chip
from facesearch.vision.decode import (
    decode_image,
    load_image,
)
from facesearch.vision.image_limits import DecodeLimits
from facesearch.vision.onnx_session import (
    create_session,
    default_threads,
)
from facesearch.vision.pipeline import (
    Face,
    FacePipeline,
    PipelineConfig,
    nearest_centre,
)
from facesearch.vision.pyramid import (
    build_pyramid_tensor,
    tiled_pyramid_layout,
)
from facesearch.vision.quality import (
    FaceQuality,
    measure_quality,
)

__all__ = [
    "DecodeLimits",
    "Face",
    "FacePipeline",
    "FaceQuality",
    "PipelineConfig",
    "build_pyramid_tensor",
    "create_session",
    "decode_image",
    "default_threads",
    "face_chip",
    "load_image",
    "measure_quality",
    "nearest_centre",
    "tiled_pyramid_layout",
]
