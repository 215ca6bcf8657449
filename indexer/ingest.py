"""Stage 1 of every version: input rows -> validated, normalised faces in the identity store.

Rows that cannot be used (non-finite or zero embeddings, no identity) are skipped and
written to the rejects file with a reason; the job never dies on one bad row.

Rows of erased subjects (an identity the root's erasure ledger holds as erased, or a face erased by
its source's file name: ``facesearch.store.erasure_ledger``) are skipped too, and counted apart
(``IngestStats.erased``): a deliberate skip, not a failed row. Their rejects line carries only the
row number and ``ERASED``, never the identity id or the source, so the new version holds nothing
of the subject.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from facesearch.errors import InvalidInputError
from facesearch.store.erasure_ledger import ErasureSet
from facesearch.store.identity_store import FaceRows, IdentityStore
from indexer.read import InputChunk


@dataclass(slots=True)
class IngestStats:
    rows: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    first_vector_id: int = -1
    last_vector_id: int = -1
    erased: int = 0  # rows of erased subjects, skipped


ERASED = "ERASED"


class RejectsWriter:
    """Appends one JSON line per skipped input row: row, identity, source, reason, detail."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] = path.open("a", encoding="utf-8")
        self.count = 0

    def write(
        self,
        row: int,
        reason: str,
        *,
        identity_id: str | None = None,
        source: str | None = None,
        detail: str = "",
    ) -> None:
        record: dict[str, Any] = {"row": row, "reason": reason}
        if identity_id is not None:
            record["identity_id"] = identity_id
        if source is not None:
            record["source"] = source
        if detail:
            record["detail"] = detail
        self._fh.write(json.dumps(record) + "\n")
        self.count += 1

    def close(self) -> None:
        self._fh.close()


def validate(chunk: InputChunk, d: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str, str]]]:
    """``(keep mask, L2-normalised embeddings of kept rows, [(index in chunk, reason, detail)])``."""
    x = chunk.embeddings
    if x.ndim != 2 or x.shape[1] != d:
        raise InvalidInputError(f"rows {chunk.start}..: embeddings are {x.shape[1:]}-d, expected {d}")
    finite = np.isfinite(x).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], x, 0.0), axis=1)
    keep = finite & (norms > 1e-6)
    has_id = np.array([bool(i) for i in chunk.identities], dtype=bool)
    rejects = []
    for i in np.flatnonzero(~(keep & has_id)):
        if not finite[i]:
            rejects.append((int(i), "BAD_EMBEDDING", "non-finite values"))
        elif norms[i] <= 1e-6:
            rejects.append((int(i), "BAD_EMBEDDING", "zero vector"))
        else:
            rejects.append((int(i), "NO_IDENTITY", "empty identity id"))
    keep &= has_id
    kept = (x[keep] / norms[keep, None]).astype(np.float32)
    return keep, kept, rejects


def ingest(
    chunks: Iterable[InputChunk],
    store: IdentityStore,
    rejects: RejectsWriter,
    *,
    total: int,
    progress: bool,
    desc: str = "ingest",
    erased: ErasureSet | None = None,
) -> IngestStats:
    """Write every usable row into ``store`` with fresh vector ids, skipping rows of ``erased``
    subjects; returns counts."""
    stats = IngestStats()
    d = store.d
    with tqdm(total=total, desc=desc, unit="face", disable=not progress, dynamic_ncols=True) as bar:
        for chunk in chunks:
            keep, emb, bad = validate(chunk, d)
            if erased:
                gone = erased_rows(chunk, erased)
                for i in np.flatnonzero(gone & keep).tolist():
                    rejects.write(chunk.row(i), ERASED, detail="the subject is erased (erasure ledger)")
                stats.erased += int((gone & keep).sum())
                emb = emb[~gone[keep]]
                keep = keep & ~gone
            for i, reason, detail in bad:
                src = chunk.sources[i] if chunk.sources is not None else None
                rejects.write(chunk.row(i), reason, identity_id=chunk.identities[i] or None, source=src, detail=detail)
                stats.rejected[reason] += 1
            idx = np.flatnonzero(keep)
            stats.rows += len(chunk)
            if len(idx):
                vids = store.allocate_vector_ids(len(idx))
                if stats.first_vector_id < 0:
                    stats.first_vector_id = int(vids[0])
                stats.last_vector_id = int(vids[-1])
                store.add_faces(_face_rows(chunk, idx, vids, emb))
                stats.accepted += len(idx)
            store.commit()
            bar.update(len(chunk))
    return stats


def erased_rows(chunk: InputChunk, erased: ErasureSet) -> np.ndarray:
    """Which rows of ``chunk`` belong to an erased identity or are an erased face (bool mask)."""
    ids = chunk.identities
    gone_ids = {i for i in set(ids) if i and erased.identity_erased(i)}
    mask = np.fromiter((i in gone_ids for i in ids), dtype=bool, count=len(ids))
    if erased.faces and chunk.sources is not None:
        for i, (identity, source) in enumerate(zip(ids, chunk.sources, strict=True)):
            if not mask[i] and identity and erased.face_erased(identity, source):
                mask[i] = True
    return mask


def _face_rows(chunk: InputChunk, idx: np.ndarray, vids: np.ndarray, emb: np.ndarray) -> FaceRows:
    def pick(values: list[Any] | None) -> list[Any] | None:
        return None if values is None else [values[i] for i in idx]

    def pick_arr(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else values[idx]

    return FaceRows(
        vector_ids=vids,
        identity_ids=[chunk.identities[i] for i in idx],
        embeddings=emb,
        names=pick(chunk.names),
        sources=pick(chunk.sources),
        boxes=pick_arr(chunk.boxes),
        det_scores=pick_arr(chunk.det_scores),
        face_sizes=pick_arr(chunk.face_sizes),
        blurs=pick_arr(chunk.blurs),
        metadata=pick(chunk.metadata),
        chips=pick(chunk.chips),
    )
