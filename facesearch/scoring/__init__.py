"""From similarities to decisions: normalised open-set scores, identity templates, the gallery
cohort and its saved statistics, calibration tables, thresholds, and the one decision rule.

Layer: scores. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs |
client) > storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors |
util | api) > reasons.

Modules (and the tests that cover them):

- ``calibration``: Turning error-rate promises into similarity thresholds. Tests:
  ``tests/integration/test_ident_eval_cli.py``, ``tests/unit/test_calibration.py``,
  ``tests/unit/test_server_thresholds.py``, ``tests/unit/test_shipped_calibration.py``.
- ``cohort``: Gallery-side cohort statistics for the normalised score, kept exact through enroll and
  delete. Tests: ``tests/unit/test_open_set_cohort.py``, ``tests/unit/test_server_open_set.py``.
- ``decision``: The one decision rule: when a score is a match, which candidate is the answer, and
  what an error rate means at a gallery size. The server and the evaluation code both decide through
  it. Tests: ``tests/integration/test_server_decisions.py``, ``tests/unit/test_calibration.py``,
  ``tests/unit/test_decision.py``, ``tests/unit/test_open_set.py``,
  ``tests/unit/test_open_set_calibration.py``, ``tests/unit/test_server_thresholds.py``,
  ``tests/unit/test_service_bounds.py``.
- ``gallery_stats``: A gallery's open-set statistics: identity templates and the cohort, built in
  bulk and saved. Tests: ``tests/integration/test_indexer_open_set.py``,
  ``tests/integration/test_pg_erase_status.py``, ``tests/unit/test_architecture.py``,
  ``tests/unit/test_decision.py``, ``tests/unit/test_open_set_checkpoint.py``,
  ``tests/unit/test_open_set_shortlist.py``, ``tests/unit/test_open_set_store.py``,
  ``tests/unit/test_server_open_set.py``.
- ``normalise``: Open-set scores: adaptive symmetric normalisation with the gallery as cohort.
  Tests: ``tests/integration/test_indexer_open_set.py``,
  ``tests/integration/test_server_cohort.py``, ``tests/integration/test_server_gallery.py``,
  ``tests/unit/test_open_set.py``, ``tests/unit/test_open_set_cohort.py``,
  ``tests/unit/test_open_set_eval.py``, ``tests/unit/test_server_open_set.py``.
- ``open_set_calibration``: Calibration of the normalised score, and turning error-rate promises
  into thresholds. Tests: ``tests/integration/test_ident_eval_cli.py``,
  ``tests/integration/test_indexer_open_set.py``, ``tests/integration/test_server_decisions.py``,
  ``tests/integration/test_shipped_calibration_bundle.py``,
  ``tests/unit/test_open_set_calibration.py``, ``tests/unit/test_server_thresholds.py``,
  ``tests/unit/test_shipped_calibration.py``.
- ``templates``: Identity templates: scoring a person with several enrolled faces as one. Tests:
  ``tests/integration/test_indexer_open_set.py``, ``tests/integration/test_server_cohort.py``,
  ``tests/integration/test_server_gallery.py``, ``tests/unit/test_open_set_eval.py``,
  ``tests/unit/test_open_set_shortlist.py``, ``tests/unit/test_server_open_set.py``.
- ``thresholds``: Which decision threshold a request gets, on which score, and why. Tests:
  ``tests/unit/test_server_thresholds.py``.
"""

from __future__ import annotations

from facesearch.scoring.calibration import (
    DEFAULT_FMR,
    DLIB_TOLERANCE_COSINE,
    FMR_LEVELS,
    Calibration,
    CalibrationPoint,
)
from facesearch.scoring.cohort import GalleryCohort
from facesearch.scoring.decision import (
    CalibratedThreshold,
    DecisionThreshold,
    ScoredCandidate,
    ScoreKind,
    ThresholdKind,
    ThresholdScale,
    VerifyDecision,
    decide,
    fmr_for_fpir,
    fpir_for_fmr,
    just_above,
    matches,
    verify_decision,
)
from facesearch.scoring.gallery_stats import (
    ANN_IDENTITIES,
    BLOCK_ELEMENTS,
    EXACT_FACES,
    OPEN_SET_FILE,
    SHORTLIST,
    GalleryOpenSet,
    Grouped,
    build_open_set,
    combine,
    exact_neighbours,
    file_fingerprint,
    from_grouped,
    open_set_params,
    saved_params,
    shortlist_neighbours,
    unit,
)
from facesearch.scoring.normalise import (
    DEFAULT_K,
    finite_or_none,
    gallery_topk_mean,
    margin,
    normalise_candidates,
    normalise_matrix,
    probe_topk_mean,
    score_candidates,
    topk_mean,
)
from facesearch.scoring.open_set_calibration import (
    FPIR_LEVELS,
    MIN_EVENTS,
    NORMALISE_FROM,
    OPEN_SET_CALIBRATION_FILE,
    SCORE_KIND,
    FpirCurve,
    FpirPoint,
    OpenSetCalibration,
    load_open_set_calibration,
    resolve_threshold,
)
from facesearch.scoring.templates import (
    DEFAULT_TEMPLATE,
    build_gallery,
    gallery_scores,
    identity_scores,
    mean_templates,
    quality_weights,
)
from facesearch.scoring.thresholds import (
    ThresholdPolicy,
    ThresholdRequest,
    fmr_at,
)

__all__ = [
    "ANN_IDENTITIES",
    "BLOCK_ELEMENTS",
    "DEFAULT_FMR",
    "DEFAULT_K",
    "DEFAULT_TEMPLATE",
    "DLIB_TOLERANCE_COSINE",
    "EXACT_FACES",
    "FMR_LEVELS",
    "FPIR_LEVELS",
    "MIN_EVENTS",
    "NORMALISE_FROM",
    "OPEN_SET_CALIBRATION_FILE",
    "OPEN_SET_FILE",
    "SCORE_KIND",
    "SHORTLIST",
    "CalibratedThreshold",
    "Calibration",
    "CalibrationPoint",
    "DecisionThreshold",
    "FpirCurve",
    "FpirPoint",
    "GalleryCohort",
    "GalleryOpenSet",
    "Grouped",
    "OpenSetCalibration",
    "ScoreKind",
    "ScoredCandidate",
    "ThresholdKind",
    "ThresholdPolicy",
    "ThresholdRequest",
    "ThresholdScale",
    "VerifyDecision",
    "build_gallery",
    "build_open_set",
    "combine",
    "decide",
    "exact_neighbours",
    "file_fingerprint",
    "finite_or_none",
    "fmr_at",
    "fmr_for_fpir",
    "fpir_for_fmr",
    "from_grouped",
    "gallery_scores",
    "gallery_topk_mean",
    "identity_scores",
    "just_above",
    "load_open_set_calibration",
    "margin",
    "matches",
    "mean_templates",
    "normalise_candidates",
    "normalise_matrix",
    "open_set_params",
    "probe_topk_mean",
    "quality_weights",
    "resolve_threshold",
    "saved_params",
    "score_candidates",
    "shortlist_neighbours",
    "topk_mean",
    "unit",
    "verify_decision",
]
