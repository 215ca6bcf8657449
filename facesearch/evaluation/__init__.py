"""Measuring models and decisions: LFW pairs, the 1:N open-set protocol, calibration measurement,
model evaluation and promotion, DET plots, synthetic galleries.

Layer: eval. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs | client)
> storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors | util |
api) > reasons.

Modules (and the tests that cover them):

- ``calibrate``: Measuring decision calibrations from labelled faces: the raw-cosine FMR table
  (:func:`calibrate`) and the normalised-score FPIR table by gallery size
  (:func:`calibrate_open_set`). The tables themselves, their files and how a request's error rate is
  turned into a threshold live in :mod:`facesearch.scoring.calibration` and
  :mod:`facesearch.scoring.open_set_calibration`; this module only measures them. Tests:
  ``tests/unit/test_calibration.py``, ``tests/unit/test_open_set_calibration.py``.
- ``det_plot``: A DET curve (FNIR against FPIR, both log scale) drawn as PNG with Pillow alone.
  Tests: ``tests/unit/test_open_set_eval.py``.
- ``ident``: The 1:N identification protocol: rank-k, FNIR at FPIR, DET curve, per-group error
  rates. Tests: ``tests/unit/test_decision.py``, ``tests/unit/test_open_set_calibration.py``,
  ``tests/unit/test_open_set_eval.py``.
- ``ident_scoring``: Scoring an identification split both ways: raw cosine and facesearch's
  normalised decision score. Tests: ``tests/unit/test_open_set_calibration.py``,
  ``tests/unit/test_open_set_eval.py``.
- ``ident_split``: The open-set split of an identity tree (``<Person>/<photo>``) for 1:N evaluation.
  Tests: ``tests/unit/test_open_set_eval.py``.
- ``model_eval``: Measure model bundles on a labelled face set: 10-fold pair verification and
  open-set identification. Tests: ``tests/unit/test_promotion_rules.py``.
- ``pairs``: LFW View-2 pair verification: 10-fold accuracy, ROC AUC, TAR at a fixed FAR. Tests:
  ``tests/unit/test_pairs_eval.py``.
- ``promotion``: ``facesearch models promote``: install a candidate bundle only if it is no worse
  than the current one. Tests: ``tests/unit/test_promotion_rules.py``.
- ``synthetic``: Seeded face-like embeddings drawn from a two-covariance model of real dlib
  descriptors. Tests: ``tests/integration/test_indexer_embeddings.py``,
  ``tests/unit/test_index_synthetic.py``, ``tests/unit/test_open_set_checkpoint.py``.
"""

from __future__ import annotations

from facesearch.evaluation.calibrate import (
    calibrate,
    calibrate_open_set,
    gallery_ladder,
)
from facesearch.evaluation.det_plot import (
    Curve,
    draw_det,
)
from facesearch.evaluation.ident import (
    Searches,
    det_curve,
    evaluate,
    fnir_at,
    fpir_at,
    group_rates,
    rank_rate,
    searches_from_scores,
    threshold_at_fpir,
    wilson_interval,
)
from facesearch.evaluation.ident_scoring import (
    ScoredSplit,
    score_split,
)
from facesearch.evaluation.ident_split import (
    identity_photos,
    open_set_split,
    write_split,
)
from facesearch.evaluation.model_eval import (
    BundleScores,
    EvalSet,
    FaceSet,
    cut_chips,
    draw_pairs,
    score_bundle,
    score_embeddings,
    tree_names,
)
from facesearch.evaluation.pairs import (
    Pair,
    PairsReport,
    embed_pair_images,
    evaluate_pairs,
    pair_scores,
    read_pairs,
    roc_auc,
    tar_at_far,
)
from facesearch.evaluation.promotion import (
    PromotionConfig,
    Tolerances,
    format_table,
    judge,
    run,
)
from facesearch.evaluation.synthetic import (
    FaceEmbeddingModel,
    SyntheticGallery,
    default_model_path,
)

__all__ = [
    "BundleScores",
    "Curve",
    "EvalSet",
    "FaceEmbeddingModel",
    "FaceSet",
    "Pair",
    "PairsReport",
    "PromotionConfig",
    "ScoredSplit",
    "Searches",
    "SyntheticGallery",
    "Tolerances",
    "calibrate",
    "calibrate_open_set",
    "cut_chips",
    "default_model_path",
    "det_curve",
    "draw_det",
    "draw_pairs",
    "embed_pair_images",
    "evaluate",
    "evaluate_pairs",
    "fnir_at",
    "format_table",
    "fpir_at",
    "gallery_ladder",
    "group_rates",
    "identity_photos",
    "judge",
    "open_set_split",
    "pair_scores",
    "rank_rate",
    "read_pairs",
    "roc_auc",
    "run",
    "score_bundle",
    "score_embeddings",
    "score_split",
    "searches_from_scores",
    "tar_at_far",
    "threshold_at_fpir",
    "tree_names",
    "wilson_interval",
    "write_split",
]
