"""server.open_set_checkpoint: a restart on a checkpoint serves exactly the statistics a full replay
computes, replays only what came after it, and no checkpoint outlives an erasure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path
from facesearch.scoring.gallery_stats import GalleryOpenSet
from facesearch.store.live_journal import LiveJournal, NewFace
from server.base_index import BaseIndex
from server.gallery import Gallery
from server.open_set_checkpoint import DATA_FILE, META_FILE
from server.open_set_upkeep import OpenSetParams

CONTRACT = "test-checkpoint:0000000000000000"
D = 128


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    path = default_model_path()
    if not path.is_file():
        pytest.skip(f"face embedding model not found at {path}")
    return SyntheticGallery(FaceEmbeddingModel.load(path), 600, 2.0, seed=4).materialize().embeddings


@pytest.fixture(scope="module")
def root(faces: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from indexer.build import run
    from indexer.config import BuildConfig, InputSpec
    from indexer.plan import IndexOptions

    work = tmp_path_factory.mktemp("checkpoint-base")
    npz = work / "base.npz"
    ids = np.asarray([f"base-{i // 3}" for i in range(300)])
    np.savez(npz, embeddings=faces[:300], identities=ids, contract_id=np.asarray(CONTRACT))
    config = BuildConfig(
        out=work / "root",
        input=InputSpec("embeddings", npz),
        bundle=None,
        memory_budget=1 << 30,
        index=IndexOptions(queries=20),
        progress=False,
    )
    run(config)
    return work / "root"


def _new(v: np.ndarray) -> NewFace:
    return NewFace((v / np.linalg.norm(v)).astype(np.float32), None, None, None, None, None)


def _open(root: Path, live: Path) -> Gallery:
    gallery = Gallery(LiveJournal.open(live, contract_id=CONTRACT, d=D), D, OpenSetParams(k=4))
    gallery.checkpoints.delay_s = 600.0  # the tests write them (write_now), the thread never does
    gallery.checkpoints.erase_s = 1200.0
    gallery.install(BaseIndex.load(root, contract_id=CONTRACT))
    return gallery


def _close(gallery: Gallery, *, final: bool) -> None:
    if final:
        gallery.close()
    else:  # a crash: nothing written at the end
        gallery.checkpoints.close()
        gallery._requests.close()
    gallery.journal.close()


def _stats(gallery: Gallery) -> dict[str, tuple[np.ndarray, float]]:
    state = gallery.state
    assert state is not None and state.open_set.ready
    data: GalleryOpenSet = state.open_set.data
    ids = sorted(str(i) for i in data.cohort.identity_ids)
    templates, known = data.templates.get(ids)
    assert known.all()
    means = data.cohort.means(ids)
    return {i: (templates[n], float(means[n])) for n, i in enumerate(ids)}


def _same(a: dict[str, tuple[np.ndarray, float]], b: dict[str, tuple[np.ndarray, float]]) -> None:
    assert a.keys() == b.keys()
    for identity in a:
        np.testing.assert_allclose(a[identity][0], b[identity][0], atol=1e-6, err_msg=identity)
        assert a[identity][1] == pytest.approx(b[identity][1], abs=1e-6), identity


def test_a_restart_on_a_checkpoint_equals_a_full_replay(
    root: Path, faces: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    live = tmp_path / "live"
    gallery = _open(root, live)
    for i in range(40):  # live identities, and faces added to published ones
        gallery.enroll(f"live-{i}", None, {}, [_new(faces[300 + 2 * i]), _new(faces[301 + 2 * i])])
    gallery.enroll("base-7", None, {}, [_new(faces[400])], append=True)
    assert gallery.checkpoints.write_now()
    meta = json.loads((live / META_FILE).read_text())
    assert meta["seq"] == gallery.journal.high_water() == 41 and meta["key"]["version"]
    for i in range(40, 50):  # after the checkpoint: replayed on top of it
        gallery.enroll(f"live-{i}", None, {}, [_new(faces[300 + 2 * i])])
    _close(gallery, final=False)

    restarted = _open(root, live)
    assert "10 touched by live changes replayed" in caplog.text and "on the checkpoint at journal seq 41" in caplog.text
    replayed = _stats(restarted)
    assert restarted.checkpoints.written == 0
    _close(restarted, final=False)
    for name in (META_FILE, DATA_FILE):
        (live / name).unlink()
    full = _open(root, live)
    _same(replayed, _stats(full))
    _close(full, final=True)  # a clean shutdown writes one
    assert json.loads((live / META_FILE).read_text())["seq"] == 51
    caplog.clear()
    again = _open(root, live)  # on it, nothing after it: nothing to write
    assert "; 0 touched by live changes" in caplog.text and "on the checkpoint at journal seq 51" in caplog.text
    assert not again.checkpoints.write_now()
    _close(again, final=True)
    assert again.checkpoints.written == 0


def test_a_deletion_after_the_checkpoint_is_replayed_on_it_then_the_checkpoint_is_rewritten(
    root: Path, faces: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """D3: an erasure keeps the checkpoint usable (a restart on it replays the deletion: the subject
    leaves the templates and every cohort, as in a full replay) and the rewrite drops its bytes."""
    caplog.set_level("INFO")
    live = tmp_path / "live"
    gallery = _open(root, live)
    for i in range(5):
        gallery.enroll(f"live-{i}", None, {}, [_new(faces[300 + i]), _new(faces[310 + i])])
    assert gallery.checkpoints.write_now()
    seq = json.loads((live / META_FILE).read_text())["seq"]
    data = (live / DATA_FILE).read_bytes()
    assert b"live-3" in data and b"base-42" in data
    gallery.delete_identity("live-3", principal="test")
    gallery.delete_identity("base-42", principal="test")  # a published identity
    assert (live / META_FILE).is_file() and (live / DATA_FILE).read_bytes() == data  # still usable
    assert gallery.checkpoints.erase_pending
    _close(gallery, final=False)  # a crash before the rewrite

    restarted = _open(root, live)
    assert f"on the checkpoint at journal seq {seq}" in caplog.text
    assert f"checkpoint at journal seq {seq} predates 2 deletion(s)" in caplog.text
    assert restarted.checkpoints.erase_pending
    replayed = _stats(restarted)
    assert "live-3" not in replayed and "base-42" not in replayed and "live-2" in replayed
    state = restarted.state
    assert state is not None
    served = tmp_path / "served.npz"
    state.open_set.data.save(served)  # templates, cohorts and neighbour lists: nothing of the subjects
    assert b"live-3" not in served.read_bytes() and b"base-42" not in served.read_bytes()
    _close(restarted, final=False)

    kept = {name: (live / name).read_bytes() for name in (META_FILE, DATA_FILE)}
    for name in kept:
        (live / name).unlink()
    full = _open(root, live)  # the whole journal replayed: the same statistics
    _same(replayed, _stats(full))
    _close(full, final=False)
    for name, content in kept.items():
        (live / name).write_bytes(content)

    again = _open(root, live)
    assert again.checkpoints.erase_pending
    assert again.checkpoints.write_now()  # what the start's install requests
    assert not again.checkpoints.erase_pending and again.checkpoints.erase_rewrites == 1
    rewritten = (live / DATA_FILE).read_bytes()
    assert b"live-3" not in rewritten and b"base-42" not in rewritten and b"live-2" in rewritten
    _close(again, final=False)


def test_an_erasure_after_the_copy_is_written_again_and_a_clean_shutdown_rewrites(
    root: Path, faces: np.ndarray, tmp_path: Path
) -> None:
    """D3: a copy taken before an erasure leaves the erasure pending; a clean shutdown drops it."""
    live = tmp_path / "live"
    gallery = _open(root, live)
    for i in range(3):
        gallery.enroll(f"live-{i}", None, {}, [_new(faces[300 + i])])
    assert gallery.checkpoints.write_now()
    gallery.delete_identity("live-1", principal="test")
    assert gallery.checkpoints.erase_pending
    stale = gallery._checkpoint_copy()  # a copy taken, then another erasure before it is written
    assert stale is not None
    gallery.delete_identity("live-2", principal="test")
    gallery.checkpoints._take = lambda: stale
    assert gallery.checkpoints.write_now()  # newer than the one on disk, but it still holds live-2
    assert gallery.checkpoints.erase_pending and b"live-2" in (live / DATA_FILE).read_bytes()
    gallery.checkpoints._take = gallery._checkpoint_copy
    _close(gallery, final=True)  # a clean shutdown writes one without them
    data = (live / DATA_FILE).read_bytes()
    assert b"live-1" not in data and b"live-2" not in data and b"live-0" in data
    assert not gallery.checkpoints.erase_pending


def test_a_checkpoint_of_another_version_or_a_damaged_one_is_not_used(
    root: Path, faces: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = tmp_path / "live"
    gallery = _open(root, live)
    gallery.enroll("live-0", None, {}, [_new(faces[300])])
    assert gallery.checkpoints.write_now()
    _close(gallery, final=False)
    good = (live / META_FILE).read_text()
    meta = json.loads(good)
    meta["key"]["version"] = "v999999"
    (live / META_FILE).write_text(json.dumps(meta))
    caplog.set_level("INFO")
    _close(_open(root, live), final=False)
    assert "for another version" in caplog.text
    (live / META_FILE).write_text(good)
    with (live / DATA_FILE).open("r+b") as fh:  # one flipped byte
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    _close(_open(root, live), final=False)
    assert "does not match its sha256" in caplog.text
