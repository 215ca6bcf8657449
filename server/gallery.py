"""The gallery the server searches: the published index version merged with the live delta.

Reads are lock-free: a request takes the current :class:`GalleryState` (published version +
live state + open-set statistics) once and uses it throughout, so a hot swap never disturbs
it. Writes (enroll, delete) are serialised by one lock, made durable in the live journal first,
then applied to the live state and to the open-set statistics (templates and cohort,
:mod:`server.open_set_upkeep`); they are visible to the next search when the call returns.

Installing a version (:meth:`Gallery.install`, at start and at every hot swap) replays the live
changes it does not contain into its statistics: every identity the live delta touched is re-derived
in bulk (:meth:`server.open_set_upkeep.OpenSetUpkeep.changed`: blocks of identities share one template
product, one gallery search and one read of candidates' faces), so the cost is proportional to the
delta, each touched identity costing one pass over the gallery's templates and a search of its faces.
The replay runs without the write lock against a journal snapshot, then catches up with the writes
made meanwhile; under the lock only the last of those are replayed before the switch, so writes wait
for those, not for the replay.

A journal write that the storage refuses (full or failing disk) raises UNAVAILABLE and marks writes
degraded (:mod:`server.write_health`); nothing was written, and the next write tries again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from facesearch.errors import AlreadyExistsError, FaceSearchError, InvalidInputError, NotFoundError, Reason
from facesearch.store.erasure_ledger import ErasureLedger
from facesearch.store.identity_store import StoredFace, StoredIdentity
from facesearch.store.journal_retention import forget, retained_from
from facesearch.store.live_journal import JournalSnapshot, LiveFace, LiveIdentity, LiveJournal, NewFace
from server.base_index import BaseIndex
from server.erasures import record_face_erasure, record_identity_erasure, refuse_erased
from server.live_state import LiveState, LiveView
from server.open_set_state import OpenSetState
from server.open_set_upkeep import OpenSetParams, OpenSetUpkeep, load_base_open_set
from server.search import Candidate, Scored, best_per_label, drop_ids, merge_top
from server.write_health import WriteHealth

log = logging.getLogger(f"facesearch.{__name__}")

MAX_CANDIDATES = 8192  # published-index candidates fetched per query, at most
LIVE_SCORES = 1 << 23  # query x live-face candidates held at once
CATCH_UP_ROUNDS = 3  # replays of the writes made meanwhile before an install takes the write lock


@dataclass(frozen=True, slots=True)
class IdentityView:
    identity_id: str
    name: str
    metadata: dict[str, str]
    face_count: int


@dataclass(frozen=True, slots=True)
class FaceView:
    face_id: str
    source: str
    box: tuple[float, float, float, float] | None
    det_score: float
    face_size: float | None
    blur: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class EnrollOutcome:
    created: bool
    face_ids: list[str]
    face_count: int


@dataclass(frozen=True, slots=True)
class GalleryStats:
    index_version: str
    index_factory: str
    index_ntotal: int
    live_faces: int
    tombstones: int
    faces: int
    identities: int


def face_id(vector_id: int) -> str:
    return str(int(vector_id))


def parse_face_id(text: str) -> int:
    if not text.isdigit() or len(text) > 19:
        raise NotFoundError(f"face {text!r} does not exist", reason=Reason.FACE_NOT_FOUND)
    return int(text)


class GalleryState:
    """One consistent pairing of a published version (or none) with its live state."""

    def __init__(self, base: BaseIndex | None, live: LiveState, open_set: OpenSetState) -> None:
        self.base = base
        self.live = live
        self.open_set = open_set
        self.upkeep = OpenSetUpkeep(self, open_set)

    # -- identities ----------------------------------------------------------------------
    def identity(self, identity_id: str) -> IdentityView | None:
        live = self.live.identities.get(identity_id)
        if live is not None:
            if live.deleted:
                return None
            return IdentityView(identity_id, live.name or "", dict(live.metadata), self.face_count(identity_id))
        stored = self.base.store.find_identity(identity_id) if self.base is not None else None
        if stored is None:
            return None
        return IdentityView(identity_id, stored.name or "", stored.metadata, self.face_count(identity_id))

    def require(self, identity_id: str) -> IdentityView:
        view = self.identity(identity_id)
        if view is None:
            raise NotFoundError(f"identity {identity_id!r} does not exist", reason=Reason.IDENTITY_NOT_FOUND)
        return view

    def face_count(self, identity_id: str, base_count: int | None = None) -> int:
        live = self.live.identities.get(identity_id)
        if live is not None and live.deleted:
            return 0
        if base_count is None:
            base_count = 0
            if self.base is not None and (stored := self.base.store.find_identity(identity_id)) is not None:
                base_count = self.base.store.face_counts([stored.key]).get(stored.key, 0)
        return base_count - self.live.base_tombstones.get(identity_id, 0) + len(self.live.faces_of.get(identity_id, []))

    def face_vector_ids(self, identity_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(published vector ids, live vector ids)`` of an identity's current faces."""
        base_ids = np.zeros(0, np.int64)
        live = self.live.identities.get(identity_id)
        if live is not None and live.deleted:
            return base_ids, base_ids
        if self.base is not None and (stored := self.base.store.find_identity(identity_id)) is not None:
            base_ids = self.base.face_ids_of(stored.key)
            tomb = self.live.view().tombstones
            if len(tomb):
                base_ids = base_ids[~np.isin(base_ids, tomb)]
        return base_ids, np.asarray(self.live.faces_of.get(identity_id, []), dtype=np.int64)

    def embeddings_of_many(self, identity_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Embeddings (n, d) of each identity's current faces (identities without faces are left out)."""
        wanted = list(dict.fromkeys(identity_ids))
        parts: dict[str, list[np.ndarray]] = {}
        live = self.live
        view = live.view()
        if self.base is not None and wanted:
            alive = [i for i in wanted if not ((row := live.identities.get(i)) is not None and row.deleted)]
            keys = self.base.store.identity_keys(alive)
            if keys:
                vids, owners = self.base.faces_of_keys(list(keys.values()))
                if len(view.tombstones) and len(vids):
                    keep = ~np.isin(vids, view.tombstones)
                    vids, owners = vids[keep], owners[keep]
                if len(vids):
                    vectors = self.base.store.embeddings_by_ids(vids)
                    by_key = {key: identity for identity, key in keys.items()}
                    for key in np.unique(owners).tolist():
                        parts.setdefault(by_key[key], []).append(vectors[owners == key])
        for identity in wanted:
            rows = [live.row_of[v] for v in live.faces_of.get(identity, [])]
            if rows:
                parts.setdefault(identity, []).append(view.vectors[rows])
        return {i: np.concatenate(p).astype(np.float32) for i, p in parts.items()}

    def faces(self, identity_id: str) -> list[FaceView]:
        base_ids, live_ids = self.face_vector_ids(identity_id)
        out: list[FaceView] = []
        if self.base is not None and len(base_ids):
            out.extend(_face_view(f) for f in self.base.store.faces(base_ids.tolist()) if f is not None)
        out.extend(_face_view(self.live.faces[int(v)]) for v in live_ids)
        return sorted(out, key=lambda f: (f.created_at, int(f.face_id)))

    def embeddings_of(self, identity_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(vector ids, embeddings (n, d))`` of an identity's current faces."""
        base_ids, live_ids = self.face_vector_ids(identity_id)
        parts, ids = [], []
        if self.base is not None and len(base_ids):
            parts.append(self.base.store.embeddings_by_ids(base_ids))
            ids.append(base_ids)
        if len(live_ids):
            view = self.live.view()
            parts.append(view.vectors[[self.live.row_of[int(v)] for v in live_ids]])
            ids.append(live_ids)
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.live.d), np.float32)
        return np.concatenate(ids), np.concatenate(parts)

    def list_page(self, after: str, limit: int) -> tuple[list[IdentityView], bool]:
        """Up to ``limit`` identities with id > ``after`` in id order, and whether more follow."""
        live_rows = dict(self.live.identities)  # a copy: the writer may add rows meanwhile
        live_alive = sorted(i for i, row in live_rows.items() if not row.deleted and i > after)[: limit + 1]
        base_rows: list[StoredIdentity] = []
        cursor = after
        while self.base is not None and len(base_rows) <= limit:
            batch = self.base.store.identities_after(cursor, limit + 1)
            base_rows.extend(s for s in batch if s.identity_id not in live_rows)  # a live row decides
            if len(batch) <= limit:
                break
            cursor = batch[-1].identity_id
        merged = sorted(
            [(i, None) for i in live_alive] + [(s.identity_id, s) for s in base_rows[: limit + 1]],
            key=lambda item: item[0],
        )
        more = len(merged) > limit
        merged = merged[:limit]
        keys = [s.key for _, s in merged if s is not None]
        counts = self.base.store.face_counts(keys) if self.base is not None and keys else {}
        out = []
        for identity_id, stored in merged:
            if stored is None:
                row = live_rows[identity_id]
                out.append(IdentityView(identity_id, row.name or "", dict(row.metadata), self.face_count(identity_id)))
            else:
                out.append(
                    IdentityView(
                        identity_id,
                        stored.name or "",
                        stored.metadata,
                        self.face_count(identity_id, counts.get(stored.key, 0)),
                    )
                )
        return out, more

    def identity_count(self) -> int:
        n = self.base.n_identities if self.base is not None else 0
        for identity_id, row in list(self.live.identities.items()):  # a copy: the writer may add rows meanwhile
            in_base = self.live.identity_in_base.get(identity_id, False)
            if row.deleted and in_base:
                n -= 1
            elif not row.deleted and not in_base:
                n += 1
        return n

    def stats(self) -> GalleryStats:
        ntotal = self.base.ntotal if self.base is not None else 0
        hidden = self.base.hidden_faces if self.base is not None else 0  # erased faces the version holds
        tombs = self.live.base_tombstone_total + hidden
        live = self.live.alive_count
        return GalleryStats(
            self.base.version if self.base else "",
            self.base.factory if self.base else "",
            ntotal,
            live,
            tombs,
            ntotal - tombs + live,
            self.identity_count(),
        )

    # -- search --------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]:
        """Top-``k`` identities per query (rows of ``queries``, L2-normalised)."""
        if len(queries) == 0:
            return []
        view = self.live.view()
        parts: list[list[list[tuple[str, Scored]]]] = [[] for _ in range(len(queries))]
        names: dict[str, str] = {}
        if self.base is not None and self.base.ntotal > 0:
            for qi, ranked in enumerate(self._search_base(queries, k, view.tombstones, names)):
                parts[qi].append(ranked)
        if view.n:
            for qi, best in enumerate(_search_live(view, queries, k)):
                parts[qi].append([(view.code_ids[int(s.label)], s) for s in best])  # type: ignore[call-overload]
        top = [merge_top(p, k) for p in parts]
        for ranked in top:  # live rows hold the current names (and names of live-only identities)
            for identity_id, _ in ranked:
                row = self.live.identities.get(identity_id)
                if row is not None:
                    names[identity_id] = row.name or ""
        return [
            [Candidate(i, names.get(i, ""), s.similarity, face_id(s.vector_id)) for i, s in ranked] for ranked in top
        ]

    def _search_base(
        self, queries: np.ndarray, k: int, tombstones: np.ndarray, names: dict[str, str]
    ) -> list[list[tuple[str, Scored]]]:
        base = self.base
        assert base is not None
        kk = min(max(32, 4 * k) + min(len(tombstones), 256), base.ntotal, MAX_CANDIDATES)
        results: list[list[Scored]] = [[] for _ in range(len(queries))]
        todo = np.arange(len(queries))
        while len(todo):
            scores, vids = base.search(queries[todo], kk)
            scores = drop_ids(vids, scores, tombstones)
            again = []
            for row, qi in enumerate(todo):
                keys = base.keys_of(vids[row])
                best = best_per_label(scores[row], keys, vids[row], k)
                exhausted = bool((vids[row] < 0).any()) or kk >= min(base.ntotal, MAX_CANDIDATES)
                if len(best) < k and not exhausted:
                    again.append(qi)
                else:
                    results[qi] = best
            todo = np.asarray(again, dtype=np.int64)
            kk = min(kk * 4, base.ntotal, MAX_CANDIDATES)
        stored = base.store.identities_by_key([int(s.label) for r in results for s in r])  # type: ignore[call-overload]
        names.update((s.identity_id, s.name or "") for s in stored.values())
        return [
            [(stored[int(s.label)].identity_id, s) for s in r if int(s.label) in stored]  # type: ignore[call-overload]
            for r in results
        ]


def _search_live(view: LiveView, queries: np.ndarray, k: int) -> list[list[Scored]]:
    """Top-``k`` live identities per query, exactly: a query's best ``kk`` faces (FAISS's exhaustive
    inner-product search) are enough once they hold ``k`` live identities, as no identity outside
    them can score higher; else ``kk`` grows for that query."""
    n = view.n
    alive, codes, vids, vectors = view.alive[:n], view.codes[:n], view.vector_ids[:n], view.vectors[:n]
    kk = min(n, max(4 * k, 64) + n - int(alive.sum()))  # deleted faces may fill some places
    out: list[list[Scored]] = []
    step = max(1, LIVE_SCORES // kk)
    for qi in range(len(queries)):
        if qi % step == 0:
            scores, cols = _top_faces(vectors, queries[qi : qi + step], kk)
        row_s, row_c = scores[qi % step], cols[qi % step]
        while True:
            ok = (row_c >= 0) & alive[np.maximum(row_c, 0)]
            best = best_per_label(np.where(ok, row_s, -np.inf), codes[row_c], vids[row_c], k)
            if len(best) >= k or len(row_c) >= n:
                break
            wider_s, wider_c = _top_faces(vectors, queries[qi : qi + 1], min(n, 4 * len(row_c)))
            row_s, row_c = wider_s[0], wider_c[0]
        out.append(best)
    return out


def _top_faces(vectors: np.ndarray, queries: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)`` (len(queries), kk) of each query's ``kk`` best rows of ``vectors`` (any order)."""
    if kk >= len(vectors):
        every = np.broadcast_to(np.arange(len(vectors)), (len(queries), len(vectors)))
        return np.atleast_2d(queries) @ vectors.T, every
    q = np.ascontiguousarray(queries, dtype=np.float32)
    scores, rows = faiss.knn(q, np.ascontiguousarray(vectors), kk, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, rows


def _face_view(face: StoredFace | LiveFace) -> FaceView:
    return FaceView(
        face_id(face.vector_id),
        face.source or "",
        face.box,
        float(face.det_score or 0.0),
        face.face_size,
        face.blur,
        float(face.created_at),
    )


class Gallery:
    """The current :class:`GalleryState` plus the serialised, durable write path."""

    def __init__(
        self, journal: LiveJournal, d: int, open_set: OpenSetParams | None = None, ledger: ErasureLedger | None = None
    ) -> None:
        self.journal = journal
        self.d = d
        self.open_set = open_set or OpenSetParams()
        self.ledger = ledger  # the root's erasure ledger (server.erasures)
        self._write = threading.Lock()
        self._installing = threading.Lock()  # one install at a time (see install)
        self.writes = WriteHealth()  # whether the journal's storage takes writes
        self._state: GalleryState | None = None
        self._retained = 0  # the journal position pruned up to

    def base_open_set(self, base: BaseIndex) -> None:
        """Attach ``base``'s open-set statistics (loaded or computed: run it off the event loop, before install)."""
        if base.open_set is None:
            base.open_set = load_base_open_set(base.dir, self.open_set)

    @property
    def state(self) -> GalleryState | None:
        return self._state

    def install(self, base: BaseIndex | None) -> None:
        """Serve ``base`` (or no published version) with the live changes it does not contain.

        The new state is built and its statistics replayed from a journal snapshot *without* the
        write lock, while writes go on against the state it replaces; the writes made meanwhile are
        replayed too, still without the lock (up to :data:`CATCH_UP_ROUNDS` times, each round
        catching those of the one before); then, under the lock, the last few are and the state is
        switched. Writes wait only for that last catch-up, not for the replay.
        """
        with self._installing:
            cut = 0
            if base is not None and base.live_seq and base.live_journal_id == self.journal.journal_id:
                cut = base.live_seq
            elif base is not None and base.live_seq:
                log.warning(
                    "index %s absorbed live changes of another journal (%s); keeping all of ours",
                    base.version,
                    base.live_journal_id,
                )
            t0 = time.perf_counter()
            snap = self.journal.snapshot(after_seq=cut)
            state = self._build(base, snap)
            high = snap.high_water
            for _ in range(CATCH_UP_ROUNDS):  # writes made during the build, still without the lock
                delta = self.journal.snapshot(after_seq=high)
                if delta.empty:
                    break
                _catch_up(state, delta)
                high = delta.high_water
            built = time.perf_counter() - t0
            with self._write:
                t1 = time.perf_counter()
                delta = self.journal.snapshot(after_seq=high)  # the last ones: writes wait for these only
                if not delta.empty:
                    _catch_up(state, delta)
                self._state = state
                if cut:
                    self._retain_while_serving(base)
                held = time.perf_counter() - t1
        log.info(
            "serving index %s + %d live faces, %d tombstones (journal seq %d..%d): built and replayed in %.2fs, "
            "then writes waited %.3fs for %d change(s) made meanwhile",
            base.version if base else "(none)",
            state.live.alive_count,
            len(state.live.tombstones),
            cut,
            state.live.high_water,
            built,
            held,
            len(delta.identities) + len(delta.tombstones),
        )

    def _build(self, base: BaseIndex | None, snap: JournalSnapshot) -> GalleryState:
        """A state of ``base`` plus ``snap``, its statistics replayed in bulk (:meth:`OpenSetUpkeep.changed`)."""
        live = LiveState(self.d, _in_base(base), _contains(base), _identity_of(base))
        live.load(snap)
        if base is not None:
            self.base_open_set(base)
            data, base.open_set = base.open_set, None  # taken over: the state keeps it current
        else:
            data = None
        state = GalleryState(base, live, OpenSetState(data or self.open_set.empty(self.d)))
        touched = _touched(snap) | set(live.base_tombstones) | set(base.hidden_identities if base else ())
        t0 = time.perf_counter()
        state.upkeep.changed(touched)
        log.info(
            "open-set statistics: %d identities (k=%d, rule %s); %d touched by live changes replayed in %.2fs",
            state.open_set.gallery_size,
            state.open_set.k,
            state.open_set.rule,
            len(touched),
            time.perf_counter() - t0,
        )
        return state

    def _retain_while_serving(self, base: BaseIndex | None) -> None:
        """Prune the journal after a switch; a full or failing disk only postpones it (the state is
        switched already: the next install or restart prunes)."""
        if base is None:
            return
        try:
            self._retain(base)
        except (FaceSearchError, OSError, sqlite3.Error) as err:
            log.warning("live journal not pruned (retried at the next index version or restart): %s", err)

    def retain_journal(self) -> None:
        """Prune the journal as far as the kept versions allow (after ``facesearch-index prune`` deleted some)."""
        with self._write:
            state = self._state
            if state is not None and state.base is not None:
                self._retain(state.base)

    def _retain(self, base: BaseIndex) -> None:
        """Prune what every kept version of ``base``'s root absorbed, never more than ``base`` did: a
        rollback to any kept version then finds the changes it lacks in the journal."""
        if base.live_journal_id != self.journal.journal_id:
            return
        upto = min(base.live_seq, retained_from(base.dir.parent, self.journal.journal_id))
        if upto > self._retained:
            forget(self.journal, upto)
            self._retained = upto
            log.info("live journal pruned up to seq %d (every kept version holds those changes)", upto)

    def _require_state(self) -> GalleryState:
        state = self._state
        if state is None:
            raise RuntimeError("gallery used before install()")
        return state

    def enroll(
        self, identity_id: str, name: str | None, metadata: dict[str, str], faces: Sequence[NewFace], create_only: bool
    ) -> EnrollOutcome:
        with self._write:
            refuse_erased(self.ledger, identity_id)
            state = self._require_state()
            existing = state.identity(identity_id)
            if existing is not None and create_only:
                raise AlreadyExistsError(f"identity {identity_id!r} already exists", reason=Reason.IDENTITY_EXISTS)
            if not faces:
                return EnrollOutcome(False, [], existing.face_count if existing else 0)
            now = time.time()
            prior = state.live.identities.get(identity_id)
            created_at = prior.created_at if prior is not None and not prior.deleted else now
            row = LiveIdentity(
                identity_id,
                0,
                False,
                name or (existing.name if existing else None) or None,
                metadata or (existing.metadata if existing else {}),
                created_at,
                now,
            )
            seq, vids = self.writes.run(self.journal.enroll, row, faces)
            row = LiveIdentity(row.identity_id, seq, False, row.name, row.metadata, row.created_at, row.updated_at)
            live_faces = [
                LiveFace(int(v), seq, identity_id, f.source, f.box, f.det_score, f.face_size, f.blur, now)
                for v, f in zip(vids.tolist(), faces, strict=True)
            ]
            in_base = state.base is not None and state.base.store.find_identity(identity_id) is not None
            state.live.enroll(row, live_faces, np.stack([f.embedding for f in faces]), in_base)
            state.upkeep.changed([identity_id])
            return EnrollOutcome(existing is None, [face_id(v) for v in vids.tolist()], state.face_count(identity_id))

    def delete_identity(self, identity_id: str) -> int:
        with self._write:
            state = self._require_state()
            existing = state.require(identity_id)
            base_ids, live_ids = state.face_vector_ids(identity_id)
            doomed = [*base_ids.tolist(), *live_ids.tolist()]
            record_identity_erasure(self.ledger, state, identity_id, doomed)  # durable before the journal and the OK
            now = time.time()
            row = LiveIdentity(identity_id, 0, True, None, {}, now, now)
            seq = self.writes.run(self.journal.delete_identity, row, doomed)
            row = LiveIdentity(identity_id, seq, True, None, {}, now, now)
            in_base = state.base is not None and state.base.store.find_identity(identity_id) is not None
            state.live.delete_identity(row, doomed, in_base)
            state.upkeep.changed([identity_id])
            return existing.face_count

    def delete_faces(self, face_ids: Sequence[str]) -> int:
        if not face_ids:
            raise InvalidInputError("name at least one face id", reason=Reason.NO_FACE_IDS)
        vids = list(dict.fromkeys(parse_face_id(f) for f in face_ids))
        with self._write:
            state = self._require_state()
            owners = self._owners(state, vids)
            missing = [face_id(v) for v, o in zip(vids, owners, strict=True) if o is None]
            if missing:
                raise NotFoundError(f"faces do not exist: {', '.join(missing[:10])}", reason=Reason.FACE_NOT_FOUND)
            identity_ids = [o for o in owners if o is not None]
            record_face_erasure(self.ledger, state, vids, identity_ids)  # durable before the journal and the OK
            seq = self.writes.run(self.journal.delete_faces, vids, identity_ids)
            state.live.delete_faces(seq, vids, identity_ids)
            state.upkeep.changed(identity_ids)
            return len(vids)

    @staticmethod
    def _owners(state: GalleryState, vids: list[int]) -> list[str | None]:
        """The identity of each current face (None: no such face, or deleted)."""
        live = state.live
        out: list[str | None] = []
        base = state.base
        base_keys = base.keys_of(np.asarray(vids, dtype=np.int64)) if base is not None else None
        stored = base.store.identities_by_key(base_keys.tolist()) if base is not None and base_keys is not None else {}
        for i, v in enumerate(vids):
            if v in live.tombstones:
                out.append(None)
            elif v in live.faces:
                out.append(live.faces[v].identity_id)
            elif base_keys is not None and base_keys[i] >= 0 and int(base_keys[i]) in stored:
                owner = stored[int(base_keys[i])].identity_id
                row = live.identities.get(owner)
                out.append(None if row is not None and row.deleted else owner)
            else:
                out.append(None)
        return out


def _catch_up(state: GalleryState, delta: JournalSnapshot) -> None:
    """Apply journal changes made after a state's snapshot to it (live state and statistics)."""
    state.live.load(delta)
    state.upkeep.changed(_touched(delta))


def _touched(snap: JournalSnapshot) -> set[str]:
    """Identities whose faces a journal snapshot changes: enrolled or deleted, or a face deleted."""
    return {i.identity_id for i in snap.identities} | {t.identity_id for t in snap.tombstones if t.identity_id}


def _in_base(base: BaseIndex | None) -> Callable[[Iterable[str]], set[str]]:
    def check(ids: Iterable[str]) -> set[str]:
        if base is None:
            return set()
        return {i for i in ids if base.store.find_identity(i) is not None}

    return check


def _contains(base: BaseIndex | None) -> Callable[[int], bool]:
    def check(vid: int) -> bool:
        return base is not None and bool(base.contains([vid])[0])

    return check


def _identity_of(base: BaseIndex | None) -> Callable[[int], str | None]:
    def owner(vid: int) -> str | None:
        if base is None:
            return None
        key = int(base.keys_of(np.asarray([vid], dtype=np.int64))[0])
        stored = base.store.identities_by_key([key]) if key >= 0 else {}
        return stored[key].identity_id if key in stored else None

    return owner
