"""The model-bundle format (``manifest.json``, contract ids, the models it holds) and where commands
find the bundle to use.

Layer: models. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs |
client) > storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors |
util | api) > reasons.

Modules (and the tests that cover them):

- ``location``: Where a command finds its model bundle when none is given on the command line.
  Tests: ``tests/integration/test_promotion.py``, ``tests/unit/test_promotion_rules.py``.
- ``manifest``: The model bundle: the directory ``facesearch-export`` writes and everything else
  loads. Tests: ``tests/integration/test_batch_bad_photos.py``,
  ``tests/integration/test_cascade.py``, ``tests/integration/test_checkpoint_erasure.py``,
  ``tests/integration/test_checkpoint_export.py``, ``tests/integration/test_detect_budget.py``,
  ``tests/integration/test_detector_int8.py``, ``tests/integration/test_erasure_model_change.py``,
  ``tests/integration/test_export_bundle.py``, ``tests/integration/test_exposure_pipeline.py``,
  ``tests/integration/test_flip_average.py``, ``tests/integration/test_gallery_digest.py``,
  ``tests/integration/test_history_kill9.py``, ``tests/integration/test_indexer_images.py``,
  ``tests/integration/test_parity_embedder.py``, ``tests/integration/test_pg_build.py``,
  ``tests/integration/test_pg_crash_points.py``, ``tests/integration/test_pg_restart_load.py``,
  ``tests/integration/test_pg_retention.py``, ``tests/integration/test_pg_servers.py``,
  ``tests/integration/test_pipeline_embed.py``, ``tests/integration/test_promotion.py``,
  ``tests/integration/test_server_cohort.py``, ``tests/integration/test_server_decisions.py``,
  ``tests/integration/test_server_detector.py``, ``tests/integration/test_server_durability.py``,
  ``tests/integration/test_server_enroll_idempotency.py``,
  ``tests/integration/test_server_erasure.py``, ``tests/integration/test_server_model_change.py``,
  ``tests/integration/test_server_rebuild.py``, ``tests/integration/test_server_rpcs.py``,
  ``tests/integration/test_server_swap.py``,
  ``tests/integration/test_shipped_calibration_bundle.py``,
  ``tests/integration/test_training_export.py``, ``tests/unit/test_detector_variant.py``,
  ``tests/unit/test_manifests.py``, ``tests/unit/test_proposals.py``,
  ``tests/unit/test_shipped_calibration.py``.
"""

from __future__ import annotations

from facesearch.bundle.location import (
    CURRENT_POINTER,
    DEFAULT_DATA_DIR,
    current_bundle,
    default_bundle,
    resolve_bundle,
)
from facesearch.bundle.manifest import (
    CALIBRATION_FILE,
    MANIFEST,
    PREPROCESSING_VERSION,
    BundleManifest,
    ChipSpec,
    DetectorVariant,
    EmbeddingSpec,
    ModelBundle,
    ModelFile,
    ParityReport,
    TrainingRecord,
    contract_id,
)

__all__ = [
    "CALIBRATION_FILE",
    "CURRENT_POINTER",
    "DEFAULT_DATA_DIR",
    "MANIFEST",
    "PREPROCESSING_VERSION",
    "BundleManifest",
    "ChipSpec",
    "DetectorVariant",
    "EmbeddingSpec",
    "ModelBundle",
    "ModelFile",
    "ParityReport",
    "TrainingRecord",
    "contract_id",
    "current_bundle",
    "default_bundle",
    "resolve_bundle",
]
