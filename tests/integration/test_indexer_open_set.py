"""Every version facesearch-index publishes (build, add, remove, compact) carries ``open_set.npz``:
listed in its manifest and checked by verify, equal to a recomputation from scratch from the
version's faces, made with the bundle's (or the parent version's) k and template rule, and
loaded by the server as it is, without recomputing it. Faces: seeded synthetic embeddings."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from facesearch.scoring.gallery_stats import OPEN_SET_FILE, GalleryOpenSet
from facesearch.scoring.normalise import gallery_topk_mean
from facesearch.scoring.open_set_calibration import OPEN_SET_CALIBRATION_FILE
from facesearch.scoring.templates import build_gallery, gallery_scores
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, read_manifest
from facesearch.store.live_journal import LiveJournal, NewFace
from indexer.compact import compact
from indexer.main import main
from server.base_index import BaseIndex
from server.gallery import Gallery
from server.open_set_upkeep import OpenSetParams, load_base_open_set
from tests.integration.server_fixtures import synthetic_embeddings

CONTRACT = "synthetic:open-set"
D = 128
FAST = ["--threads", "1", "--quiet", "--memory-budget", "1G"]


def _npz(path: Path, x: np.ndarray, ids: list[str]) -> Path:
    np.savez(path, embeddings=x.astype(np.float32), identities=np.array(ids), contract_id=np.array(CONTRACT))
    return path


def _from_scratch(vdir: Path, k: int, rule: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Recomputed by brute force from every face of the version's store, with the library's scoring
    functions (not the bulk build's code): identity ids, templates, identity-vs-identity scores
    (diagonal -inf) and cohort means."""
    with IdentityStore.open(vdir / STORE_FILE) as store:
        chunks = list(store.iter_embeddings())
        keys = np.concatenate([c[2] for c in chunks])
        unique = np.unique(keys)
        names = dict(zip(unique.tolist(), store.identity_ids_by_key(unique.tolist()), strict=True))
    labels = np.array([names[int(key)] for key in keys])
    g = build_gallery(np.concatenate([c[1] for c in chunks]), labels)
    scores = gallery_scores(g, rule)
    np.fill_diagonal(scores, -np.inf)
    return [str(i) for i in g.identities], g.templates, scores, gallery_topk_mean(scores, k)


def _check_version(vdir: Path, k: int = 4, rule: str = "both") -> GalleryOpenSet:
    manifest = read_manifest(vdir)
    assert OPEN_SET_FILE in manifest.files and STORE_FILE in manifest.files  # hashed, so verify checks it
    facts = manifest.build["open_set"]
    assert (facts["k"], facts["rule"], facts["identities"]) == (k, rule, manifest.n_identities)
    assert not [p.name for p in vdir.iterdir() if p.name.startswith(".")]  # no scratch left behind
    data = GalleryOpenSet.load(vdir / OPEN_SET_FILE)
    assert data.store_sha256 == manifest.files[STORE_FILE].sha256
    ids, templates, scores, means = _from_scratch(vdir, k, rule)
    assert sorted(str(i) for i in data.cohort.identity_ids) == ids and (data.k, data.rule) == (k, rule)
    got_t, known = data.templates.get(ids)
    assert known.all()
    np.testing.assert_allclose(got_t, templates, atol=1e-5)
    np.testing.assert_allclose(data.cohort.means(ids), means, atol=1e-5)
    row = {identity: i for i, identity in enumerate(ids)}
    for i, identity in enumerate(ids):  # each buffer: the identity's best-scoring others, in order
        nbr, got = data.cohort.neighbours(identity)
        want = np.sort(scores[i])[::-1][: len(got)]
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(scores[i, [row[str(n)] for n in nbr]], got, atol=1e-5)
    return data


def test_build_add_remove_verify_carry_open_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emb, ids = synthetic_embeddings(600, seed=41, faces_per_identity=3.0, prefix="a")
    root = tmp_path / "root"
    assert main(["build", "--embeddings", str(_npz(tmp_path / "a.npz", emb, ids)), "--out", str(root), *FAST]) == 0
    assert "open-set statistics:" in capsys.readouterr().out
    v1 = root / "v000001"
    first = _check_version(v1)
    assert read_manifest(v1).build["open_set"]["params_from"] == "default"

    more, more_ids = synthetic_embeddings(200, seed=42, faces_per_identity=2.0, prefix="b")
    more_ids[:10] = ids[:10]  # new faces for existing identities change their templates
    assert main(["add", str(root), "--embeddings", str(_npz(tmp_path / "b.npz", more, more_ids)), *FAST]) == 0
    second = _check_version(root / "v000002")
    assert len(second) > len(first)
    assert read_manifest(root / "v000002").build["open_set"]["params_from"] == "parent"

    # a bundle whose open-set calibration was measured with k=3 and rule "best" sets the parameters
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    cal = {
        "score": "margin-v1",
        "k": 3,
        "template": "best",
        "identities": 100,
        "source": "test",
        "default_fpir": 0.01,
        "normalise_from": 128,
        "curves": [{"gallery_size": 16, "searches": 1000, "points": [{"fpir": 0.1, "threshold": 0.05}]}],
    }
    (bundle / OPEN_SET_CALIBRATION_FILE).write_text(json.dumps(cal))
    gone = sorted(set(ids))[:5]
    assert main(["remove", str(root), *[f"--identity={i}" for i in gone], "--bundle", str(bundle), *FAST]) == 0
    third = _check_version(root / "v000003", k=3, rule="best")
    assert not set(gone) & {str(i) for i in third.cohort.identity_ids}
    assert read_manifest(root / "v000003").build["open_set"]["params_from"] == "bundle"

    capsys.readouterr()
    assert main(["verify", str(root), "--no-recall", "--quiet"]) == 0
    with (root / "v000003" / OPEN_SET_FILE).open("r+b") as fh:  # tampering is caught
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert main(["verify", str(root), "--no-recall", "--quiet"]) == 1
    assert f"{OPEN_SET_FILE}: sha256 differs" in capsys.readouterr().out


def test_compact_carries_open_set_and_the_server_loads_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.integration.server_fixtures import build_index

    emb, ids = synthetic_embeddings(500, seed=43, faces_per_identity=3.0, prefix="c")
    root = tmp_path / "index"
    build_index(root, emb, ids, CONTRACT, work=tmp_path / "work")
    params = OpenSetParams(cache_dir=tmp_path / "cache")
    journal = LiveJournal.open(root / "live", contract_id=CONTRACT, d=D)
    try:
        gallery = Gallery(journal, D, params)
        with caplog.at_level(logging.INFO, logger="facesearch.server.open_set_upkeep"):
            gallery.install(BaseIndex.load(root, contract_id=CONTRACT))
        assert "loaded from the version's open_set.npz" in caplog.text
        assert "computed the open-set statistics" not in caplog.text
        rng = np.random.default_rng(0)
        x = emb[:3] + 0.05 * rng.standard_normal((3, D)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        gallery.enroll("live-person", None, {}, [NewFace(v, None, None, None, None, None) for v in x], create_only=True)
        gallery.delete_identity(ids[-1])
        result = compact(root)
        assert result.job is not None
        vdir = result.job.version_dir
        data = _check_version(vdir)
        names = {str(i) for i in data.cohort.identity_ids}
        assert "live-person" in names and ids[-1] not in names
        assert read_manifest(vdir).build["open_set"]["params_from"] == "parent"
    finally:
        journal.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="facesearch.server.open_set_upkeep"):
        loaded = load_base_open_set(vdir, params)  # as the indexer wrote it: not recomputed
        assert "loaded from the version's open_set.npz" in caplog.text and len(loaded) == len(data)
        assert not list((tmp_path / "cache").glob("*.npz"))
        caplog.clear()
        other = load_base_open_set(vdir, OpenSetParams(k=3, cache_dir=tmp_path / "cache"))  # another k
        assert other.k == 3 and "the server uses k=3" in caplog.text
        assert "computed the open-set statistics" in caplog.text
        caplog.clear()
        stale = tmp_path / "stale"  # a version whose file was computed from another store
        shutil.copytree(vdir, stale)
        shutil.copyfile(root / "v000001" / OPEN_SET_FILE, stale / OPEN_SET_FILE)
        assert load_base_open_set(stale, OpenSetParams()).store_sha256 is None  # recomputed
        assert "computed from another identity store" in caplog.text
        caplog.clear()
        (stale / OPEN_SET_FILE).unlink()  # a version made before the indexer wrote the file
        rebuilt = load_base_open_set(stale, OpenSetParams())
        assert "computed the open-set statistics" in caplog.text
        np.testing.assert_allclose(rebuilt.cohort.means(sorted(names)), data.cohort.means(sorted(names)), atol=1e-6)
