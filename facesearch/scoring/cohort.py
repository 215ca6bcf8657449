"""Gallery-side cohort statistics for the normalised score, kept exact through enroll and delete.

For each enrolled identity we keep its ``depth`` (>= k) most similar *other* identities
(row ids and scores, best first); the identity's cohort statistic (``mu_g`` of
:mod:`facesearch.scoring.normalise`) is the mean of the first ``k``. The buffer is always an exact prefix of the
identity's ranked neighbours in the current gallery, so:

- **enroll** X: X's own buffer comes from its search results; another identity J takes X
  into its buffer only when X scores above J's last buffered score (or J's buffer holds
  the whole gallery), then is cut back to ``depth``. The caller must pass X's scores
  against (a) its ``depth`` best existing identities and (b) every existing identity
  scoring above :attr:`GalleryCohort.enroll_radius` (a FAISS ``range_search`` at that
  radius, or a brute-force scan, gives both).
- **delete** X: X is cut out of every buffer holding it. A buffer left with fewer than
  ``k`` entries (and not holding the whole gallery) is *stale*: its identity's mean reads
  as missing (nan) until :meth:`GalleryCohort.refresh` is given a fresh search. The slack
  ``depth - k`` makes that rare.
- a changed template (a face added to or removed from an identity) is a delete followed
  by an enroll of the same id.
- in bulk (a server replaying its live journal): :meth:`GalleryCohort.delete_many` then
  :meth:`GalleryCohort.enroll_many`, each newcomer scored against the gallery as it is once all
  are in; the buffers are those of one-at-a-time changes (up to the order of equal scores).

:meth:`GalleryCohort.from_scores` recomputes everything from scratch; the tests check
that incremental updates and a recomputation agree.

Memory: ``depth`` x 8 bytes per identity (int32 row + float32 score): 64 B at k=4.
Not thread-safe: the server applies updates under its write lock; :meth:`GalleryCohort.means`
returns a fresh array.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import AlreadyExistsError, InvalidInputError, NotFoundError, Reason
from facesearch.scoring.normalise import topk_mean


class GalleryCohort:
    def __init__(self, k: int, depth: int | None = None) -> None:
        if k < 1:
            raise InvalidInputError(f"cohort size k must be >= 1, got {k}", reason=Reason.BAD_CONFIG)
        self.k = k
        self.depth = depth if depth is not None else k + max(4, k // 2)
        if self.depth < k:
            raise InvalidInputError(f"depth {self.depth} must be >= k {k}", reason=Reason.BAD_CONFIG)
        self._row: dict[Hashable, int] = {}
        self._ids: list[Hashable | None] = []
        self._free: list[int] = []
        self._nbr = np.full((0, self.depth), -1, np.int32)
        self._score = np.full((0, self.depth), -np.inf, np.float32)
        self._count = np.zeros(0, np.int32)
        self._complete = np.zeros(0, bool)  # the buffer holds every other identity

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_scores(
        cls, identity_ids: Sequence[Hashable], scores: np.ndarray, k: int, depth: int | None = None
    ) -> GalleryCohort:
        """From scratch: ``scores`` (L, L) identity-vs-identity similarities (diagonal ignored)."""
        s = np.array(scores, np.float32)
        n = len(identity_ids)
        if s.shape != (n, n):
            raise InvalidInputError(f"scores must be ({n}, {n}), got {s.shape}", reason=Reason.BAD_SCORES)
        np.fill_diagonal(s, -np.inf)
        cohort = cls(k, depth)
        cohort._grow(n)
        keep = min(cohort.depth, n - 1)
        for i, identity in enumerate(identity_ids):
            if identity in cohort._row:
                raise AlreadyExistsError(f"identity {identity!r} appears twice", reason=Reason.DUPLICATE_IDENTITY)
            cohort._row[identity] = i
            cohort._ids.append(identity)
        if keep > 0:
            top = np.argpartition(-s, keep - 1, axis=1)[:, :keep] if keep < n else np.argsort(-s, axis=1)[:, :keep]
            top_scores = np.take_along_axis(s, top, axis=1)
            order = np.lexsort((top, -top_scores), axis=1)
            cohort._nbr[:n, :keep] = np.take_along_axis(top, order, axis=1)
            cohort._score[:n, :keep] = np.take_along_axis(top_scores, order, axis=1)
        cohort._count[:n] = keep
        cohort._complete[:n] = keep == n - 1
        return cohort

    @classmethod
    def from_neighbours(
        cls,
        identity_ids: Sequence[Hashable],
        neighbours: np.ndarray,
        scores: np.ndarray,
        k: int,
        depth: int | None = None,
    ) -> GalleryCohort:
        """From an index search of every identity against the gallery (the index-build path).

        ``neighbours`` (L, m): positions into ``identity_ids`` of each identity's m best
        matches (-1 for none; the identity itself may appear and is dropped); ``scores``
        (L, m) their similarities. Ask the index for at least ``depth + 1`` per identity.
        """
        n = len(identity_ids)
        nbr, sc = np.asarray(neighbours, np.int64), np.asarray(scores, np.float32)
        if nbr.shape != sc.shape or nbr.ndim != 2 or len(nbr) != n:
            raise InvalidInputError(f"neighbours and scores must both be ({n}, m)", reason=Reason.BAD_SCORES)
        cohort = cls(k, depth)
        cohort._grow(n)
        for i, identity in enumerate(identity_ids):
            if identity in cohort._row:
                raise AlreadyExistsError(f"identity {identity!r} appears twice", reason=Reason.DUPLICATE_IDENTITY)
            cohort._row[identity] = i
            cohort._ids.append(identity)
        for i in range(n):
            ok = (nbr[i] >= 0) & (nbr[i] != i) & np.isfinite(sc[i])
            rows, first = np.unique(nbr[i][ok], return_index=True)
            cohort._set_row(i, rows, sc[i][ok][first], n - 1)
        return cohort

    def _grow(self, needed: int) -> None:
        cap = len(self._count)
        if needed <= cap:
            return
        new = max(needed, 2 * cap, 16)
        self._nbr = np.vstack([self._nbr, np.full((new - cap, self.depth), -1, np.int32)])
        self._score = np.vstack([self._score, np.full((new - cap, self.depth), -np.inf, np.float32)])
        self._count = np.concatenate([self._count, np.zeros(new - cap, np.int32)])
        self._complete = np.concatenate([self._complete, np.zeros(new - cap, bool)])

    # -- reading --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, identity_id: object) -> bool:
        return identity_id in self._row

    @property
    def identity_ids(self) -> list[Hashable]:
        return list(self._row)

    def _live_rows(self) -> np.ndarray:
        return np.fromiter(self._row.values(), np.int64, len(self._row))

    def _stale_mask(self, rows: np.ndarray) -> np.ndarray:
        return ~self._complete[rows] & (self._count[rows] < self.k)

    def means(self, identity_ids: Sequence[Hashable]) -> np.ndarray:
        """Top-k means of the given identities (float64); nan for unknown or stale ones."""
        rows = np.array([self._row.get(i, -1) for i in identity_ids], np.int64)
        if len(self._count) == 0:
            return np.full(len(rows), np.nan)
        known = rows >= 0
        safe = np.where(known, rows, 0)
        mean = topk_mean(self._score[safe], self.k)
        return np.where(~known | self._stale_mask(safe), np.nan, mean)

    def neighbours(self, identity_id: Hashable) -> tuple[list[Hashable], np.ndarray]:
        """The buffered neighbours of one identity (ids and scores, best first)."""
        row = self._require(identity_id)
        count = int(self._count[row])
        return [self._ids[r] for r in self._nbr[row, :count]], self._score[row, :count].copy()

    def stale(self) -> list[Hashable]:
        """Identities whose statistics need :meth:`refresh` after deletions."""
        rows = self._live_rows()
        return [self._ids[r] for r in rows[self._stale_mask(rows)]]

    @property
    def enroll_radius(self) -> float:
        """An enroll must report every existing identity the new one scores above this."""
        rows = self._live_rows()
        if len(rows) == 0 or self._complete[rows].any():
            return float("-inf")
        counts = self._count[rows]
        filled = rows[counts > 0]
        if len(filled) == 0:
            return float("inf")
        return float(self._score[filled, self._count[filled] - 1].min())

    def _require(self, identity_id: Hashable) -> int:
        row = self._row.get(identity_id)
        if row is None:
            raise NotFoundError(f"identity {identity_id!r} is not in the cohort", reason=Reason.IDENTITY_NOT_FOUND)
        return row

    # -- updating -------------------------------------------------------------------------
    def _rows_of(
        self, identity_ids: Sequence[Hashable], scores: Sequence[float] | np.ndarray, exclude: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        s = np.asarray(scores, np.float32)
        if s.ndim != 1 or len(s) != len(identity_ids):
            raise InvalidInputError("neighbour ids and scores must be parallel 1-d", reason=Reason.BAD_SCORES)
        rows = np.array([self._require(i) for i in identity_ids], np.int64)
        keep = np.isfinite(s) & (rows != (-1 if exclude is None else exclude))
        rows, s = rows[keep], s[keep]
        rows, first = np.unique(rows, return_index=True)  # one score per identity
        return rows, s[first]

    def _set_row(self, row: int, rows: np.ndarray, scores: np.ndarray, others: int) -> None:
        order = np.lexsort((rows, -scores))[: self.depth]
        count = len(order)
        self._nbr[row] = -1
        self._score[row] = -np.inf
        self._nbr[row, :count] = rows[order]
        self._score[row, :count] = scores[order]
        self._count[row] = count
        self._complete[row] = count == others

    def enroll(
        self, identity_id: Hashable, neighbour_ids: Sequence[Hashable], neighbour_scores: Sequence[float] | np.ndarray
    ) -> None:
        """Add an identity, given its scores against existing identities (see the module notes)."""
        self.enroll_many([(identity_id, neighbour_ids, neighbour_scores)])

    def enroll_many(self, entries: Sequence[tuple[Hashable, Sequence[Hashable], Sequence[float] | np.ndarray]]) -> None:
        """Add several identities at once: ``(identity id, neighbour ids, scores)`` each.

        Each entry's scores cover (a) its ``depth`` best among the identities present *afterwards*
        (those already here and the other entries) and (b) every identity already here whose buffer
        it enters (see the module notes). The buffers are those :meth:`enroll` of each entry in turn
        would leave (up to the order of exactly equal scores): an entry's own buffer is its exact
        top ``depth``; an existing buffer takes every newcomer above its last score (any, if it holds
        the whole gallery), then keeps its ``depth`` best.
        """
        new_rows: list[int] = []
        for identity_id, _, _ in entries:
            if identity_id in self._row:
                raise AlreadyExistsError(
                    f"identity {identity_id!r} is already in the cohort", reason=Reason.IDENTITY_EXISTS
                )
            row = self._free.pop() if self._free else len(self._ids)
            if row == len(self._ids):
                self._grow(row + 1)
                self._ids.append(None)
            self._ids[row] = identity_id
            self._row[identity_id] = row
            new_rows.append(row)
        others = len(self._row) - 1
        is_new = np.zeros(len(self._count), bool)
        is_new[new_rows] = True
        holders, joiners, joined = [], [], []
        for row, (_, neighbour_ids, neighbour_scores) in zip(new_rows, entries, strict=True):
            rows, scores = self._rows_of(neighbour_ids, neighbour_scores, exclude=row)
            self._set_row(row, rows, scores, others)
            old = ~is_new[rows]
            holders.append(rows[old])
            joiners.append(np.full(int(old.sum()), row, np.int64))
            joined.append(scores[old])
        if holders:
            self._take(np.concatenate(holders), np.concatenate(joiners), np.concatenate(joined))

    def _take(self, holders: np.ndarray, joiners: np.ndarray, scores: np.ndarray) -> None:
        """Existing buffers take newcomers: ``holders[i]`` scores ``scores[i]`` against ``joiners[i]``."""
        count = self._count[holders]
        last = self._score[holders, np.maximum(count - 1, 0)]
        takes = self._complete[holders] | ((count > 0) & (scores > last))  # beyond the exact prefix: not needed
        holders, joiners, scores = holders[takes], joiners[takes], scores[takes]
        order = np.argsort(holders, kind="stable")  # entry order kept within a holder
        holders, joiners, scores = holders[order], joiners[order], scores[order]
        for group in np.split(np.arange(len(holders)), np.flatnonzero(np.diff(holders)) + 1):
            if not len(group):
                continue
            j = int(holders[group[0]])
            n = int(self._count[j])
            merged_s = np.concatenate([self._score[j, :n], scores[group]])
            merged_n = np.concatenate([self._nbr[j, :n], joiners[group]])
            keep = np.lexsort((np.arange(len(merged_s)), -merged_s))[: self.depth]  # ties: the earlier first
            self._score[j, : len(keep)] = merged_s[keep]
            self._nbr[j, : len(keep)] = merged_n[keep]
            self._count[j] = len(keep)
            if len(merged_s) > self.depth:
                self._complete[j] = False

    def delete(self, identity_id: Hashable) -> list[Hashable]:
        """Remove an identity; returns the identities left stale (call :meth:`refresh` for them)."""
        row = self._row.pop(identity_id, None)
        if row is None:
            raise NotFoundError(f"identity {identity_id!r} is not in the cohort", reason=Reason.IDENTITY_NOT_FOUND)
        self._ids[row] = None
        self._nbr[row] = -1
        self._score[row] = -np.inf
        self._count[row] = 0
        self._complete[row] = False
        self._free.append(row)
        holders, cols = np.nonzero(self._nbr == row)
        for j, c in zip(holders.tolist(), cols.tolist(), strict=True):
            count = int(self._count[j])
            self._nbr[j, c : count - 1] = self._nbr[j, c + 1 : count]
            self._score[j, c : count - 1] = self._score[j, c + 1 : count]
            self._nbr[j, count - 1] = -1
            self._score[j, count - 1] = -np.inf
            self._count[j] = count - 1
        rows = self._live_rows()
        self._complete[rows] |= self._count[rows] == len(self._row) - 1
        return [self._ids[r] for r in holders if self._stale_mask(np.array([r]))[0]]

    def delete_many(self, identity_ids: Iterable[Hashable]) -> None:
        """Remove the identities that are present, as :meth:`delete` of each would, in one pass over
        the buffers; :meth:`stale` then lists the identities to :meth:`refresh`."""
        rows = [self._row.pop(i) for i in dict.fromkeys(identity_ids) if i in self._row]
        if not rows:
            return
        gone = np.asarray(rows, np.int64)
        for row in rows:
            self._ids[row] = None
        self._nbr[gone] = -1
        self._score[gone] = -np.inf
        self._count[gone] = 0
        self._complete[gone] = False
        self._free.extend(rows)
        dead = np.zeros(len(self._count), bool)
        dead[gone] = True
        hit = (self._nbr >= 0) & dead[np.maximum(self._nbr, 0)]
        holders = np.flatnonzero(hit.any(axis=1))
        if len(holders):
            order = np.argsort(hit[holders], axis=1, kind="stable")  # kept entries first, in buffer order
            nbr = np.take_along_axis(self._nbr[holders], order, axis=1)
            score = np.take_along_axis(self._score[holders], order, axis=1)
            count = self._count[holders] - hit[holders].sum(axis=1).astype(np.int32)
            tail = np.arange(self.depth)[None, :] >= count[:, None]
            nbr[tail], score[tail] = -1, -np.inf
            self._nbr[holders], self._score[holders], self._count[holders] = nbr, score, count
        live = self._live_rows()
        self._complete[live] |= self._count[live] == len(self._row) - 1

    def refresh(
        self, identity_id: Hashable, neighbour_ids: Sequence[Hashable], neighbour_scores: Sequence[float] | np.ndarray
    ) -> None:
        """Replace one identity's buffer from a fresh search (its ``depth`` best, or all)."""
        row = self._require(identity_id)
        rows, scores = self._rows_of(neighbour_ids, neighbour_scores, exclude=row)
        self._set_row(row, rows, scores, len(self._row) - 1)

    def row_of(self, identity_id: Hashable) -> int:
        """The identity's storage row (stable while it is enrolled; -1 if unknown), for :meth:`floors_at`."""
        return self._row.get(identity_id, -1)

    def floors(self, identity_ids: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
        """Per identity, ``(takes, floor)``: whether its buffer can take a newcomer at all, and the
        score a newcomer must beat to enter it (-inf for a buffer holding the whole gallery).

        An identity scoring ``s`` against a newcomer takes it exactly when ``takes and s > floor``
        (see :meth:`enroll`); unknown identities never take one.
        """
        return self.floors_at(np.array([self._row.get(i, -1) for i in identity_ids], np.int64))

    def floors_at(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`floors` by storage rows (:meth:`row_of`; -1: unknown)."""
        rows = np.asarray(rows, np.int64)
        if len(self._count) == 0:
            return np.zeros(len(rows), bool), np.full(len(rows), np.inf)
        safe = np.maximum(rows, 0)
        count = self._count[safe]
        complete = self._complete[safe] & (rows >= 0)
        last = self._score[safe, np.maximum(count - 1, 0)].astype(np.float64)
        takes = (rows >= 0) & (complete | (count > 0))
        return takes, np.where(complete, -np.inf, np.where(takes, last, np.inf))

    # -- persistence ----------------------------------------------------------------------
    def export(self, identity_ids: Sequence[Hashable]) -> dict[str, np.ndarray]:
        """The state as arrays aligned with ``identity_ids`` (exactly the cohort's identities, any order):
        ``neighbours`` (positions into ``identity_ids``, -1 for none), ``scores``, ``counts``, ``complete``."""
        if len(identity_ids) != len(self._row) or any(i not in self._row for i in identity_ids):
            raise InvalidInputError("export needs exactly the cohort's identities", reason=Reason.BAD_SCORES)
        rows = np.array([self._row[i] for i in identity_ids], np.int64)
        position = np.full(len(self._count), -1, np.int64)
        position[rows] = np.arange(len(rows))
        nbr = self._nbr[rows]
        mapped = np.where(nbr >= 0, position[np.maximum(nbr, 0)], -1).astype(np.int32)
        return {
            "neighbours": mapped,
            "scores": self._score[rows].copy(),
            "counts": self._count[rows].copy(),
            "complete": self._complete[rows].copy(),
        }

    @classmethod
    def restore(
        cls, identity_ids: Sequence[Hashable], arrays: dict[str, np.ndarray], k: int, depth: int
    ) -> GalleryCohort:
        """The inverse of :meth:`export`."""
        cohort = cls(k, depth)
        n = len(identity_ids)
        shapes = (arrays["neighbours"].shape, arrays["scores"].shape, arrays["counts"].shape, arrays["complete"].shape)
        if shapes != ((n, cohort.depth), (n, cohort.depth), (n,), (n,)):
            raise InvalidInputError(
                f"cohort arrays do not fit {n} identities at depth {depth}: {shapes}", reason=Reason.BAD_SCORES
            )
        cohort._grow(n)
        cohort._ids = list(identity_ids)
        cohort._row = {identity: i for i, identity in enumerate(identity_ids)}
        if len(cohort._row) != n:
            raise AlreadyExistsError("duplicate identity ids in a saved cohort", reason=Reason.DUPLICATE_IDENTITY)
        cohort._nbr[:n] = arrays["neighbours"]
        cohort._score[:n] = arrays["scores"]
        cohort._count[:n] = arrays["counts"]
        cohort._complete[:n] = arrays["complete"]
        return cohort

    def save(self, path: Path) -> None:
        """npz: identity ids (as str), neighbour positions into that list, scores, flags."""
        ids = [self._ids[r] for r in self._live_rows()]
        tmp = path.with_name(path.name + ".tmp.npz")
        payload: dict[str, Any] = {
            "identity_ids": np.asarray([str(i) for i in ids]),
            "k": np.int64(self.k),
            "depth": np.int64(self.depth),
            **self.export(ids),
        }
        np.savez(tmp, **payload)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> GalleryCohort:
        with np.load(path) as data:
            ids = [str(i) for i in data["identity_ids"]]
            arrays = {key: data[key] for key in ("neighbours", "scores", "counts", "complete")}
            return cls.restore(ids, arrays, int(data["k"]), int(data["depth"]))
