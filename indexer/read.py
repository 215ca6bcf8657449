"""Reading precomputed embeddings in bounded chunks: ``.npz`` (streamed from the zip) or Parquet.

``.npz`` keys: ``embeddings`` (n, d) float, ``identities`` (n,) str or int, optional ``names``
(n,) str, and ``contract_id`` (a 0-d string). Parquet: columns ``embeddings`` (list or
fixed-size list of float), ``identities``, optional ``names``, and ``contract_id`` either as a
column (one value) or as schema metadata. Neither format is ever loaded whole: a 10M-face
file is read ``chunk`` rows at a time, so peak memory depends on the chunk, not on the file.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow.parquet as pq

from facesearch.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class InputChunk:
    """Rows ``[start, start + n)`` of an input: raw embeddings and identity labels."""

    start: int
    embeddings: np.ndarray  # (n, d) float32, not yet validated
    identities: list[str]
    names: list[str | None] | None
    sources: list[str | None] | None = None
    boxes: np.ndarray | None = None
    det_scores: np.ndarray | None = None
    face_sizes: np.ndarray | None = None
    blurs: np.ndarray | None = None
    metadata: list[dict[str, Any] | None] | None = None
    chips: list[np.ndarray | None] | None = None
    row_numbers: np.ndarray | None = None  # input row of each embedding (default: start + i)

    def row(self, i: int) -> int:
        return int(self.row_numbers[i]) if self.row_numbers is not None else self.start + i

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


class EmbeddingFile:
    """A precomputed-embeddings file; ``chunks()`` can be iterated any number of times."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InvalidInputError(f"--embeddings {self.path}: no such file")
        suffix = self.path.suffix.lower()
        if suffix == ".npz":
            self._reader: _NpzReader | _ParquetReader = _NpzReader(self.path)
        elif suffix in (".parquet", ".pq"):
            self._reader = _ParquetReader(self.path)
        else:
            raise InvalidInputError(f"--embeddings {self.path}: expected a .npz or .parquet file")
        self.n, self.d, self.contract_id = self._reader.n, self._reader.d, self._reader.contract_id
        if self.n < 1:
            raise InvalidInputError(f"--embeddings {self.path} holds no rows")

    def chunks(self, rows: int) -> Iterator[InputChunk]:
        return self._reader.chunks(rows)

    def describe(self) -> str:
        return str(self.path)


# -- .npz ----------------------------------------------------------------------------------
class _NpyStream:
    """Sequential reads of rows from one ``.npy`` member of a zip, without loading it."""

    def __init__(self, zf: zipfile.ZipFile, name: str) -> None:
        self.fh: IO[bytes] = zf.open(name)
        version = np.lib.format.read_magic(self.fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self.fh)
        if dtype.hasobject:
            raise InvalidInputError(f"{name} holds Python objects (pickles are refused); save strings as str arrays")
        if fortran and len(shape) > 1:
            raise InvalidInputError(f"{name} is Fortran-ordered; save it C-ordered (np.ascontiguousarray)")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_items = int(np.prod(shape[1:])) if len(shape) > 1 else 1

    def read(self, rows: int) -> np.ndarray:
        nbytes = rows * self.row_items * self.dtype.itemsize
        data = self.fh.read(nbytes)
        if len(data) != nbytes:
            raise InvalidInputError(f"truncated array: wanted {nbytes} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=self.dtype).reshape((rows, *self.shape[1:]))

    def close(self) -> None:
        self.fh.close()


class _NpzReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as zf:
                members = {n.removesuffix(".npy") for n in zf.namelist()}
                for key in ("embeddings", "identities", "contract_id"):
                    if key not in members:
                        raise InvalidInputError(f"--embeddings {path}: missing key {key!r} (has {sorted(members)})")
                emb = _NpyStream(zf, "embeddings.npy")
                ids = _NpyStream(zf, "identities.npy")
                emb.close()
                ids.close()
                self.has_names = "names" in members
                with zf.open("contract_id.npy") as fh:
                    cid = np.lib.format.read_array(fh, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise InvalidInputError(f"--embeddings {path}: not a readable .npz ({err})") from err
        if len(emb.shape) != 2 or emb.dtype.kind != "f":
            raise InvalidInputError(
                f"--embeddings {path}: embeddings must be a 2-d float array, got {emb.dtype} {emb.shape}"
            )
        if ids.shape != (emb.shape[0],):
            raise InvalidInputError(f"--embeddings {path}: identities shape {ids.shape}, expected ({emb.shape[0]},)")
        self.n, self.d = int(emb.shape[0]), int(emb.shape[1])
        self.contract_id = str(cid.item() if cid.ndim == 0 else cid.ravel()[0])

    def chunks(self, rows: int) -> Iterator[InputChunk]:
        with zipfile.ZipFile(self.path) as zf:
            emb, ids = _NpyStream(zf, "embeddings.npy"), _NpyStream(zf, "identities.npy")
            names = _NpyStream(zf, "names.npy") if self.has_names else None
            try:
                for start in range(0, self.n, rows):
                    take = min(rows, self.n - start)
                    x = emb.read(take).astype(np.float32)
                    labels: list[str | None] | None = None
                    if names is not None:
                        labels = list(_labels(names.read(take)))
                    yield InputChunk(start, x, _labels(ids.read(take)), labels)
            finally:
                emb.close()
                ids.close()
                if names is not None:
                    names.close()


# -- Parquet -------------------------------------------------------------------------------
class _ParquetReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            pf = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several unrelated types for a bad file
            raise InvalidInputError(f"--embeddings {path}: not a readable Parquet file ({err})") from err
        schema = pf.schema_arrow
        for key in ("embeddings", "identities"):
            if key not in schema.names:
                raise InvalidInputError(f"--embeddings {path}: missing column {key!r} (has {schema.names})")
        self.has_names = "names" in schema.names
        self.n = int(pf.metadata.num_rows)
        meta = schema.metadata or {}
        if b"contract_id" in meta:
            self.contract_id = meta[b"contract_id"].decode()
        elif "contract_id" in schema.names:
            first = next(pf.iter_batches(batch_size=1, columns=["contract_id"]))
            self.contract_id = str(first.column(0)[0].as_py())
        else:
            raise InvalidInputError(f"--embeddings {path}: no contract_id column or schema metadata")
        first_emb = next(pf.iter_batches(batch_size=1, columns=["embeddings"]))
        self.d = len(first_emb.column(0)[0].as_py())

    def chunks(self, rows: int) -> Iterator[InputChunk]:
        pf = pq.ParquetFile(self.path)
        cols = ["embeddings", "identities"] + (["names"] if self.has_names else [])
        start = 0
        for batch in pf.iter_batches(batch_size=rows, columns=cols):
            values = batch.column(0).flatten().to_numpy(zero_copy_only=False)
            if values.size != batch.num_rows * self.d:
                raise InvalidInputError(
                    f"--embeddings {self.path}: rows {start}..{start + batch.num_rows} are not all {self.d}-d"
                )
            x = values.astype(np.float32).reshape(batch.num_rows, self.d)
            ids = [str(v) for v in batch.column(1).to_pylist()]
            names = [None if v is None else str(v) for v in batch.column(2).to_pylist()] if self.has_names else None
            yield InputChunk(start, x, ids, names)
            start += batch.num_rows


def _labels(values: np.ndarray) -> list[str]:
    if values.dtype.kind == "S":
        return [v.decode() for v in values]
    return [str(v) for v in values.tolist()]
