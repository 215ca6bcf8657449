"""The gallery (published index + live delta + tombstones) without models: per-identity search
checked against exact brute force, deletions, merged listing, and installing a compacted version."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import AlreadyExistsError, NotFoundError
from facesearch.store.live_journal import JournalSnapshot, LiveJournal, NewFace
from indexer.compact import compact
from server.base_index import BaseIndex
from server.gallery import Gallery, GalleryState
from tests.integration.server_fixtures import build_index, synthetic_embeddings

CONTRACT = "test-model:0000000000000000"
D = 128


def new_faces(x: np.ndarray) -> list[NewFace]:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return [NewFace(v.astype(np.float32), None, None, None, None, None) for v in x]


def near(v: np.ndarray, seed: int) -> np.ndarray:
    """A unit vector very close to ``v`` (another photo of the same face)."""
    x = v + 0.01 * np.random.default_rng(seed).standard_normal(v.shape).astype(np.float32)
    return (x / np.linalg.norm(x)).astype(np.float32)


def exact_ranking(state: GalleryState, q: np.ndarray, all_vecs: dict[int, tuple[str, np.ndarray]], k: int) -> list[str]:
    """Brute force: best face per identity over every current face."""
    best: dict[str, float] = {}
    for vid, (ident, v) in all_vecs.items():
        if vid in state.live.tombstones:
            continue
        s = float(v @ q)
        best[ident] = max(best.get(ident, -2.0), s)
    return [i for i, _ in sorted(best.items(), key=lambda kv: -kv[1])[:k]]


@pytest.fixture(params=["flat", "ivf"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Gallery, dict[int, tuple[str, np.ndarray]], Path]:
    emb, ids = synthetic_embeddings(3000, seed=11)
    options = {"flat_max": 100} if request.param == "ivf" else {}
    build_index(tmp_path / "index", emb, ids, CONTRACT, work=tmp_path / "work", options=options)
    base = BaseIndex.load(tmp_path / "index", contract_id=CONTRACT)
    assert (base.loaded.manifest.nlist > 0) == (request.param == "ivf")
    journal = LiveJournal.open(tmp_path / "index" / "live", contract_id=CONTRACT, d=D)
    gallery = Gallery(journal, D)
    gallery.install(base)
    vecs = {int(v): (ids[i], emb[i]) for i, v in enumerate(base.vector_ids)}  # build keeps input order
    yield gallery, vecs, tmp_path / "index"
    journal.close()


def test_search_matches_exact_per_identity_ranking(setup) -> None:
    gallery, vecs, _ = setup
    state = gallery.state
    emb, _ = synthetic_embeddings(3000, seed=11)
    rng = np.random.default_rng(0)
    queries = emb[rng.choice(len(emb), 40, replace=False)] + 0.02 * rng.standard_normal((40, D)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    got = state.search(queries.astype(np.float32), 5)
    agree = sum(g[0].identity_id == exact_ranking(state, q, vecs, 5)[0] for g, q in zip(got, queries, strict=True))
    assert agree >= 38  # IVF may rarely miss; the indexer tuned it to >= 0.995 identity agreement
    for g in got:
        assert len({c.identity_id for c in g}) == len(g) == 5


def test_live_changes_and_tombstones(setup) -> None:
    gallery, _, _ = setup
    state = gallery.state
    emb, ids = synthetic_embeddings(3000, seed=11)
    target = ids[0]
    q = emb[0]
    assert state.search(q[None], 3)[0][0].identity_id == target
    n_before = state.identity(target).face_count
    # enrolling into a published identity merges with its faces
    live_vec = near(q, 1)
    with pytest.raises(AlreadyExistsError) as no_append:  # adding to an existing identity needs append
        gallery.enroll(target, "Target", {"k": "v"}, new_faces(live_vec[None]))
    assert no_append.value.reason == "IDENTITY_EXISTS" and "append" in no_append.value.message
    assert state.identity(target).face_count == n_before
    out = gallery.enroll(target, "Target", {"k": "v"}, new_faces(live_vec[None]), append=True)
    assert not out.created and out.face_count == n_before + 1
    top = state.search(live_vec[None], 3)[0]
    assert [c.identity_id for c in top].count(target) == 1 and top[0].name == "Target"
    assert top[0].face_id == out.face_ids[0]  # the live face is now its best
    with pytest.raises(AlreadyExistsError):
        gallery.enroll(target, None, {}, new_faces(q[None]), create_only=True)
    # deleting the best face: the next best face of the same person takes its place
    gallery.delete_faces(out.face_ids)
    after = state.search(live_vec[None], 5)[0]
    assert out.face_ids[0] not in {c.face_id for c in after} and after[0].identity_id == target
    assert state.identity(target).face_count == n_before
    # deleting the identity: gone from search, listing and lookups, immediately
    assert gallery.delete_identity(target) == n_before
    assert target not in {c.identity_id for c in state.search(q[None], 20)[0]}
    assert state.identity(target) is None
    with pytest.raises(NotFoundError):
        gallery.delete_identity(target)
    # re-enrolling the id starts a new person with only the new face
    again = gallery.enroll(target, None, {}, new_faces(q[None]), create_only=True)
    assert again.created and again.face_count == 1
    stats = state.stats()
    assert stats.tombstones == n_before and stats.live_faces == 1
    assert stats.faces == stats.index_ntotal - n_before + 1


def test_listing_merges_published_and_live(setup) -> None:
    gallery, _, _ = setup
    state = gallery.state
    emb, ids = synthetic_embeddings(3000, seed=11)
    published = sorted(set(ids))
    gallery.delete_identity(published[1])
    gallery.enroll("aaa-live", None, {}, new_faces(emb[:1]), create_only=True)
    gallery.enroll(published[2], "renamed", {}, new_faces(emb[1:2]), append=True)
    expected = sorted((set(published) - {published[1]}) | {"aaa-live"})
    seen, after = [], ""
    while True:
        page, more = state.list_page(after, 97)
        seen += [v.identity_id for v in page]
        if not more:
            break
        after = page[-1].identity_id
    assert seen == expected
    assert state.identity_count() == len(expected)
    renamed = state.identity(published[2])
    assert renamed.name == "renamed" and renamed.face_count == ids.count(published[2]) + 1


def test_install_compacted_version_drops_absorbed_delta(setup) -> None:
    gallery, _, root = setup
    emb, ids = synthetic_embeddings(3000, seed=11)
    gallery.delete_identity(ids[0])
    live = gallery.enroll("new-person", None, {}, new_faces(emb[5:7] * 0.9 + 0.1 * emb[:2]), create_only=True)
    q = (emb[5] * 0.9 + 0.1 * emb[0])[None].astype(np.float32)
    before = gallery.state.search(q / np.linalg.norm(q), 5)[0]
    result = compact(root)
    assert result.job is not None and result.added_faces == 2
    late = gallery.enroll("late-person", None, {}, new_faces(emb[9:10]), create_only=True)  # after the snapshot
    gallery.install(BaseIndex.load(root, contract_id=CONTRACT))
    state = gallery.state
    assert state.base.version == result.job.version_dir.name
    assert set(state.live.faces) == {int(late.face_ids[0])}  # only the change made after the snapshot
    assert not state.live.tombstones
    after = state.search(q / np.linalg.norm(q), 5)[0]
    assert [c.identity_id for c in after] == [c.identity_id for c in before]
    assert after[0].face_id in live.face_ids  # face ids survive compaction
    assert state.identity(ids[0]) is None and state.identity("late-person").face_count == 1


def _assert_statistics_exact(gallery: Gallery, faces: dict[int, tuple[str, np.ndarray]], what: str) -> None:
    """Templates and cohort means of every identity against a recomputation from all current faces."""
    from facesearch.scoring.normalise import gallery_topk_mean
    from facesearch.scoring.templates import build_gallery, gallery_scores

    labels = np.array([f[0] for f in faces.values()])
    g = build_gallery(np.stack([f[1] for f in faces.values()]), labels)
    names = [str(x) for x in g.identities]
    data = gallery.state.open_set.data
    assert sorted(map(str, data.cohort.identity_ids)) == names, what
    np.testing.assert_allclose(
        data.cohort.means(names), gallery_topk_mean(gallery_scores(g, "both"), 4), atol=1e-5, err_msg=what
    )
    np.testing.assert_allclose(data.templates.get(names)[0], g.templates, atol=1e-5, err_msg=what)


def test_open_set_statistics_stay_exact_through_changes_and_replay(setup) -> None:
    gallery, vecs, root = setup
    faces = dict(vecs)
    _assert_statistics_exact(gallery, faces, "built from the published version")
    emb, ids = synthetic_embeddings(3000, seed=11)
    rng = np.random.default_rng(5)
    published = sorted(set(ids))
    for step in range(24):
        kind = step % 4
        if kind == 0:  # a new person close to a published face
            x = near(emb[int(rng.integers(len(emb)))], step)
            out = gallery.enroll(f"new-{step}", None, {}, new_faces(x[None]), create_only=True)
            faces[int(out.face_ids[0])] = (f"new-{step}", x)
        elif kind == 1:  # a live face for a published person: its template changes
            who = published[int(rng.integers(len(published)))]
            if gallery.state.identity(who) is None:
                continue
            x = near(emb[ids.index(who)], 100 + step)
            out = gallery.enroll(who, None, {}, new_faces(x[None]), append=True)
            faces[int(out.face_ids[0])] = (who, x)
        elif kind == 2:  # a person deleted
            who = sorted({f[0] for f in faces.values()})[int(rng.integers(len(faces) // 4))]
            gallery.delete_identity(who)
            faces = {v: f for v, f in faces.items() if f[0] != who}
        else:  # one published face deleted
            vid = sorted(v for v in faces if v in vecs)[int(rng.integers(100))]
            gallery.delete_faces([str(vid)])
            del faces[vid]
    _assert_statistics_exact(gallery, faces, "after enrolls and deletes")
    gallery.install(BaseIndex.load(root, contract_id=CONTRACT))  # what a restart or a swap does: replay
    _assert_statistics_exact(gallery, faces, "after replaying the live changes")


def test_writes_go_on_while_a_version_is_installed(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The install replays the journal without the write lock: enrollments and deletions made meanwhile
    return at once, and the switch replays them into the new state too (statistics still exact)."""
    gallery, vecs, root = setup
    faces = dict(vecs)
    emb, ids = synthetic_embeddings(3000, seed=11)
    for step in range(8):  # live changes for the install to replay
        x = near(emb[30 * step], step)
        out = gallery.enroll(f"before-{step}", None, {}, new_faces(x[None]), create_only=True)
        faces[int(out.face_ids[0])] = (f"before-{step}", x)
    building, release = threading.Event(), threading.Event()
    original = Gallery._build

    def slow_build(self: Gallery, base: BaseIndex | None, snap: JournalSnapshot) -> GalleryState:
        state = original(self, base, snap)
        building.set()
        assert release.wait(120)
        return state

    monkeypatch.setattr(Gallery, "_build", slow_build)
    installer = threading.Thread(target=gallery.install, args=(BaseIndex.load(root, contract_id=CONTRACT),))
    installer.start()
    assert building.wait(120)
    doomed = sorted(set(ids))[3]
    one_face = sorted(v for v in faces if v in vecs and faces[v][0] != doomed)[7]

    def write() -> None:
        x = near(emb[11], 99)
        out = gallery.enroll("during", None, {}, new_faces(x[None]), create_only=True)
        faces[int(out.face_ids[0])] = ("during", x)
        gallery.delete_identity(doomed)
        gallery.delete_faces([str(one_face)])

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(60)
    assert not writer.is_alive(), "writes waited for the whole install"
    assert installer.is_alive()  # still replaying: the writes went to the state being replaced
    release.set()
    installer.join(120)
    for v in [v for v, f in faces.items() if f[0] == doomed] + [one_face]:
        del faces[v]
    state = gallery.state
    assert state.identity("during") is not None and state.identity(doomed) is None
    assert one_face in state.live.tombstones
    _assert_statistics_exact(gallery, faces, "after writes made during an install")
