"""The artifact format: manifest, CURRENT resolution, sha256 checks, contract refusal, search."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np
import pytest

from facesearch.errors import ContractMismatchError, IndexFormatError, NotFoundError
from facesearch.store.index_artifact import (
    IndexManifest,
    IndexSearcher,
    RefineStore,
    SearchParams,
    check_files,
    load_index,
    read_manifest,
    resolve_version_dir,
)
from indexer.publish import next_version, prune, publish, rollback, seal, staging_dir, write_index_files


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    faiss.omp_set_num_threads(1)  # the test machine's cores are shared; OpenMP spinning would crawl


def _vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal(d)
    x = (centre + 0.6 * rng.standard_normal((n, d))).astype(np.float32)  # a narrow-ish cone
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _manifest(version: str, ntotal: int, d: int = 32, contract: str = "m:1") -> IndexManifest:
    return IndexManifest(
        version=version,
        created_at="2026-01-01T00:00:00Z",
        contract_id=contract,
        d=d,
        ntotal=ntotal,
        n_identities=ntotal,
        factory="IDMap,Flat",
        nlist=0,
        search=SearchParams(),
        recall=None,
        refine="",
        input_fingerprint="x",
        parent=None,
        build={},
        config={},
    )


def _publish_flat(root: Path, x: np.ndarray, ids: np.ndarray, keep: int = 3) -> str:
    index = faiss.index_factory(x.shape[1], "IDMap,Flat", faiss.METRIC_L2)
    index.add_with_ids(x, ids)
    version = next_version(root)
    with staging_dir(root, version) as staged:
        write_index_files(staged, index, ids, None, None)
        seal(staged, _manifest(version, len(x), x.shape[1]))
        publish(root, staged, version, keep)
    return version


def test_publish_current_rollback_prune(tmp_path: Path) -> None:
    x = _vectors(50)
    ids = np.arange(50, dtype=np.int64) * 3
    assert [_publish_flat(tmp_path, x, ids, keep=2) for _ in range(3)] == ["v000001", "v000002", "v000003"]
    assert (tmp_path / "CURRENT").read_text().strip() == "v000003"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("v")) == ["v000002", "v000003"]
    assert resolve_version_dir(tmp_path) == tmp_path / "v000003"
    assert rollback(tmp_path) == "v000002"
    assert read_manifest(tmp_path).version == "v000002"
    assert prune(tmp_path, 1) == []  # never deletes the current version
    with pytest.raises(NotFoundError):
        rollback(tmp_path, "v000001")
    loaded = load_index(tmp_path, expected_contract_id="m:1", verify=True)
    scores, found = loaded.search(x[:5], 3)
    assert found[:, 0].tolist() == ids[:5].tolist()
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)  # cosine of a vector with itself
    exact = x[:5] @ x.T
    assert np.allclose(np.sort(exact, axis=1)[:, ::-1][:, :3], scores, atol=1e-5)


def test_tampering_and_contract_are_refused(tmp_path: Path) -> None:
    x = _vectors(40)
    _publish_flat(tmp_path, x, np.arange(40, dtype=np.int64))
    vdir = resolve_version_dir(tmp_path)
    assert check_files(vdir) == []
    with pytest.raises(ContractMismatchError, match="rebuild"):
        load_index(tmp_path, expected_contract_id="other:9")
    ids = np.load(vdir / "vector_ids.npy")
    ids[0] = 99
    np.save(vdir / "vector_ids.npy", ids)
    assert any("vector_ids.npy" in p for p in check_files(vdir))
    with pytest.raises(IndexFormatError):
        load_index(tmp_path, verify=True)
    data = json.loads((vdir / "manifest.json").read_text())
    data["format_version"] = 99
    (vdir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="newer"):
        read_manifest(vdir)
    with pytest.raises(NotFoundError):
        resolve_version_dir(tmp_path / "nowhere")


def test_manifest_round_trip() -> None:
    m = _manifest("v000007", 10)
    again = IndexManifest.from_dict(json.loads(m.to_json()))
    assert again == m and asdict(again.search) == {"nprobe": 0, "quantizer_ef": 0, "refine_k_factor": 0}


@pytest.mark.parametrize("refine", ["flat", "fp16", "sq8"])
def test_reranked_ivf_matches_exact_when_exhaustive(refine: str) -> None:
    d, n = 32, 4000
    x = _vectors(n, d)
    ids = np.arange(n, dtype=np.int64) * 2 + 5
    index = faiss.index_factory(d, "IVF16,PQ16x4fs", faiss.METRIC_L2)
    index.train(x)
    index.add_with_ids(x, ids)
    codec = None
    rows: np.ndarray = x
    if refine == "fp16":
        rows = x.astype(np.float16)
    elif refine == "sq8":
        codec = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit)
        codec.train(x)
        rows = codec.sa_encode(x)
    searcher = IndexSearcher(index, ids, RefineStore(rows, codec), SearchParams(nprobe=16, refine_k_factor=16))
    q = _vectors(50, d, seed=1)
    scores, found = searcher.search(q, 5)
    exact = q @ x.T
    top = np.argsort(-exact, axis=1)[:, :5]
    agree = (found[:, 0] == ids[top[:, 0]]).mean()
    assert agree >= (1.0 if refine == "flat" else 0.9)
    assert np.allclose(scores[:, 0], exact[np.arange(50), top[:, 0]], atol=2e-2 if refine == "sq8" else 2e-3)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    _, few_ids = searcher.search(q[:2], 5, SearchParams(nprobe=1, refine_k_factor=1))
    assert few_ids.shape == (2, 5)
