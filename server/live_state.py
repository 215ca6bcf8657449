"""The in-memory mirror of the live journal: faces enrolled and deleted since the version.

Live faces are searched exactly (one matrix product). Appends grow the arrays by doubling
and publish them before the row count, deletions clear an ``alive`` flag, and readers take
a consistent :class:`LiveView` under a short lock, so a search never sees half a change.
Identity ids touched since the version are also kept in id order (:attr:`LiveState.ordered_ids`,
kept sorted as rows are added, never re-sorted), so a ListIdentities page finds its place by
bisection instead of sorting every live identity.

One thread mutates this object at a time: the install building it (before it is served: it loads the
journal snapshot and then the changes made meanwhile, :meth:`LiveState.load` each), then the gallery's
writer, holding the gallery write lock.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from facesearch.store.live_journal import JournalSnapshot, LiveFace, LiveIdentity


@dataclass(frozen=True, slots=True)
class LiveView:
    n: int
    vectors: np.ndarray  # (>= n, d) float32
    vector_ids: np.ndarray  # (>= n,) int64
    alive: np.ndarray  # (>= n,) bool
    codes: np.ndarray  # (>= n,) int64 identity code
    code_ids: list[str]  # identity id of each code
    tombstones: np.ndarray  # sorted int64 vector ids that must never be returned


class LiveState:
    def __init__(
        self,
        d: int,
        in_base: Callable[[Iterable[str]], set[str]],
        base_contains: Callable[[int], bool],
        base_identity_of: Callable[[int], str | None],
    ) -> None:
        self.d = d
        self._in_base = in_base  # which identity ids the published version holds
        self._base_contains = base_contains  # is a vector id in the published version
        self._base_identity_of = base_identity_of
        self._lock = threading.Lock()
        self._n = 0
        self._vectors = np.zeros((0, d), np.float32)
        self._vids = np.zeros(0, np.int64)
        self._alive = np.zeros(0, bool)
        self._codes = np.zeros(0, np.int64)
        self._code_of: dict[str, int] = {}
        self._code_ids: list[str] = []
        self.row_of: dict[int, int] = {}
        self.faces: dict[int, LiveFace] = {}  # alive live faces by vector id
        self.faces_of: dict[str, list[int]] = {}  # identity id -> alive live vector ids
        self.identities: dict[str, LiveIdentity] = {}
        self.ordered_ids: list[str] = []  # every key of ``identities``, in id order (readers slice it)
        self.identity_in_base: dict[str, bool] = {}
        self.tombstones: dict[int, str | None] = {}
        self._tomb_array = np.zeros(0, np.int64)
        self.base_tombstones: Counter[str] = Counter()  # published faces deleted, per identity
        self.base_tombstone_total = 0
        self.high_water = 0

    # -- building ----------------------------------------------------------------------
    def load(self, snap: JournalSnapshot) -> None:
        self.high_water = snap.high_water
        in_base = self._in_base([i.identity_id for i in snap.identities])
        for ident in snap.identities:
            self._add_id(ident.identity_id)
            self.identities[ident.identity_id] = ident
            self.identity_in_base[ident.identity_id] = ident.identity_id in in_base
        self._append(snap.faces, snap.embeddings)
        self._add_tombstones([(t.vector_id, t.identity_id) for t in snap.tombstones])

    # -- reads -------------------------------------------------------------------------
    def view(self) -> LiveView:
        with self._lock:
            return LiveView(
                self._n, self._vectors, self._vids, self._alive, self._codes, self._code_ids, self._tomb_array
            )

    @property
    def alive_count(self) -> int:
        return len(self.faces)

    def identity_ids_of_codes(self, codes: Iterable[int]) -> list[str]:
        return [self._code_ids[int(c)] for c in codes]

    # -- changes (writer only) -----------------------------------------------------------
    def enroll(self, identity: LiveIdentity, faces: list[LiveFace], embeddings: np.ndarray, in_base: bool) -> None:
        self._add_id(identity.identity_id)
        self.identities[identity.identity_id] = identity
        self.identity_in_base.setdefault(identity.identity_id, in_base)
        self.high_water = max(self.high_water, identity.seq)
        self._append(faces, embeddings)

    def delete_identity(self, identity: LiveIdentity, vector_ids: list[int], in_base: bool) -> None:
        self._add_id(identity.identity_id)
        self.identities[identity.identity_id] = identity
        self.identity_in_base.setdefault(identity.identity_id, in_base)
        self.high_water = max(self.high_water, identity.seq)
        self._add_tombstones([(v, identity.identity_id) for v in vector_ids])

    def delete_faces(self, seq: int, vector_ids: list[int], identity_ids: list[str]) -> None:
        self.high_water = max(self.high_water, seq)
        self._add_tombstones(list(zip(vector_ids, identity_ids, strict=True)))

    # -- internals -----------------------------------------------------------------------
    def _add_id(self, identity_id: str) -> None:
        """Keep ``ordered_ids`` sorted: a new id goes in its place (one insertion, no re-sort). Added
        before the row, so a reader that finds an id in ``ordered_ids`` but no row yet skips it."""
        if identity_id not in self.identities:
            bisect.insort(self.ordered_ids, identity_id)

    def _code(self, identity_id: str) -> int:
        code = self._code_of.get(identity_id)
        if code is None:
            code = len(self._code_ids)
            self._code_of[identity_id] = code
            self._code_ids.append(identity_id)
        return code

    def _append(self, faces: list[LiveFace], embeddings: np.ndarray) -> None:
        m = len(faces)
        if m == 0:
            return
        n = self._n
        vectors, vids, alive, codes = self._vectors, self._vids, self._alive, self._codes
        if n + m > len(vids):
            cap = max(64, 2 * (n + m))
            vectors = np.zeros((cap, self.d), np.float32)
            vectors[:n] = self._vectors[:n]
            vids = np.zeros(cap, np.int64)
            vids[:n] = self._vids[:n]
            alive = np.zeros(cap, bool)
            alive[:n] = self._alive[:n]
            codes = np.zeros(cap, np.int64)
            codes[:n] = self._codes[:n]
        vectors[n : n + m] = embeddings
        vids[n : n + m] = [f.vector_id for f in faces]
        codes[n : n + m] = [self._code(f.identity_id) for f in faces]
        alive[n : n + m] = True
        for i, face in enumerate(faces):
            self.row_of[face.vector_id] = n + i
            self.faces[face.vector_id] = face
            self.faces_of.setdefault(face.identity_id, []).append(face.vector_id)
        with self._lock:  # publish arrays and count together
            self._vectors, self._vids, self._alive, self._codes = vectors, vids, alive, codes
            self._n = n + m

    def _add_tombstones(self, items: list[tuple[int, str | None]]) -> None:
        if not items:
            return
        for vid, identity_id in items:
            if vid in self.tombstones:
                continue
            self.tombstones[vid] = identity_id
            row = self.row_of.get(vid)
            if row is not None:
                self._alive[row] = False
            face = self.faces.pop(vid, None)
            if face is not None:
                owned = self.faces_of.get(face.identity_id, [])
                if vid in owned:
                    owned.remove(vid)
            elif self._base_contains(vid):
                owner = identity_id or self._base_identity_of(vid)
                if owner is not None:
                    self.base_tombstones[owner] += 1
                self.base_tombstone_total += 1
        tomb = np.fromiter(self.tombstones.keys(), dtype=np.int64, count=len(self.tombstones))
        tomb.sort()
        with self._lock:
            self._tomb_array = tomb
