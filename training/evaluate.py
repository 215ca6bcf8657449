"""Before/after evaluation of a training run, on bundles (onnxruntime), never on torch modules.

The "before" (base bundle) and "after" (exported bundle) are measured identically on the same
identity-disjoint faces: 10-fold pairs verification accuracy and the open-set identification
split (rank-1, FNIR at FPIR 1%). The measuring itself lives in :mod:`facesearch.model_eval`
(``facesearch models promote`` uses it too, without torch); this module is the training-side
entry point: on an identity tree, or on already aligned chips (a run's validation cache).
The training loop's per-epoch validation accuracy is its own (torch) measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.bundle import ModelBundle
from facesearch.model_eval import BundleScores, EvalSet, FaceSet, draw_pairs, evaluate_bundles, score_bundle
from facesearch.pairs_eval import Pair


def evaluate_chips(bundle: Path, chips: np.ndarray, labels: Sequence[str], *, pairs: Sequence[Pair] | None = None,
                   names: Sequence[str] | None = None, seed: int = 0) -> BundleScores:
    """Score ``bundle`` on aligned uint8 chips ``(N, 150, 150, 3)`` with one identity label per chip.

    Without ``pairs`` (naming chips by ``names``), seeded 10-fold pairs are drawn from the labels.
    """
    faces = FaceSet.from_chips(chips, labels, names)
    return score_bundle(ModelBundle.load(bundle), faces, list(pairs) if pairs else draw_pairs(faces, seed=seed))


def before_after_chips(base: Path, candidate: Path, chips: np.ndarray, labels: Sequence[str], *,
                       seed: int = 0) -> dict[str, Any]:
    """Both bundles on the same chips and the same drawn pairs: ``{"before", "after"}`` headline dicts + reports."""
    faces = FaceSet.from_chips(chips, labels)
    pairs = draw_pairs(faces, seed=seed)
    before = score_bundle(ModelBundle.load(base), faces, pairs)
    after = score_bundle(ModelBundle.load(candidate), faces, pairs)
    return {"set": {"photos": len(faces.names), "identities": faces.identities, "pairs_count": len(pairs)},
            "before": before.as_dict(), "after": after.as_dict()}


def before_after_tree(base: Path, candidate: Path, tree: Path, *, pairs_file: Path | None = None,
                      min_face: int = 40, progress: bool = False) -> dict[str, Any]:
    """Both bundles on the photos of an identity tree (chips cut once when the bundles share a detector)."""
    eval_set = EvalSet(tree=tree, pairs_file=pairs_file, min_face=min_face)
    before, after = evaluate_bundles([base, candidate], eval_set, progress=progress)
    return {"set": eval_set.describe(), "before": before.as_dict(), "after": after.as_dict()}
