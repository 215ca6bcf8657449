"""Per-identity scoring: faces -> identities, one score per identity (its best face).

Pure functions over arrays so that the merge of the published index with the live delta can
be tested without a server. An identity's score is the cosine similarity of its most similar
face; the top-k are the k best identities, so one person never fills the top-k twice.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Candidate:
    """An identity found for one query: its best face and that face's cosine similarity."""

    identity_id: str
    name: str
    similarity: float
    face_id: str


@dataclass(frozen=True, slots=True)
class Scored:
    """An identity's best face for one query."""

    label: Hashable  # identity key (published index) or identity id (live)
    similarity: float
    vector_id: int


def best_per_label(scores: np.ndarray, labels: np.ndarray, vector_ids: np.ndarray, limit: int) -> list[Scored]:
    """The ``limit`` best labels by their best score (ties: lower vector id first).

    ``scores``, ``labels`` and ``vector_ids`` are parallel 1-d arrays; rows with a
    non-finite score are ignored.
    """
    ok = np.isfinite(scores)
    if not ok.all():
        scores, labels, vector_ids = scores[ok], labels[ok], vector_ids[ok]
    if len(scores) == 0 or limit <= 0:
        return []
    order = np.lexsort((vector_ids, -scores))
    _, first = np.unique(labels[order], return_index=True)
    best_rows = order[first]
    ranked = best_rows[np.lexsort((vector_ids[best_rows], -scores[best_rows]))][:limit]
    return [Scored(_py(labels[r]), float(scores[r]), int(vector_ids[r])) for r in ranked]


def merge_top(parts: Sequence[Sequence[tuple[str, Scored]]], k: int) -> list[tuple[str, Scored]]:
    """Merge per-source rankings keyed by identity id: best score per identity, top ``k``."""
    best: dict[str, Scored] = {}
    for part in parts:
        for identity_id, scored in part:
            cur = best.get(identity_id)
            if cur is None or (scored.similarity, -scored.vector_id) > (cur.similarity, -cur.vector_id):
                best[identity_id] = scored
    ranked = sorted(best.items(), key=lambda item: (-item[1].similarity, item[1].vector_id))
    return ranked[:k]


def drop_ids(vector_ids: np.ndarray, scores: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """``scores`` with -inf where the id is -1 or in ``excluded`` (sorted int64)."""
    out = scores.astype(np.float32, copy=True)
    out[vector_ids < 0] = -np.inf
    if len(excluded):
        out[np.isin(vector_ids, excluded, assume_unique=False)] = -np.inf
    return out


def _py(value: object) -> Hashable:
    return value.item() if isinstance(value, np.generic) else value
