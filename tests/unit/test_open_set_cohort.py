"""Gallery cohort means stay exact through enroll, delete and refresh (against a recomputation)."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import AlreadyExistsError, NotFoundError
from facesearch.scoring.cohort import GalleryCohort
from facesearch.scoring.normalise import gallery_topk_mean


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _scratch(live: dict[Hashable, np.ndarray], k: int, depth: int) -> GalleryCohort:
    names = list(live)
    x = np.stack([live[n] for n in names]) if names else np.zeros((0, 16), np.float32)
    return GalleryCohort.from_scores(names, x @ x.T, k, depth)


def _assert_same(c: GalleryCohort, live: dict[Hashable, np.ndarray], k: int, depth: int) -> None:
    names = list(live)
    ref = _scratch(live, k, depth)
    assert sorted(c.identity_ids, key=str) == sorted(names, key=str)
    np.testing.assert_allclose(c.means(names), ref.means(names), atol=1e-6)
    if names:
        x = np.stack([live[n] for n in names])
        np.testing.assert_allclose(c.means(names), gallery_topk_mean(x @ x.T, k), atol=1e-6)
    for n in names:
        got, want = c.neighbours(n), ref.neighbours(n)
        m = min(len(got[0]), len(want[0]), k)
        np.testing.assert_allclose(got[1][:m], want[1][:m], atol=1e-6)


def _search(
    live: dict[Hashable, np.ndarray],
    query: np.ndarray,
    *,
    skip: Hashable | None = None,
    above: float = -np.inf,
    top: int = 0,
) -> tuple[list[Hashable], np.ndarray]:
    """What an index would return: every identity above ``above`` plus the ``top`` best."""
    names = [n for n in live if n != skip]
    if not names:
        return [], np.zeros(0, np.float32)
    scores = np.stack([live[n] for n in names]) @ query
    keep = scores > above
    keep[np.argsort(-scores)[:top]] = True
    return [n for n, kk in zip(names, keep, strict=True) if kk], scores[keep]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_updates_match_a_recomputation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool = _unit(rng, 80)
    k, depth = 4, 6
    cohort = GalleryCohort(k, depth)
    live: dict[Hashable, np.ndarray] = {}
    for step in range(300):
        grow = len(live) < 3 or rng.random() < (0.75 if step < 150 else 0.3)
        free = [i for i in range(len(pool)) if f"p{i}" not in live]
        if grow and free:
            i = int(rng.choice(free))
            ids, scores = _search(live, pool[i], above=cohort.enroll_radius, top=depth)
            cohort.enroll(f"p{i}", ids, scores)
            live[f"p{i}"] = pool[i]
        elif live:
            gone = list(live)[int(rng.integers(len(live)))]
            del live[gone]
            stale = cohort.delete(gone)
            assert set(stale) <= set(cohort.stale())
            for name in cohort.stale():
                cohort.refresh(name, *_search(live, live[name], skip=name))
        _assert_same(cohort, live, k, depth)


def test_a_changed_template_is_a_delete_then_enroll() -> None:
    rng = np.random.default_rng(3)
    x = _unit(rng, 20)
    live: dict[Hashable, np.ndarray] = {f"p{i}": x[i] for i in range(20)}
    cohort = _scratch(live, 3, 5)
    live["p7"] = _unit(rng, 1)[0]  # a new face changed p7's template
    cohort.delete("p7")
    for name in cohort.stale():
        cohort.refresh(name, *_search(live, live[name], skip=name))
    cohort.enroll("p7", *_search(live, live["p7"], skip="p7"))
    _assert_same(cohort, live, 3, 5)


def test_stale_means_read_as_missing_until_refreshed() -> None:
    rng = np.random.default_rng(4)
    x = _unit(rng, 12)
    live: dict[Hashable, np.ndarray] = {f"p{i}": x[i] for i in range(12)}
    cohort = _scratch(live, 3, 3)  # no slack: any delete of a neighbour makes a row stale
    victim = cohort.neighbours("p0")[0][0]
    stale = cohort.delete(victim)
    del live[victim]
    assert "p0" in stale
    assert np.isnan(cohort.means(["p0"])[0])
    cohort.refresh("p0", *_search(live, live["p0"], skip="p0"))
    for name in cohort.stale():
        cohort.refresh(name, *_search(live, live[name], skip=name))
    assert cohort.stale() == []
    _assert_same(cohort, live, 3, 3)


def test_small_galleries_and_unknown_ids() -> None:
    cohort = GalleryCohort(4)
    assert cohort.enroll_radius == float("-inf")
    cohort.enroll("a", [], [])
    cohort.enroll("b", ["a"], [0.5])
    assert cohort.means(["a", "b", "nobody"])[:2].tolist() == [0.5, 0.5]
    assert np.isnan(cohort.means(["nobody"])[0])
    with pytest.raises(AlreadyExistsError):
        cohort.enroll("a", [], [])
    with pytest.raises(NotFoundError):
        cohort.delete("nobody")
    with pytest.raises(NotFoundError):
        cohort.enroll("c", ["nobody"], [0.1])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = _unit(rng, 15)
    live: dict[Hashable, np.ndarray] = {f"p{i}": x[i] for i in range(15)}
    cohort = _scratch(live, 4, 6)
    cohort.delete("p3")
    del live["p3"]
    for name in cohort.stale():
        cohort.refresh(name, *_search(live, live[name], skip=name))
    cohort.save(tmp_path / "cohort.npz")
    again = GalleryCohort.load(tmp_path / "cohort.npz")
    names = list(live)
    np.testing.assert_allclose(again.means(names), cohort.means(names))
    again.enroll("p3", *_search(live, x[3], above=again.enroll_radius, top=6))
    live["p3"] = x[3]
    _assert_same(again, live, 4, 6)


def test_built_from_index_neighbours_equals_brute_force() -> None:
    rng = np.random.default_rng(6)
    x = _unit(rng, 30)
    names = [f"p{i}" for i in range(30)]
    sims = x @ x.T
    order = np.argsort(-sims, axis=1)[:, :8]  # what a search for depth + 2 returns, self included
    got = GalleryCohort.from_neighbours(names, order, np.take_along_axis(sims, order, axis=1), 4, 6)
    want = GalleryCohort.from_scores(names, sims, 4, 6)
    np.testing.assert_allclose(got.means(names), want.means(names), atol=1e-6)
    assert got.enroll_radius == pytest.approx(want.enroll_radius)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bulk_changes_equal_one_at_a_time_and_a_recomputation(seed: int) -> None:
    """delete_many + enroll_many (a replay of many identities at once) leave the buffers that delete +
    enroll of each in turn leave, and the means of a recomputation."""
    rng = np.random.default_rng(seed)
    pool = _unit(rng, 90)
    k, depth = 4, 7
    live: dict[Hashable, np.ndarray] = {f"p{i}": pool[i] for i in range(60)}
    one, bulk = _scratch(live, k, depth), _scratch(live, k, depth)
    gone = [f"p{i}" for i in rng.choice(60, 12, replace=False)]
    for name in gone:
        one.delete(name)
        del live[name]
    bulk.delete_many([*gone, "nobody"])
    for cohort in (one, bulk):
        for name in cohort.stale():
            cohort.refresh(name, *_search(live, live[name], skip=name))
    np.testing.assert_allclose(bulk.means(list(live)), one.means(list(live)), atol=1e-6)
    newcomers = {f"p{i}": pool[i] for i in range(60, 90)} | {name: _unit(rng, 1)[0] for name in gone[:5]}
    for name, x in newcomers.items():  # one at a time: each against those present then
        one.enroll(name, *_search(live, x, above=one.enroll_radius, top=depth))
        live[name] = x
    entries = []
    for name, x in newcomers.items():  # all at once: each against the gallery as it is afterwards
        ids, scores = _search(live, x, skip=name, above=bulk.enroll_radius, top=depth)
        entries.append((name, ids, scores))
    bulk.enroll_many(entries)
    _assert_same(bulk, live, k, depth)
    for name in live:
        got, want = bulk.neighbours(name), one.neighbours(name)
        m = min(len(got[0]), len(want[0]))
        assert got[0][:m] == want[0][:m], name
    with pytest.raises(AlreadyExistsError):
        bulk.enroll_many([("p61", [], [])])
