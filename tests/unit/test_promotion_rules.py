"""Promotion rules, the models pointer, and the pairs drawn for evaluation (pure, no models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.bundle.location import CURRENT_POINTER, current_bundle, default_bundle
from facesearch.errors import BundleError, InvalidInputError
from facesearch.evaluation.model_eval import BundleScores, FaceSet, draw_pairs, score_embeddings
from facesearch.evaluation.promotion import Tolerances, format_table, judge


def _scores(acc: float, fnir: float | None, rank1: float = 0.9) -> BundleScores:
    return BundleScores(
        bundle="b",
        model_id="m",
        contract_id="m:1",
        pairs_accuracy=acc,
        pairs_accuracy_std=0.0,
        rank1=rank1,
        fnir_at_fpir_1pct=fnir,
        faces_found=10,
        photos=10,
        pairs_report={},
        ident_report=None,
    )


def test_judge_refuses_beyond_tolerance_only() -> None:
    tol = Tolerances(accuracy=0.005, fnir=0.01)
    current = _scores(0.95, 0.20)
    assert judge(current, _scores(0.946, 0.209), tol).promote  # inside both tolerances
    assert judge(current, _scores(0.99, 0.05), tol).promote
    worse_acc = judge(current, _scores(0.944, 0.20), tol)
    assert (
        not worse_acc.promote and "pairs accuracy 0.9440" in worse_acc.reasons[0] and "0.9500" in worse_acc.reasons[0]
    )
    worse_fnir = judge(current, _scores(0.95, 0.22), tol)
    assert not worse_fnir.promote and "FNIR at FPIR 1% 0.2200" in worse_fnir.reasons[0]
    assert "-0.60" in format_table(worse_acc)
    with pytest.raises(InvalidInputError, match="too small"):
        judge(current, _scores(0.95, None), tol)
    with pytest.raises(InvalidInputError, match="tolerance-fnir"):
        Tolerances(fnir=-0.1)


def test_models_pointer(tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert current_bundle(models) is None and default_bundle(models) == models / "dlib"
    models.mkdir()
    (models / CURRENT_POINTER).write_text("ft-abc\n")
    assert default_bundle(models) == models / "ft-abc"
    (models / CURRENT_POINTER).write_text("../elsewhere\n")
    with pytest.raises(BundleError, match="bad bundle pointer"):
        default_bundle(models)


def test_server_default_bundle_follows_the_pointer(tmp_path: Path) -> None:
    from server.config import load_config

    env = {"FACESEARCH_HOME": str(tmp_path)}
    assert load_config(env=env).bundle == tmp_path / "models" / "dlib"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / CURRENT_POINTER).write_text("ft-abc\n")
    assert load_config(env=env).bundle == tmp_path / "models" / "ft-abc"
    assert load_config(env={**env, "FACESEARCH_BUNDLE": "/x"}).bundle == Path("/x")


def _face_set(people: int, photos: int) -> FaceSet:
    labels = [f"p{i:02d}" for i in range(people) for _ in range(photos)]
    names = [f"{label}/{j}.jpg" for i, label in enumerate(labels) for j in [i]]
    return FaceSet(
        tuple(names),
        np.asarray(labels),
        np.zeros((len(labels), 4, 4, 3), np.uint8),
        np.ones(len(labels), bool),
        "synthetic",
    )


def test_drawn_pairs_are_seeded_balanced_and_fold_disjoint() -> None:
    faces = _face_set(40, 3)
    pairs = draw_pairs(faces, seed=1)
    assert pairs == draw_pairs(faces, seed=1) and pairs != draw_pairs(faces, seed=2)
    person = {n: n.split("/")[0] for n in faces.names}
    folds: dict[int, set[str]] = {}
    for p in pairs:
        assert (person[p.a] == person[p.b]) == p.same
        folds.setdefault(p.fold, set()).update({person[p.a], person[p.b]})
    assert sorted(folds) == list(range(10))
    assert all(not folds[a] & folds[b] for a in folds for b in folds if a < b)  # people in one fold only
    for fold in folds:
        same = [p.same for p in pairs if p.fold == fold]
        assert sum(same) == len(same) - sum(same) > 0
    with pytest.raises(InvalidInputError, match="at least 20 people"):
        draw_pairs(_face_set(12, 3))


def test_scores_separate_a_good_embedding_from_noise() -> None:
    faces = _face_set(40, 3)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    good = np.repeat(centres, 3, axis=0) + 0.3 * rng.normal(size=(120, 32))
    noise = rng.normal(size=(120, 32))
    pairs = draw_pairs(faces)
    reports = []
    for raw in (good, noise):
        emb = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
        reports.append(score_embeddings(faces, emb, pairs))
    (good_pairs, good_ident), (noise_pairs, noise_ident) = reports
    assert good_pairs["accuracy_mean"] > 0.95 and noise_pairs["accuracy_mean"] < 0.7
    assert good_ident is not None and noise_ident is not None
    assert good_ident["facesearch"]["rank1"] > 0.9 and noise_ident["facesearch"]["rank1"] < 0.5
    assert good_ident["facesearch"]["fnir_at_fpir"]["0.01"] < noise_ident["facesearch"]["fnir_at_fpir"]["0.01"]
