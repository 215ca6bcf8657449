"""facesearch-index end to end on precomputed embeddings (face-like synthetic data).

IVF results are checked against exact ``IndexFlatIP`` ground truth on fresh mated queries;
versions are published, verified, tampered with, added to, removed from and rolled back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, load_index, read_manifest
from indexer.main import main

REPO = Path(__file__).resolve().parents[2]
CONTRACT = "synthetic:test"
FAST = ["--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def model() -> FaceEmbeddingModel:
    path = default_model_path()
    if not path.is_file():
        pytest.skip(f"face embedding model not found at {path} (committed in tests/data; FACESEARCH_DATA overrides)")
    faiss.omp_set_num_threads(1)
    return FaceEmbeddingModel.load(path)


def _npz(path: Path, x: np.ndarray, ids: list[str], contract: str = CONTRACT) -> Path:
    np.savez(
        path,
        embeddings=x,
        identities=np.array(ids),
        names=np.array([f"Person {i}" for i in ids]),
        contract_id=np.array(contract),
    )
    return path


@pytest.fixture(scope="module")
def gallery(model: FaceEmbeddingModel) -> SyntheticGallery:
    return SyntheticGallery(model, 20_000, faces_per_identity=4, seed=11)


@pytest.fixture(scope="module")
def ivf_root(gallery: SyntheticGallery, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ivf")
    g = gallery.materialize()
    src = _npz(tmp / "gallery.npz", g.embeddings, [str(i) for i in g.identities])
    root = tmp / "root"
    # in a process of its own: the build's peak_rss is its process's high-water mark, which here would
    # count whatever earlier tests held
    args = ["build", "--embeddings", str(src), "--out", str(root), "--memory-budget", "2G"]
    done = subprocess.run(
        [sys.executable, "-m", "indexer", *args, "--index-options", "flat_max=1000,queries=500", *FAST],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_build_publishes_a_tuned_ivf_version(ivf_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (ivf_root / "CURRENT").read_text().strip() == "v000001"
    assert main(["info", str(ivf_root)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["contract_id"] == CONTRACT and info["ntotal"] == 20_000 and info["d"] == 128
    assert info["factory"].startswith("IVF256,") and info["nlist"] == 256 and info["refine"] == "flat"
    assert info["recall"]["met"] and info["recall"]["recall_at_1"] >= 0.98
    assert info["search"]["nprobe"] > 0
    assert info["config"]["memory_budget"] == 2 << 30  # the resolved config travels with the version
    assert set(info["files"]) >= {"index.faiss", "identities.sqlite", "vector_ids.npy", "refine.npy"}
    assert info["build"]["peak_rss"] < 2 << 30


def test_ivf_agrees_with_exact_flat_on_fresh_mated_queries(ivf_root: Path, gallery: SyntheticGallery) -> None:
    g = gallery.materialize()
    q = gallery.mated_queries(400, g.identities, seed=5)
    index = load_index(ivf_root, expected_contract_id=CONTRACT)
    scores, found = index.search(q.embeddings, 10)
    flat = faiss.IndexFlatIP(128)
    flat.add(g.embeddings)
    exact_scores, exact = flat.search(q.embeddings, 10)
    # vector ids are assigned in input order for a fresh build
    recall1 = np.mean(found[:, 0] == exact[:, 0])
    same_identity = np.mean(g.identities[found[:, 0]] == g.identities[exact[:, 0]])
    assert recall1 >= 0.96
    assert same_identity >= 0.99
    assert np.allclose(
        scores[:, 0][found[:, 0] == exact[:, 0]], exact_scores[:, 0][found[:, 0] == exact[:, 0]], atol=1e-4
    )  # re-ranked scores are exact cosines
    with IdentityStore.open(index.dir / STORE_FILE) as store:
        faces = store.faces(found[:5, 0].tolist())
    assert [f.identity_id for f in faces if f] == [str(i) for i in g.identities[found[:5, 0]]]


def test_verify_passes_then_catches_tampering(ivf_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(ivf_root), *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    manifest = read_manifest(ivf_root)
    assert report["ok"] and report["recall"]["recall_at_1"] == manifest.recall.recall_at_1  # type: ignore[union-attr]
    refine = ivf_root / manifest.version / "refine.npy"
    data = bytearray(refine.read_bytes())
    data[-5] ^= 0xFF
    refine.write_bytes(bytes(data))
    try:
        assert main(["verify", str(ivf_root), *FAST]) == 1
        report = json.loads(capsys.readouterr().out)
        assert not report["ok"] and any("refine.npy" in p for p in report["problems"])
    finally:
        data[-5] ^= 0xFF
        refine.write_bytes(bytes(data))


def test_add_remove_rollback_keep_versions(
    model: FaceEmbeddingModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = SyntheticGallery(model, 3000, faces_per_identity=3, seed=21).materialize()
    root = tmp_path / "root"
    src = _npz(tmp_path / "a.npz", base.embeddings, [f"a{i}" for i in base.identities])
    assert main(["build", "--embeddings", str(src), "--out", str(root), "--keep-versions", "2", *FAST]) == 0
    assert read_manifest(root).factory == "IDMap,Flat"
    new = SyntheticGallery(model, 300, faces_per_identity=3, seed=22).materialize()
    add = _npz(tmp_path / "b.npz", new.embeddings, [f"b{i}" for i in new.identities])
    assert main(["add", str(root), "--embeddings", str(add), "--keep-versions", "2", *FAST]) == 0
    v2 = load_index(root)
    assert v2.manifest.version == "v000002" and v2.ntotal == 3300 and v2.manifest.parent == "v000001"
    _, found = v2.search(new.embeddings[:20], 1)
    assert (found[:, 0] >= 3000).all()  # the new faces are found as themselves (ids continue)

    victim = f"b{new.identities[0]}"
    victim_rows = np.flatnonzero(new.identities == new.identities[0])
    capsys.readouterr()
    assert main(["remove", str(root), "--identity", victim, "--identity", "nobody", "--keep-versions", "2", *FAST]) == 0
    assert "not found: nobody" in capsys.readouterr().out
    v3 = load_index(root)
    assert v3.ntotal == 3300 - len(victim_rows)
    _, found = v3.search(new.embeddings[victim_rows], 5)
    assert not np.isin(found, 3000 + victim_rows).any()  # the vectors are gone, not hidden
    with IdentityStore.open(v3.dir / STORE_FILE) as store:
        assert victim not in store.existing_identities([victim])
    for name in ("identities.sqlite", "index.faiss"):
        raw = (v3.dir / name).read_bytes()
        assert new.embeddings[victim_rows[0]].tobytes() not in raw
    versions = sorted(p.name for p in root.iterdir() if p.name.startswith("v"))
    assert versions == ["v000002", "v000003"]  # --keep-versions 2 pruned v000001

    assert main(["rollback", str(root)]) == 0
    assert read_manifest(root).version == "v000002"
    assert load_index(root).ntotal == 3300


def test_refusals_leave_the_current_version_alone(
    model: FaceEmbeddingModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = SyntheticGallery(model, 1000, faces_per_identity=3, seed=31).materialize()
    root = tmp_path / "root"
    src = _npz(tmp_path / "a.npz", g.embeddings, [str(i) for i in g.identities])
    assert main(["build", "--embeddings", str(src), "--out", str(root), *FAST]) == 0
    other = _npz(tmp_path / "other.npz", g.embeddings[:10], ["x"] * 10, contract="another-model:1")
    capsys.readouterr()
    assert main(["add", str(root), "--embeddings", str(other), *FAST]) == 1
    assert "CONTRACT_MISMATCH" in capsys.readouterr().err
    assert (
        main(
            [
                "build",
                "--embeddings",
                str(src),
                "--out",
                str(tmp_path / "small"),
                "--memory-budget",
                "100M",
                *FAST,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "MEMORY_BUDGET" in err and "--memory-budget" in err
    assert main(["remove", str(root), "--identity", "nobody", *FAST]) == 1
    assert read_manifest(root).version == "v000001"
    assert not list(root.glob(".staging-*"))


def test_parquet_input_rejects_bad_rows(model: FaceEmbeddingModel, tmp_path: Path) -> None:
    g = SyntheticGallery(model, 500, faces_per_identity=3, seed=41).materialize()
    x = g.embeddings.copy()
    x[3] = np.nan
    x[7] = 0.0
    ids = [str(i) for i in g.identities]
    ids[9] = ""
    table = pa.table(
        {
            "embeddings": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 128),
            "identities": pa.array(ids),
        }
    ).replace_schema_metadata({"contract_id": CONTRACT})
    pq.write_table(table, tmp_path / "e.parquet")
    root = tmp_path / "root"
    assert main(["build", "--embeddings", str(tmp_path / "e.parquet"), "--out", str(root), *FAST]) == 1  # 3 failed
    manifest = read_manifest(root)
    assert manifest.ntotal == 497
    assert manifest.build["rejected"] == {"BAD_EMBEDDING": 2, "NO_IDENTITY": 1}
    rejects = [json.loads(line) for line in (root / manifest.version / "rejects.jsonl").read_text().splitlines()]
    assert sorted((r["row"], r["reason"]) for r in rejects) == [
        (3, "BAD_EMBEDDING"),
        (7, "BAD_EMBEDDING"),
        (9, "NO_IDENTITY"),
    ]


def test_add_retrains_when_the_gallery_outgrows_exact_search(model: FaceEmbeddingModel, tmp_path: Path) -> None:
    g = SyntheticGallery(model, 4000, faces_per_identity=4, seed=51).materialize()
    root = tmp_path / "root"
    src = _npz(tmp_path / "a.npz", g.embeddings[:1000], [str(i) for i in g.identities[:1000]])
    more = _npz(tmp_path / "b.npz", g.embeddings[1000:], [str(i) for i in g.identities[1000:]])
    opts = ["--index-options", "flat_max=2000,queries=200"]
    assert main(["build", "--embeddings", str(src), "--out", str(root), *opts, *FAST]) == 0
    assert read_manifest(root).nlist == 0
    assert main(["add", str(root), "--embeddings", str(more), *opts, *FAST]) == 0
    m = read_manifest(root)
    assert m.nlist > 0 and m.ntotal == 4000 and "outgrew exact search" in m.build["retrained"]
    assert m.recall is not None and m.recall.met


def test_incremental_add_and_remove_on_a_trained_ivf(model: FaceEmbeddingModel, tmp_path: Path) -> None:
    g = SyntheticGallery(model, 6000, faces_per_identity=4, seed=61).materialize()
    labels = [f"p{i}" for i in g.identities]
    root = tmp_path / "root"
    opts = ["--index-options", "flat_max=1000,queries=300"]
    assert (
        main(
            [
                "build",
                "--embeddings",
                str(_npz(tmp_path / "a.npz", g.embeddings[:5000], labels[:5000])),
                "--out",
                str(root),
                *opts,
                *FAST,
            ]
        )
        == 0
    )
    v1 = read_manifest(root)
    assert v1.nlist == 128 and v1.refine == "flat"
    assert (
        main(
            [
                "add",
                str(root),
                "--embeddings",
                str(_npz(tmp_path / "b.npz", g.embeddings[5000:], labels[5000:])),
                *FAST,
            ]
        )
        == 0
    )
    v2 = load_index(root)
    m = v2.manifest
    assert m.build["retrained"] is None and m.build["trained_in"] == "v000001" and m.nlist == 128
    assert m.build["added_vectors"] == 1000 and m.ntotal == 6000 and m.recall is not None and m.recall.met
    assert m.config["index"]["queries"] == 300  # the build's options carry over
    _, found = v2.search(g.embeddings[5000:5100], 1)
    assert (found[:, 0] == np.arange(5000, 5100)).mean() >= 0.98
    victim = labels[5000]
    rows = [i for i, lab in enumerate(labels) if lab == victim]
    assert main(["remove", str(root), "--identity", victim, *FAST]) == 0
    v3 = load_index(root)
    assert v3.ntotal == 6000 - len(rows) and not np.isin(rows, v3.vector_ids).any()
    _, found = v3.search(g.embeddings[rows], 10)
    assert not np.isin(found, rows).any()
    assert v3.refine is not None and len(v3.refine.rows) == v3.ntotal


def test_sq8_store_rescores_exactly_from_disk(model: FaceEmbeddingModel, tmp_path: Path) -> None:
    g = SyntheticGallery(model, 6000, faces_per_identity=6, seed=71).materialize()
    labels = [f"p{i}" for i in g.identities]
    root = tmp_path / "root"
    src = _npz(tmp_path / "a.npz", g.embeddings, labels)
    opts = ["--index-options", "flat_max=1000,queries=300,refine=sq8"]
    assert main(["build", "--embeddings", str(src), "--out", str(root), *opts, *FAST]) == 0
    index = load_index(root)
    m = index.manifest
    assert m.refine == "sq8" and m.exact_on_disk and "exact.npy" in m.files and m.recall is not None
    assert m.recall.met
    assert index.refine is not None and index.refine.rows.dtype == np.uint8  # 128 B/face resident
    q = SyntheticGallery(model, 6000, faces_per_identity=6, seed=71).mated_queries(200, g.identities, seed=3)
    scores, found = index.search(q.embeddings, 5)
    exact = q.embeddings @ g.embeddings.T
    assert np.allclose(scores, np.take_along_axis(exact, found, axis=1), atol=1e-5)  # final scores are exact
    assert np.mean(found[:, 0] == exact.argmax(axis=1)) >= 0.97
    victim = labels[0]
    rows = [i for i, lab in enumerate(labels) if lab == victim]
    assert main(["remove", str(root), "--identity", victim, *FAST]) == 0
    v2 = load_index(root)
    assert v2.manifest.exact_on_disk and g.embeddings[rows[0]].tobytes() not in (v2.dir / "exact.npy").read_bytes()
