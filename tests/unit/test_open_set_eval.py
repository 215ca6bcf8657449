"""Identification protocol maths, templates, the open-set split and the DET plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.errors import InvalidInputError
from facesearch.evaluation.det_plot import Curve, draw_det
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
from facesearch.evaluation.ident_split import identity_photos, open_set_split, write_split
from facesearch.jobs.image_list import read_image_list
from facesearch.scoring.templates import build_gallery, gallery_scores, identity_scores, mean_templates, quality_weights


def test_searches_ranks_and_rates() -> None:
    scores = np.array(
        [
            [0.9, 0.2, 0.1],  # mated (col 0), rank 1
            [0.5, 0.8, 0.1],  # mated (col 0), rank 2
            [0.3, 0.2, 0.95],  # mated (col 2), rank 1
            [0.1, 0.2, 0.85],  # non-mated
            [0.1, 0.6, 0.3],  # non-mated
            [0.99, 0.0, 0.0],  # mated (col 0) but no face found: a miss
        ]
    )
    s = searches_from_scores(
        scores, np.array([0, 0, 2, -1, -1, 0]), found=np.array([True, True, True, True, True, False])
    )
    assert s.mate_rank.tolist() == [1, 2, 1, 0, 0, 0]
    assert rank_rate(s, 1) == pytest.approx(2 / 4) and rank_rate(s, 5) == pytest.approx(3 / 4)
    assert fpir_at(s, 0.7) == pytest.approx(0.5) and fpir_at(s, 0.9) == 0.0
    assert fnir_at(s, 0.7) == pytest.approx(0.5)  # rows 0 and 2 hit; 1 is rank 2; 5 has no face
    assert fnir_at(s, 0.92) == pytest.approx(0.75)
    assert threshold_at_fpir(s.top_score[~s.mated], 0.5) == pytest.approx(0.6)


def test_threshold_at_fpir_keeps_the_promise_on_its_own_searches() -> None:
    rng = np.random.default_rng(0)
    top = rng.normal(size=1000)
    for fpir in (0.1, 0.01, 0.001):
        t = threshold_at_fpir(top, fpir)
        assert np.mean(top > t) <= fpir
    with pytest.raises(InvalidInputError):
        threshold_at_fpir(np.zeros(0), 0.01)


def test_det_curve_is_monotone_and_report_has_groups() -> None:
    rng = np.random.default_rng(1)
    mated = rng.normal(2.0, 1.0, 300)
    nonmated = rng.normal(0.0, 1.0, 300)
    s = Searches(
        mated=np.r_[np.ones(300, bool), np.zeros(300, bool)],
        mate_rank=np.r_[np.ones(300, int), np.zeros(300, int)],
        top_score=np.r_[mated, nonmated],
        group=np.array(["a", "b"] * 300),
    )
    t, fpir, fnir = det_curve(s)
    assert np.all(np.diff(t) <= 0) and np.all(np.diff(fpir) >= 0) and np.all(np.diff(fnir) <= 0)
    report = evaluate(s, scoring="test", gallery_size=10)
    assert report.fnir_at_fpir["0.001"] >= report.fnir_at_fpir["0.01"]
    groups = {g.group: g for g in report.groups}
    assert set(groups) == {"a", "b"} and groups["a"].mated + groups["b"].mated == 300
    assert report.group_threshold == report.thresholds_at_fpir["0.01"]
    assert "groups" in report.as_dict() and group_rates(Searches(s.mated, s.mate_rank, s.top_score), 0.0) == ()


def test_wilson_interval_brackets_the_rate() -> None:
    lo, hi = wilson_interval(10, 1000)
    assert lo < 0.01 < hi and lo > 0.004 and hi < 0.02
    assert wilson_interval(0, 100)[0] == 0.0


def test_templates_best_mean_both() -> None:
    faces = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    g = build_gallery(faces, np.array(["x", "x", "y"]))
    probe = np.array([[0.6, 0.8]], np.float32)
    best, mean = identity_scores(probe, g, "best")[0], identity_scores(probe, g, "mean")[0]
    assert best.tolist() == pytest.approx([0.8, 0.6])
    assert mean[0] == pytest.approx(1.4 / np.sqrt(2)) and mean[1] == pytest.approx(0.6)
    assert identity_scores(probe, g, "both")[0] == pytest.approx((best + mean) / 2)
    gg = gallery_scores(g, "best")
    assert gg[0, 1] == gg[1, 0] == pytest.approx(1.0) and np.isneginf(gg[0, 0])
    weighted = mean_templates(faces[:2], np.array([0, 0]), 1, np.array([1.0, 0.0]))
    assert weighted[0] == pytest.approx([1.0, 0.0])
    assert quality_weights(np.array([20.0, 200.0]), np.array([400.0, 10.0])).tolist() == pytest.approx([0.25, 0.1])
    with pytest.raises(InvalidInputError):
        identity_scores(probe, g, "median")


def test_open_set_split_and_lists(tmp_path: Path) -> None:
    tree = tmp_path / "images"
    for person, count in (("Ann", 3), ("Bob", 1), ("Cid", 2), ("Dee", 1)):
        (tree / person).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(tree / person / f"{person}_{i + 1:04d}.jpg")
    split = open_set_split(identity_photos(tree))
    assert [p.name for p in split.gallery] == ["Ann_0001.jpg", "Cid_0001.jpg"]
    assert [p.name for p in split.probes] == ["Ann_0002.jpg", "Ann_0003.jpg", "Cid_0002.jpg"]
    assert [p.name for p in split.nonmated] == ["Bob_0001.jpg", "Dee_0001.jpg"]
    gallery, probes, nonmated = write_split(split, tmp_path / "split")
    assert read_image_list(probes) == [p.resolve() for p in split.probes]
    assert {p.parent.name for p in read_image_list(nonmated)}.isdisjoint(
        {p.parent.name for p in read_image_list(gallery)}
    )


def test_det_png(tmp_path: Path) -> None:
    out = draw_det(
        [Curve("a", [1e-3, 1e-2, 0.1, 1.0], [0.5, 0.3, 0.1, 0.0]), Curve("b", [0.0, 0.5], [1.0, 0.2])],
        tmp_path / "det.png",
        title="test",
    )
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (760, 560)
        assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 3  # something was drawn


def test_leave_one_out_equals_a_gallery_without_the_mate() -> None:
    from facesearch.evaluation.ident_scoring import score_split
    from facesearch.scoring.normalise import gallery_topk_mean, normalise_matrix

    rng = np.random.default_rng(2)
    gallery = rng.normal(size=(40, 16)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    probes = gallery + 0.3 * rng.normal(size=gallery.shape).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    labels = np.array([f"p{i}" for i in range(40)])
    split = score_split(gallery, labels, probes, labels, np.ones(40, bool), k=4)
    assert split.nonmated_source == "leave-one-out" and int((~split.normalised.mated).sum()) == 40
    for m in (0, 17, 39):
        keep = np.arange(40) != m
        means = gallery_topk_mean(gallery[keep] @ gallery[keep].T, 4)
        alone = normalise_matrix((probes[m : m + 1] @ gallery[keep].T).astype(np.float64), means, 4).max()
        assert split.normalised.top_score[40 + m] == pytest.approx(alone, abs=1e-6)
        assert split.raw.top_score[40 + m] == pytest.approx(float((probes[m] @ gallery[keep].T).max()), abs=1e-6)
