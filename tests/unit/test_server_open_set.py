"""The gallery's open-set statistics: bulk build, file round trip, exact upkeep through enroll and
delete with bounded searches, and per-request scores, each against a recomputation from scratch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from facesearch.scoring.cohort import GalleryCohort
from facesearch.scoring.gallery_stats import GalleryOpenSet, build_open_set
from facesearch.scoring.normalise import normalise_matrix
from facesearch.scoring.templates import build_gallery, gallery_scores, identity_scores
from server.open_set_state import OpenSetState
from server.open_set_upkeep import OpenSetUpkeep
from server.search import Candidate

D = 24


def clustered(identities: int, seed: int, max_faces: int = 3) -> dict[str, list[np.ndarray]]:
    """Identities as tight clusters around centres that share a common direction (a narrow cone)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=D)
    out = {}
    for i in range(identities):
        centre = common + 0.6 * rng.normal(size=D)
        faces = centre + 0.25 * rng.normal(size=(int(rng.integers(1, max_faces + 1)), D))
        out[f"id{i:03d}"] = list((faces / np.linalg.norm(faces, axis=1, keepdims=True)).astype(np.float32))
    return out


def scratch(gallery: dict[str, list[np.ndarray]], rule: str, k: int = 4) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(identity ids, templates, cohort means)`` computed from all faces at once."""
    labels = np.array([i for i, faces in gallery.items() for _ in faces])
    g = build_gallery(np.stack([f for faces in gallery.values() for f in faces]), labels)
    names = [str(x) for x in g.identities]
    return names, g.templates, GalleryCohort.from_scores(names, gallery_scores(g, rule), k).means(names)


def flat(gallery: dict[str, list[np.ndarray]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    names = sorted(gallery)
    rows = np.array([r for r, n in enumerate(names) for _ in gallery[n]])
    return names, rows, np.stack([f for n in names for f in gallery[n]])


@pytest.mark.parametrize("rule", ["both", "best", "mean"])
@pytest.mark.parametrize("exact_faces", [10_000, 0])  # exact pairs, and a shortlist that covers everyone
def test_bulk_build_equals_scratch(rule: str, exact_faces: int) -> None:
    gallery = clustered(40, seed=1)
    names, rows, faces = flat(gallery)
    built = build_open_set(names, rows, faces, k=4, rule=rule, exact_faces=exact_faces, shortlist=64)
    want_names, templates, means = scratch(gallery, rule)
    np.testing.assert_allclose(built.cohort.means(want_names), means, atol=1e-6)
    np.testing.assert_allclose(built.templates.get(want_names)[0], templates, atol=1e-6)


def test_shortlisted_build_is_close(tmp_path: Path) -> None:
    gallery = clustered(300, seed=2)
    names, rows, faces = flat(gallery)
    built = build_open_set(names, rows, faces, exact_faces=0, shortlist=32)
    _, _, means = scratch(gallery, "both")
    got = built.cohort.means(sorted(gallery))
    assert np.mean(np.abs(got - means) < 1e-6) > 0.95 and np.abs(got - means).max() < 0.02
    built.save(tmp_path / "open_set.npz")
    again = GalleryOpenSet.load(tmp_path / "open_set.npz")
    assert (again.k, again.rule, again.depth, len(again)) == (built.k, built.rule, built.depth, len(built))
    np.testing.assert_array_equal(again.cohort.means(names), got)
    np.testing.assert_array_equal(again.templates.get(names)[0], built.templates.get(names)[0])


class BruteGallery:
    """Exact search over an in-memory gallery (what a flat index + live delta would answer)."""

    def __init__(self, gallery: dict[str, list[np.ndarray]]) -> None:
        self.gallery = gallery
        self.searches = 0

    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]:
        self.searches += 1
        out = []
        for q in np.atleast_2d(queries):
            best = sorted(
                ((float(np.max(np.stack(f) @ q)), i) for i, f in self.gallery.items() if f), key=lambda x: (-x[0], x[1])
            )[:k]
            out.append([Candidate(i, "", s, "0") for s, i in best])
        return out

    def embeddings_of_many(self, identity_ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {i: np.stack(self.gallery[i]) for i in identity_ids if self.gallery.get(i)}


@pytest.mark.parametrize("seed", [0, 1])
def test_upkeep_stays_exact_through_enroll_and_delete(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool = clustered(160, seed=10 + seed)
    names = sorted(pool)
    gallery = {n: list(pool[n]) for n in names[:100]}  # 100 identities: the shortlist (16) is far from all
    state = OpenSetState(build_open_set(*flat(gallery), k=4, rule="both"))
    reader = BruteGallery(gallery)
    upkeep = OpenSetUpkeep(reader, state)
    spare = names[100:]
    for step in range(40):
        r = rng.random()
        if r < 0.35 and spare:  # a new person
            who = spare.pop()
            gallery[who] = list(pool[who])
        elif r < 0.55:  # another photo of an enrolled person
            who = sorted(gallery)[int(rng.integers(len(gallery)))]
            x = gallery[who][0] + 0.2 * rng.normal(size=D).astype(np.float32)
            gallery[who].append((x / np.linalg.norm(x)).astype(np.float32))
        elif r < 0.8:  # a person deleted
            who = sorted(gallery)[int(rng.integers(len(gallery)))]
            del gallery[who]
        else:  # one photo deleted (a person may be left with none: not in the gallery)
            who = sorted(gallery)[int(rng.integers(len(gallery)))]
            gallery[who].pop(0)
        upkeep.changed([who])
        live = {n: f for n, f in gallery.items() if f}
        want_names, templates, means = scratch(live, "both")
        assert sorted(map(str, state.data.cohort.identity_ids)) == want_names, step
        np.testing.assert_allclose(state.data.cohort.means(want_names), means, atol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(state.data.templates.get(want_names)[0], templates, atol=1e-5)
    assert state.ready
    assert reader.searches < 40 * 4  # bounded: a search or so per change, never a scan of every face


def test_request_scores_match_the_library_over_the_whole_gallery() -> None:
    gallery = clustered(30, seed=3)
    state = OpenSetState(build_open_set(*flat(gallery), k=4, rule="both"))
    probe = gallery["id007"][0] + 0.3 * np.random.default_rng(0).normal(size=D)
    probe = (probe / np.linalg.norm(probe)).astype(np.float32)
    cands = BruteGallery(gallery).search(probe, 30)[0]  # everyone: the shortlist is the gallery
    scored = state.score(probe, cands)
    names, _, means = scratch(gallery, "both")
    labels = np.array([n for n in names for _ in gallery[n]])
    g = build_gallery(np.stack([f for n in names for f in gallery[n]]), labels)
    want = normalise_matrix(identity_scores(probe[None, :], g, "both"), means, 4)[0]
    by_name = dict(zip(names, want, strict=True))
    for s in scored:
        assert s.normalised == pytest.approx(by_name[s.identity_id], abs=1e-5)
        assert s.identity_mean == pytest.approx(means[names.index(s.identity_id)], abs=1e-6)
        assert s.probe_mean is not None and s.identity_mean is not None
        assert s.normalised == pytest.approx(s.identity_similarity - (s.probe_mean + s.identity_mean) / 2, abs=1e-6)
    state.fail("test")
    assert all(s.normalised is None and s.identity_similarity == s.similarity for s in state.score(probe, cands))


def test_a_neighbour_only_its_template_reveals_is_found() -> None:
    """J's faces are far from X's but their mean is X's direction: J ranks first under ``both`` while
    20 other identities beat it on best face, so it is outside X's best-face shortlist."""
    rng = np.random.default_rng(7)
    e0 = np.eye(D, dtype=np.float32)[0]

    def ortho() -> np.ndarray:
        v = rng.normal(size=D)
        v[0] = 0.0
        return (v / np.linalg.norm(v)).astype(np.float32)

    w = ortho()
    gallery = {f"o{i:02d}": [(0.75 * e0 + np.sqrt(1 - 0.75**2) * ortho()).astype(np.float32)] for i in range(30)}
    gallery["j"] = [(0.6 * e0 + 0.8 * w).astype(np.float32), (0.6 * e0 - 0.8 * w).astype(np.float32)]
    state = OpenSetState(build_open_set(*flat(gallery), k=4, rule="both"))
    gallery["x"] = [e0]
    upkeep = OpenSetUpkeep(BruteGallery(gallery), state)
    own_ids, own_scores = upkeep.neighbours("x", np.stack(gallery["x"]), e0, reverse=False)  # the refresh path
    assert dict(zip(own_ids, own_scores, strict=True))["j"] == pytest.approx(0.8, abs=1e-6)
    upkeep.changed(["x"])
    names, _, means = scratch(gallery, "both")
    np.testing.assert_allclose(state.data.cohort.means(names), means, atol=1e-5)
    assert state.data.cohort.neighbours("x")[0][0] == "j"


@pytest.mark.parametrize("rule", ["both", "best"])
def test_a_replay_of_most_of_the_gallery_is_recomputed_in_bulk_with_the_same_statistics(rule: str) -> None:
    """Issue 14: a replica's (or a restart's) replay of a long log tail touches most identities at once;
    it is recomputed in bulk (no gallery search per identity) and equals the identity-by-identity
    replay and a recomputation from scratch, to 1e-6."""
    gallery = clustered(120, seed=21)
    names = sorted(gallery)
    first = {n: gallery[n] for n in names[:30]}
    replays = []
    for bulk_min in (1, 10_000):  # bulk; identity by identity
        state = OpenSetState(build_open_set(*flat(first), k=4, rule=rule))
        reader = BruteGallery(gallery)
        upkeep = OpenSetUpkeep(reader, state, bulk_min=bulk_min)
        upkeep.changed(names[30:] + names[:5])  # 95 of 120 identities touched
        replays.append((state, reader.searches))
    (bulk, bulk_searches), (one_by_one, searches) = replays
    assert bulk_searches == 0 and searches > 0
    _, templates, means = scratch(gallery, rule)
    for state in (bulk, one_by_one):
        assert sorted(map(str, state.data.cohort.identity_ids)) == names
        np.testing.assert_allclose(state.data.cohort.means(names), means, atol=1e-6)
        np.testing.assert_allclose(state.data.templates.get(names)[0], templates, atol=1e-6)
    reader = BruteGallery(gallery)
    OpenSetUpkeep(reader, OpenSetState(build_open_set(*flat(gallery), k=4, rule=rule)), bulk_min=1).changed(names[:10])
    assert reader.searches > 0  # a change touching a minority is replayed, not recomputed
