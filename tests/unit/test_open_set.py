"""The normalised score: cohort means, per-request scoring, and the decision."""

from __future__ import annotations

import numpy as np
import pytest

from facesearch.errors import InvalidInputError
from facesearch.scoring.decision import CalibratedThreshold as Threshold
from facesearch.scoring.decision import decide
from facesearch.scoring.normalise import (
    gallery_topk_mean,
    margin,
    normalise_matrix,
    probe_topk_mean,
    score_candidates,
)


def _naive_probe_means(s: np.ndarray, k: int) -> np.ndarray:
    out = np.full(s.shape, np.nan)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            others = np.delete(s[i], j)
            others = np.sort(others[np.isfinite(others)])[::-1][:k]
            if len(others):
                out[i, j] = others.mean()
    return out


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 3, 4, 9])
def test_probe_means_exclude_the_candidate(k: int) -> None:
    rng = np.random.default_rng(k)
    s = rng.normal(size=(7, 9)).round(1)  # rounding makes ties
    s[2, [1, 4]] = -np.inf  # not candidates
    s[5, :7] = -np.inf  # fewer than k + 1 candidates
    got, want = probe_topk_mean(s, k), _naive_probe_means(s, k)
    finite = np.isfinite(s)
    np.testing.assert_allclose(got[finite], want[finite], atol=1e-12)


def test_gallery_means_ignore_self() -> None:
    scores = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.1], [0.2, 0.1, 1.0]])
    np.testing.assert_allclose(gallery_topk_mean(scores, 1), [0.5, 0.5, 0.2])
    np.testing.assert_allclose(gallery_topk_mean(scores, 2), [0.35, 0.3, 0.15])


def test_one_request_matches_the_whole_gallery_computation() -> None:
    rng = np.random.default_rng(0)
    gallery = _unit(rng, 30)
    probe = _unit(rng, 1)
    raw = (probe @ gallery.T).astype(np.float64)
    means = gallery_topk_mean(gallery @ gallery.T, 4)
    full = normalise_matrix(raw, means, 4)[0]
    ids = [f"id{i}" for i in range(30)]
    ranked = score_candidates(ids, raw[0], means, 4)
    assert [c.identity_id for c in ranked] == [ids[i] for i in np.argsort(-full, kind="stable")]
    assert [c.score for c in ranked] == pytest.approx(sorted(full, reverse=True))
    # the search only returns the top k + 1: the best candidate's score is unchanged
    top = np.argsort(-raw[0])[:5]
    short = score_candidates([ids[i] for i in top], raw[0, top], means[top], 4)
    best = max(short, key=lambda c: c.score)
    assert best.score == pytest.approx(full[ids.index(str(best.identity_id))])


def test_a_hub_is_demoted_and_a_true_match_is_not() -> None:
    """A gallery face close to everyone (a hub) wins raw for strangers, not after normalisation."""
    rng = np.random.default_rng(1)
    centre = _unit(rng, 1)[0]
    crowd = centre + 0.9 * _unit(rng, 40)  # identities around a common centre
    crowd /= np.linalg.norm(crowd, axis=1, keepdims=True)
    hub = centre[None, :]  # the hub sits at the centre: similar to all of them
    gallery = np.vstack([hub, crowd]).astype(np.float32)
    means = gallery_topk_mean(gallery @ gallery.T, 4)
    strangers = centre + 0.9 * _unit(rng, 200)
    strangers /= np.linalg.norm(strangers, axis=1, keepdims=True)
    raw = strangers @ gallery.T
    z = normalise_matrix(raw, means, 4)
    assert np.mean(raw.argmax(axis=1) == 0) > 0.15  # raw: the hub takes far more than its 1/41 share
    assert np.mean(z.argmax(axis=1) == 0) < np.mean(raw.argmax(axis=1) == 0) / 2
    mates = gallery[1:] + 0.15 * _unit(rng, 40)  # new photos of the crowd
    mates /= np.linalg.norm(mates, axis=1, keepdims=True)
    zm = normalise_matrix(mates @ gallery.T, means, 4)
    assert np.mean(zm.argmax(axis=1) == np.arange(1, 41)) > 0.9
    assert np.median(zm.max(axis=1)) > np.quantile(z.max(axis=1), 0.99)


def test_margin_leaves_out_a_missing_side() -> None:
    assert margin(np.array([0.9]), np.array([0.5]), np.array([0.7]))[0] == pytest.approx(0.3)
    assert margin(np.array([0.9]), np.array([0.5]), np.array([np.nan]))[0] == pytest.approx(0.4)


def _threshold(value: float, kind: str = "normalised") -> Threshold:
    return Threshold(score=value, kind=kind, fpir=0.01, fmr=1e-5, gallery_size=100, capped=False, reason="test")


def test_decision_applies_the_threshold_to_the_best_candidate() -> None:
    ranked = score_candidates(["a", "b", "c"], [0.90, 0.95, 0.50], [0.60, 0.93, 0.55], 1)
    assert ranked[0].identity_id == "a"  # b is raw-best but its own neighbours are as close
    assert decide(ranked, _threshold(0.05)).match == ranked[0]
    assert decide(ranked, _threshold(10.0)).match is None
    by_cosine = decide(ranked, _threshold(0.9, "cosine"))
    assert by_cosine.match is not None and by_cosine.match.identity_id == "b"
    assert decide((), _threshold(0.0)).match is None


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        score_candidates(["a"], [0.1, 0.2], [0.0, 0.0], 2)
    with pytest.raises(InvalidInputError):
        probe_topk_mean(np.zeros(3), 2)
