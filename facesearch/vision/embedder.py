"""The face embedder: aligned 150x150 RGB chips -> 128-d descriptors, via onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from facesearch.errors import InvalidInputError
from facesearch.util.cancel import Checkpoint, checkpoint, interrupt_on_stop
from facesearch.vision.onnx_session import create_session


class Embedder:
    """Runs the exported dlib ResNet. ``embed_raw`` returns dlib's descriptor as is.

    With ``flip_average`` (a bundle property, part of its contract id) ``embed`` returns the
    normalised sum of the chip's and its horizontal mirror's normalised descriptors: one extra
    network pass per face, measured in ``bench/results/open_set.md``.
    """

    def __init__(
        self,
        path: Path,
        *,
        chip_size: int = 150,
        max_batch: int = 32,
        intra_op_threads: int | None = None,
        flip_average: bool = False,
    ) -> None:
        self.flip_average = flip_average
        self._session = create_session(path, intra_op_threads=intra_op_threads)
        self._input = self._session.get_inputs()[0].name
        self.chip_size = chip_size
        self.max_batch = max_batch
        self.dim = int(self._session.get_outputs()[0].shape[1])

    def embed_raw(self, chips: np.ndarray, cancel: Checkpoint | None = None) -> np.ndarray:
        """``chips``: (N, size, size, 3) uint8 RGB. Returns (N, dim) float32, unnormalised. ``cancel`` is
        checked before each batch of ``max_batch`` chips, and a cancel token also stops a batch's run
        midway (onnxruntime's ``RunOptions.terminate``)."""
        if chips.ndim != 4 or chips.shape[1:] != (self.chip_size, self.chip_size, 3) or chips.dtype != np.uint8:
            raise InvalidInputError(
                f"chips must be uint8 of shape (N, {self.chip_size}, {self.chip_size}, 3), "
                f"got {chips.dtype} {chips.shape}"
            )
        if len(chips) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = []
        options = ort.RunOptions() if cancel is not None else None
        unregister = interrupt_on_stop(cancel, lambda: setattr(options, "terminate", True))
        try:
            for i in range(0, len(chips), self.max_batch):
                checkpoint(cancel, "an embedding batch")
                feeds = {self._input: np.ascontiguousarray(chips[i : i + self.max_batch])}
                try:
                    parts.append(self._session.run(None, feeds, options)[0])
                except Exception:
                    checkpoint(cancel, "the end of an embedding batch")  # terminated by the token: say so
                    raise
        finally:
            unregister()
        return np.concatenate(parts).astype(np.float32, copy=False)

    def embed(self, chips: np.ndarray, cancel: Checkpoint | None = None) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised embeddings and the norms of the chips' raw descriptors.

        Without flip averaging ``emb * norm`` is dlib's descriptor; with it the embedding is
        ``normalise(u + u_mirror)`` of the two unit descriptors, and the norm stays the plain chip's.
        """
        if not self.flip_average:
            return _unit(self.embed_raw(chips, cancel))
        both = (
            self.embed_raw(np.concatenate([chips, chips[:, :, ::-1]]), cancel)
            if len(chips)
            else self.embed_raw(chips, cancel)
        )
        plain, norms = _unit(both[: len(chips)])
        mirror, _ = _unit(both[len(chips) :])
        averaged, _ = _unit(plain + mirror)
        return averaged, norms


def _unit(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norms = np.linalg.norm(raw, axis=1).astype(np.float32)
    return (raw / np.maximum(norms, 1e-12)[:, None]).astype(np.float32, copy=False), norms
