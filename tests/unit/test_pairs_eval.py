"""The LFW pairs protocol: parsing and the metrics, checked on cases with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import InvalidInputError
from facesearch.evaluation.pairs import Pair, evaluate_pairs, read_pairs, roc_auc, tar_at_far


def test_read_pairs_view2_format(tmp_path: Path) -> None:
    text = "2 1\nAnn 1 2\nAnn 1 Bob 3\nCid 2 4\nCid 1 Dan 1\n"
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    pairs = read_pairs(path)
    assert pairs[0] == Pair(0, "Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", True)
    assert pairs[1] == Pair(0, "Ann/Ann_0001.jpg", "Bob/Bob_0003.jpg", False)
    assert [p.fold for p in pairs] == [0, 0, 1, 1]


def test_read_pairs_rejects_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("2 1\nAnn 1 2\n")
    with pytest.raises(InvalidInputError, match="expected 4 pair lines"):
        read_pairs(path)
    path.write_text("x y\n")
    with pytest.raises(InvalidInputError, match="first line"):
        read_pairs(path)


def test_auc_and_tar_on_known_scores() -> None:
    same = np.array([True, True, False, False])
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), same) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), same) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), same) == 0.5
    # with 1000 impostors and FAR 1e-3 one impostor may pass: threshold is the 2nd highest impostor
    rng = np.random.default_rng(0)
    neg = rng.uniform(0, 0.5, 1000)
    neg[:2] = [0.95, 0.7]
    scores = np.concatenate([[0.99, 0.8, 0.6], neg])
    labels = np.concatenate([[True] * 3, [False] * 1000])
    assert tar_at_far(scores, labels, 1e-3) == pytest.approx(2 / 3)


def test_ten_fold_accuracy_and_missing_faces() -> None:
    rng = np.random.default_rng(1)
    pairs, scores = [], []
    for fold in range(10):
        for i in range(20):
            same = i < 10
            pairs.append(Pair(fold, f"a{i}", f"b{i}", same))
            scores.append(rng.uniform(0.9, 1.0) if same else rng.uniform(0.5, 0.8))
    scores_arr = np.array(scores)
    report = evaluate_pairs(pairs, scores_arr, images_without_face=0, images=400)
    assert report.accuracy_mean == 1.0 and report.roc_auc == 1.0
    assert all(0.8 <= t <= 0.9 for t in report.thresholds)
    scores_arr[0] = -np.inf  # a matched pair whose face was not found counts as a non-match
    report = evaluate_pairs(pairs, scores_arr, images_without_face=1, images=400)
    assert report.fold_accuracies[0] == pytest.approx(19 / 20)
