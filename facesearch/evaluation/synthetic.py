"""Seeded face-like embeddings drawn from a two-covariance model of real dlib descriptors.

The model (``face_embedding_model.npz``: ``m``, ``sb``, ``sw``) says an identity centre is
``c ~ N(m, sb)`` and each of its faces is ``x = normalise(c + N(0, sw))``. Drawn this way two
faces of one person have cosine about 0.95 and two people about 0.83: a narrow cone, which
is what makes approximate search on face embeddings hard.

Galleries of any size are made block by block: block ``b`` holds ``block_identities``
identities and is a pure function of ``(seed, b)``, so a 10M-face gallery can be streamed in
chunks, regenerated exactly, and queried with fresh faces of known identities without
holding every identity centre in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.errors import InvalidInputError

_QUERY_STREAM = 1
_IMPOSTOR_STREAM = 2


@dataclass(frozen=True, slots=True)
class FaceEmbeddingModel:
    """Two-covariance model: identity centres ``N(m, sb)``, faces ``normalise(c + N(0, sw))``."""

    mean: np.ndarray  # (d,) float64
    between_factor: np.ndarray  # (d, d) with factor @ factor.T == sb
    within_factor: np.ndarray  # (d, d) with factor @ factor.T == sw

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def load(cls, path: str | Path) -> FaceEmbeddingModel:
        try:
            with np.load(path) as data:
                m, sb, sw = (np.asarray(data[k], dtype=np.float64) for k in ("m", "sb", "sw"))
        except (OSError, KeyError, ValueError) as err:
            raise InvalidInputError(f"cannot read face embedding model {path}: {err}") from err
        d = m.shape[0]
        if m.ndim != 1 or sb.shape != (d, d) or sw.shape != (d, d):
            raise InvalidInputError(f"face embedding model {path}: shapes m{m.shape} sb{sb.shape} sw{sw.shape}")
        return cls(mean=m, between_factor=_psd_factor(sb), within_factor=_psd_factor(sw))

    def centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` identity centres (float64, not normalised)."""
        z = rng.standard_normal((n, self.d))
        return self.mean + z @ self.between_factor.T

    def faces(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One L2-normalised float32 face per row of ``centres``."""
        z = rng.standard_normal(centres.shape)
        x = centres + z @ self.within_factor.T
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)


def _psd_factor(cov: np.ndarray) -> np.ndarray:
    """A square root of a symmetric PSD matrix via its eigen-decomposition (robust to rank loss)."""
    w, v = np.linalg.eigh((cov + cov.T) / 2.0)
    return np.asarray(v * np.sqrt(np.clip(w, 0.0, None)))


@dataclass(frozen=True, slots=True)
class GalleryChunk:
    """Faces ``[start, start + len)`` of a synthetic gallery with their identity labels."""

    start: int
    embeddings: np.ndarray  # (n, d) float32, L2-normalised
    identities: np.ndarray  # (n,) int64


@dataclass(frozen=True, slots=True)
class SyntheticGallery:
    """A deterministic gallery of ``n_faces`` faces, ``faces_per_identity`` on average.

    Faces per identity are ``1 + Poisson(faces_per_identity - 1)``; identity labels are
    consecutive integers in generation order.
    """

    model: FaceEmbeddingModel
    n_faces: int
    faces_per_identity: float = 10.0
    seed: int = 0
    block_identities: int = 4096

    def __post_init__(self) -> None:
        if self.n_faces < 1:
            raise InvalidInputError(f"n_faces must be >= 1, got {self.n_faces}")
        if self.faces_per_identity < 1.0:
            raise InvalidInputError(f"faces_per_identity must be >= 1, got {self.faces_per_identity}")

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres (block_identities, d) and face counts of block ``b``."""
        rng = np.random.default_rng([self.seed, 0, b])
        centres = self.model.centres(self.block_identities, rng)
        counts = 1 + rng.poisson(self.faces_per_identity - 1.0, size=self.block_identities)
        return centres, counts

    def _block_faces(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        centres, counts = self._block(b)
        rng = np.random.default_rng([self.seed, 1, b])
        local = np.repeat(np.arange(self.block_identities), counts)
        faces = self.model.faces(centres[local], rng)
        return faces, local.astype(np.int64) + b * self.block_identities

    def chunks(self, chunk_size: int = 262_144) -> Iterator[GalleryChunk]:
        """Stream the gallery in chunks of at most ``chunk_size`` faces, in order."""
        produced, b = 0, 0
        buf_x: list[np.ndarray] = []
        buf_y: list[np.ndarray] = []
        buffered = 0
        while produced < self.n_faces:
            faces, ids = self._block_faces(b)
            b += 1
            take = min(len(faces), self.n_faces - produced - buffered)
            buf_x.append(faces[:take])
            buf_y.append(ids[:take])
            buffered += take
            while buffered >= chunk_size or (produced + buffered == self.n_faces and buffered):
                x, y = np.concatenate(buf_x), np.concatenate(buf_y)
                n = min(chunk_size, buffered)
                yield GalleryChunk(start=produced, embeddings=x[:n], identities=y[:n])
                produced += n
                buf_x, buf_y, buffered = [x[n:]], [y[n:]], buffered - n

    def materialize(self) -> GalleryChunk:
        """The whole gallery in memory (``n_faces * d * 4`` bytes)."""
        parts = list(self.chunks())
        return GalleryChunk(
            start=0,
            embeddings=np.concatenate([p.embeddings for p in parts]),
            identities=np.concatenate([p.identities for p in parts]),
        )

    def n_identities_upper(self) -> int:
        """Identity labels are below this bound (labels of the blocks that were generated)."""
        mean_faces = self.block_identities * self.faces_per_identity
        blocks = int(np.ceil(self.n_faces / mean_faces)) + 2
        return blocks * self.block_identities

    def mated_queries(self, n: int, identities: np.ndarray, seed: int = 0) -> GalleryChunk:
        """``n`` fresh faces (not in the gallery) of identities sampled from ``identities``.

        ``identities`` are labels that occur in the gallery (e.g. its identity column), so
        every query has at least one mate to find.
        """
        rng = np.random.default_rng([self.seed, _QUERY_STREAM, seed])
        chosen = rng.choice(np.unique(identities), size=n, replace=True).astype(np.int64)
        faces = np.empty((n, self.model.d), dtype=np.float32)
        for b in np.unique(chosen // self.block_identities):
            centres, _ = self._block(int(b))
            rows = np.flatnonzero(chosen // self.block_identities == b)
            faces[rows] = self.model.faces(centres[chosen[rows] % self.block_identities], rng)
        return GalleryChunk(start=0, embeddings=faces, identities=chosen)

    def impostor_queries(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` faces of people who are not in the gallery (non-mated queries)."""
        rng = np.random.default_rng([self.seed, _IMPOSTOR_STREAM, seed])
        return self.model.faces(self.model.centres(n, rng), rng)


def default_model_path() -> Path:
    """``$FACESEARCH_DATA/face_embedding_model.npz`` (default ``<repo>/../shared/data``)."""
    root = os.environ.get("FACESEARCH_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[3] / "shared" / "data"
    return base / "face_embedding_model.npz"
