"""Per-identity scoring: one score per identity (its best face), merged across sources."""

from __future__ import annotations

import numpy as np

from server.search import Scored, best_per_label, drop_ids, merge_top


def test_best_per_label_keeps_each_label_once_with_its_best_face() -> None:
    scores = np.array([0.9, 0.95, 0.5, 0.8, 0.94], np.float32)
    labels = np.array([1, 1, 2, 3, 3])
    vids = np.array([10, 11, 12, 13, 14])
    got = best_per_label(scores, labels, vids, limit=10)
    assert [(s.label, s.vector_id) for s in got] == [(1, 11), (3, 14), (2, 12)]
    assert [s.similarity for s in got] == sorted((s.similarity for s in got), reverse=True)
    assert len(best_per_label(scores, labels, vids, limit=2)) == 2


def test_best_per_label_ignores_dropped_rows_and_breaks_ties_by_vector_id() -> None:
    scores = np.array([0.7, -np.inf, 0.7, 0.9], np.float32)
    labels = np.array([5, 6, 7, 6])
    vids = np.array([30, 31, 29, 40])
    got = best_per_label(scores, labels, vids, limit=5)
    assert [s.label for s in got] == [6, 7, 5]  # 7 and 5 tie at 0.7: lower vector id first
    assert got[0].vector_id == 40
    assert best_per_label(np.zeros(0, np.float32), np.zeros(0), np.zeros(0, np.int64), 3) == []


def test_merge_top_takes_the_best_source_per_identity() -> None:
    base = [("alice", Scored(1, 0.80, 1)), ("bob", Scored(2, 0.70, 2))]
    live = [("alice", Scored(0, 0.90, 100)), ("carol", Scored(1, 0.75, 101))]
    got = merge_top([base, live], k=2)
    assert [(i, s.vector_id) for i, s in got] == [("alice", 100), ("carol", 101)]


def test_drop_ids_masks_missing_and_tombstoned() -> None:
    vids = np.array([[3, -1, 7, 9]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], np.float32)
    out = drop_ids(vids, scores, np.array([7], np.int64))
    assert np.isneginf(out[0, 1]) and np.isneginf(out[0, 2])
    assert out[0, 0] == np.float32(0.9) and out[0, 3] == np.float32(0.6)


def test_per_identity_ranking_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(500).astype(np.float32)
    labels = rng.integers(0, 40, 500)
    vids = np.arange(500)
    got = best_per_label(scores, labels, vids, limit=7)
    best = {}
    for s, lab, v in zip(scores, labels, vids, strict=True):
        if lab not in best or s > best[lab][0]:
            best[lab] = (s, v)
    expected = sorted(best.items(), key=lambda kv: -kv[1][0])[:7]
    assert [(s.label, s.vector_id) for s in got] == [(lab, v) for lab, (_, v) in expected]
