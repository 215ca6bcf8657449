"""Reading precomputed embeddings in chunks: .npz streamed from the zip, and Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facesearch.errors import InvalidInputError
from indexer.read import EmbeddingFile


def _data(n: int = 1000, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)).astype(np.float32), np.arange(n) % 37


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_chunks(tmp_path: Path, compressed: bool) -> None:
    x, ids = _data()
    path = tmp_path / "e.npz"
    save = np.savez_compressed if compressed else np.savez
    save(
        path,
        embeddings=x,
        identities=ids,
        names=np.array([f"P {i}" for i in ids]),
        contract_id=np.array("m:1"),
    )
    src = EmbeddingFile(path)
    assert (src.n, src.d, src.contract_id) == (1000, 16, "m:1")
    for _ in range(2):  # re-iterable
        chunks = list(src.chunks(300))
        assert [c.start for c in chunks] == [0, 300, 600, 900]
        assert np.array_equal(np.concatenate([c.embeddings for c in chunks]), x)
        assert [i for c in chunks for i in c.identities] == [str(i) for i in ids]
        assert chunks[0].names is not None and chunks[0].names[5] == "P 5"


def test_parquet_chunks(tmp_path: Path) -> None:
    x, ids = _data()
    table = pa.table(
        {
            "embeddings": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 16),
            "identities": pa.array([f"id{i}" for i in ids]),
            "contract_id": pa.array(["m:1"] * len(x)),
        }
    )
    path = tmp_path / "e.parquet"
    pq.write_table(table, path, row_group_size=256)
    src = EmbeddingFile(path)
    assert (src.n, src.d, src.contract_id) == (1000, 16, "m:1")
    chunks = list(src.chunks(300))
    assert np.array_equal(np.concatenate([c.embeddings for c in chunks]), x)
    assert chunks[0].identities[1] == "id1" and chunks[0].names is None
    meta = pa.table({"embeddings": pa.array(x.tolist()), "identities": pa.array(ids)}).replace_schema_metadata(
        {"contract_id": "m:2"}
    )
    pq.write_table(meta, tmp_path / "m.parquet")
    assert EmbeddingFile(tmp_path / "m.parquet").contract_id == "m:2"


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    x, ids = _data(10)
    np.savez(tmp_path / "nocid.npz", embeddings=x, identities=ids)
    with pytest.raises(InvalidInputError, match="contract_id"):
        EmbeddingFile(tmp_path / "nocid.npz")
    np.savez(
        tmp_path / "pickled.npz",
        embeddings=x,
        identities=np.array([object()] * 10, dtype=object),
        contract_id=np.array("m"),
    )
    with pytest.raises(InvalidInputError, match="pickle"):
        list(EmbeddingFile(tmp_path / "pickled.npz").chunks(5))
    np.savez(tmp_path / "short.npz", embeddings=x, identities=ids[:5], contract_id=np.array("m"))
    with pytest.raises(InvalidInputError, match="identities shape"):
        EmbeddingFile(tmp_path / "short.npz")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InvalidInputError, match=r"\.npz or \.parquet"):
        EmbeddingFile(tmp_path / "x.csv")
    with pytest.raises(InvalidInputError, match="no such file"):
        EmbeddingFile(tmp_path / "missing.npz")
