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

Enroll is idempotent under a client's request id (:class:`EnrollRequest`): the request's content
digest and its result are recorded in the enrollment's own journal transaction
(:func:`facesearch.store.journal_db.put_request`), so a retry with the same id and content gets the
first result and writes nothing, and the same id with other content is refused
(``REQUEST_ID_REUSED``); ids are kept ``WriteSettings.request_ttl_s`` (and at most
``request_max`` of them). The caller's deadline is checked inside that transaction, right before
its commit: a request whose caller has gone writes nothing (DEADLINE_EXCEEDED). Adding faces to an
identity that exists needs ``append`` (``IDENTITY_EXISTS`` otherwise), unless the migration switch
``WriteSettings.implicit_append`` (FACESEARCH_ENROLL_IMPLICIT_APPEND) restores the old behaviour.

Every write is recorded in the root's audit log (:mod:`facesearch.store.audit_log`) with the
caller's principal, before its journal commit and before the reply.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import faiss
import numpy as np

from facesearch.errors import AlreadyExistsError, FaceSearchError, InvalidInputError, NotFoundError, Reason
from facesearch.scoring.gallery_stats import GalleryOpenSet
from facesearch.store.audit_log import AuditLog, AuditOp
from facesearch.store.erasure_ledger import ErasureLedger
from facesearch.store.identity_store import StoredFace, StoredIdentity
from facesearch.store.journal_db import (
    JOURNAL_FILE,
    connect,
    count_requests,
    expire_requests,
    find_request,
    put_request,
    request_key,
)
from facesearch.store.journal_retention import forget, retained_from
from facesearch.store.live_journal import JournalSnapshot, LiveFace, LiveIdentity, LiveJournal, NewFace
from server.base_index import BaseIndex
from server.config import ServerConfig
from server.erasures import record_face_erasure, record_identity_erasure, refuse_erased
from server.live_state import LiveState, LiveView
from server.open_set_checkpoint import ERASE_S as CHECKPOINT_ERASE_S
from server.open_set_checkpoint import LiveCheckpoints, Taken, copy_of, key_for
from server.open_set_state import OpenSetState
from server.open_set_upkeep import OpenSetParams, OpenSetUpkeep, load_base_open_set
from server.principal import current_principal
from server.search import Candidate, Scored, best_per_label, drop_ids, merge_top
from server.write_health import WriteHealth, WriteStatus

log = logging.getLogger(f"facesearch.{__name__}")

MAX_CANDIDATES = 8192  # published-index candidates fetched per query, at most
LIVE_SCORES = 1 << 23  # query x live-face candidates held at once
CATCH_UP_ROUNDS = 3  # replays of the writes made meanwhile before an install takes the write lock
MAX_REQUEST_ID_BYTES = 128
AUDIT_PRUNE_EVERY_S = 3600.0  # the server prunes its audit log at most this often (as it writes)
REQUEST_EXPIRY_EVERY = 64  # enrollments between two expiries of old request ids


class Checkpoint(Protocol):
    """A caller's deadline (and cancellation): ``check`` raises once the caller has gone."""

    def check(self, stage: str) -> None: ...


@dataclass(frozen=True, slots=True)
class WriteSettings:
    """How the gallery's writes behave (server/config.py: FACESEARCH_ENROLL_*, FACESEARCH_AUDIT_*)."""

    implicit_append: bool = False  # migration: Enroll into an existing identity without append
    request_ttl_s: float = 86400.0  # how long an Enroll request id is remembered
    request_max: int = 100_000  # how many request ids are remembered, at most
    audit_retention_days: float = 365.0
    checkpoint_erase_s: float = CHECKPOINT_ERASE_S  # an erased subject leaves the open-set checkpoint within this


@dataclass(frozen=True, slots=True)
class WriteSummary:
    """What GetStats says of the gallery's writes."""

    degraded: bool  # the last journal write failed on storage and none succeeded since
    reason: str  # "STORAGE_FULL: what failed" while degraded, else ""
    failures: int  # writes failed on storage since start
    request_ids: int  # Enroll request ids remembered


@dataclass(frozen=True, slots=True)
class ImageOutcome:
    """What an Enroll answered for one of its photos (kept with a request id, for a retry)."""

    index: int
    accepted: bool
    face_id: str = ""
    reject_reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    """An Enroll's idempotency key, its content digest (:func:`enroll_digest`) and its photos'
    outcomes (accepted ones get their face ids when written)."""

    request_id: str
    digest: str
    images: tuple[ImageOutcome, ...] = ()


def write_settings(config: ServerConfig) -> WriteSettings:
    return WriteSettings(
        implicit_append=config.enroll_implicit_append,
        request_ttl_s=config.enroll_request_ttl_s,
        request_max=config.enroll_request_max,
        audit_retention_days=config.audit_retention_days,
        checkpoint_erase_s=config.checkpoint_erase_s,
    )


def check_request_id(value: str) -> str | None:
    """A request's ``request_id`` ("" -> None): at most 128 bytes of printable ASCII without spaces."""
    if not value:
        return None
    if len(value.encode()) > MAX_REQUEST_ID_BYTES or any(not 0x21 <= ord(c) <= 0x7E for c in value):
        raise InvalidInputError(
            f"request_id must be 1..{MAX_REQUEST_ID_BYTES} printable ASCII characters without spaces (e.g. a UUID)",
            reason=Reason.BAD_REQUEST_ID,
        )
    return value


def enroll_digest(
    identity_id: str,
    name: str | None,
    metadata: dict[str, str],
    images: Sequence[tuple[bytes, str]],
    options: Mapping[str, object],
) -> str:
    """SHA-256 of an Enroll request's content: what a retry must repeat exactly to be the same request."""
    h = hashlib.sha256()
    head = {"identity_id": identity_id, "name": name or "", "metadata": metadata, "options": options}
    h.update(json.dumps(head, sort_keys=True, separators=(",", ":")).encode())
    for data, source in images:
        h.update(hashlib.sha256(data).digest())
        h.update(hashlib.sha256(source.encode()).digest())
    return h.hexdigest()


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
    images: tuple[ImageOutcome, ...] = ()  # a replayed request's photo outcomes (else as given)
    replayed: bool = False  # the first result of this request id: nothing was written now


def _outcome_json(outcome: EnrollOutcome) -> str:
    return json.dumps(
        {
            "created": outcome.created,
            "face_ids": outcome.face_ids,
            "face_count": outcome.face_count,
            "images": [[i.index, i.accepted, i.face_id, i.reject_reason, i.message] for i in outcome.images],
        },
        separators=(",", ":"),
    )


def _outcome_of(text: str) -> EnrollOutcome:
    data = json.loads(text)
    images = tuple(ImageOutcome(int(i), bool(a), str(f), str(r), str(m)) for i, a, f, r, m in data["images"])
    return EnrollOutcome(bool(data["created"]), list(data["face_ids"]), int(data["face_count"]), images, True)


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
        """Up to ``limit`` identities with id > ``after`` in id order, and whether more follow.

        Costs a page, not the gallery: the live ids are kept in order (:attr:`LiveState.ordered_ids`,
        found by bisection and sliced), the published ones come from the store's index (``id > ?
        ORDER BY id LIMIT n``), and the two are merged. Consistent under concurrent writes: every
        identity that exists throughout a listing is on exactly one page (ids only grow past the token).
        """
        live = self.live
        ordered = live.ordered_ids
        live_alive: list[str] = []
        pos = bisect.bisect_right(ordered, after)
        while len(live_alive) <= limit:
            chunk = ordered[pos : pos + 2 * (limit + 1)]  # a slice is one atomic copy (the writer inserts)
            if not chunk:
                break
            pos += len(chunk)
            for i in chunk:
                row = live.identities.get(i)
                if i > after and row is not None and not row.deleted:
                    live_alive.append(i)
            live_alive = sorted(set(live_alive))  # an insertion meanwhile may repeat one
        live_alive = live_alive[: limit + 1]
        base_rows: list[StoredIdentity] = []
        cursor = after
        while self.base is not None and len(base_rows) <= limit:
            batch = self.base.store.identities_after(cursor, limit + 1)
            base_rows.extend(s for s in batch if s.identity_id not in live.identities)  # a live row decides
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
                row = live.identities[identity_id]
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
        self,
        journal: LiveJournal,
        d: int,
        open_set: OpenSetParams | None = None,
        ledger: ErasureLedger | None = None,
        *,
        audit: AuditLog | None = None,
        settings: WriteSettings | None = None,
    ) -> None:
        self.journal = journal
        self.d = d
        self.open_set = open_set or OpenSetParams()
        self.ledger = ledger  # the root's erasure ledger (server.erasures)
        self.audit = audit  # the root's audit log (None: not recorded)
        self.settings = settings or WriteSettings()
        self._write = threading.Lock()
        self._installing = threading.Lock()  # one install at a time (see install)
        self.writes = WriteHealth()  # whether the journal's storage takes writes
        self._state: GalleryState | None = None
        self._retained = 0  # the journal position pruned up to
        self._requests = connect(journal.dir / JOURNAL_FILE)  # request-id lookups (committed rows only)
        self._requests_lock = threading.Lock()
        self._enrolled = 0  # enrollments written since the last expiry of request ids
        self._audit_pruned = 0.0
        self._prune_audit()
        self._finish_erasures()
        self._closing = threading.Event()
        if audit is not None:  # pruned hourly even when no write comes
            threading.Thread(target=self._audit_upkeep, name="audit-prune", daemon=True).start()
        if self.settings.implicit_append:
            log.warning(
                "FACESEARCH_ENROLL_IMPLICIT_APPEND is on: Enroll adds faces to an existing identity without "
                "append (the behaviour before the flag, for old clients); turn it off once clients set append"
            )
        # D2: checkpoints of the open-set statistics, so a restart replays only the changes after one
        self.checkpoints = LiveCheckpoints(journal.dir, self._checkpoint_copy, erase_s=self.settings.checkpoint_erase_s)

    def _checkpoint_copy(self) -> Taken | None:
        """D2: a copy of the served statistics for a checkpoint (server.open_set_checkpoint)."""
        with self._write:
            state = self._state
            if state is None or not state.open_set.ready:
                return None
            key = key_for(state.base, self.journal.journal_id, self.open_set)
            with state.open_set.lock:
                data = copy_of(state.open_set.data)
            return Taken(key, state.live.high_water, data, self.checkpoints.erasures)

    def close(self) -> None:
        self.checkpoints.close(final=True)
        self._closing.set()
        self._requests.close()
        if self.audit is not None:
            self.audit.close()

    def _audit_upkeep(self) -> None:
        while not self._closing.wait(AUDIT_PRUNE_EVERY_S):
            with self._write:
                if not self._closing.is_set():
                    self._prune_audit()

    # -- write health, idempotency, audit --------------------------------------------------
    def write_status(self) -> WriteStatus:
        return self.writes.status

    def request_count(self) -> int:
        with self._requests_lock:
            return count_requests(self._requests)

    def write_summary(self) -> WriteSummary:
        """Write health for GetStats (reads the journal's request-id count)."""
        status = self.writes.status
        reason = f"{status.reason}: {status.message}" if status.degraded else ""
        return WriteSummary(status.degraded, reason, status.failures, self.request_count())

    def replay(self, request: EnrollRequest) -> EnrollOutcome | None:
        """The first result of ``request``'s id (None: not seen, or forgotten); REQUEST_ID_REUSED
        when that id came with other content."""
        with self._requests_lock:
            found = find_request(
                self._requests, request_key(request.request_id), newer_than=time.time() - self.settings.request_ttl_s
            )
        if found is None:
            return None
        if found.digest != request.digest:
            raise InvalidInputError(
                f"request_id {request.request_id!r} was used by an earlier Enroll with other content (identity, "
                "photos, name, metadata or flags); a retry must repeat its request exactly, a new request needs a "
                "new request_id",
                reason=Reason.REQUEST_ID_REUSED,
            )
        return _outcome_of(found.result)

    def refuse_existing(
        self, state: GalleryState, identity_id: str, create_only: bool, append: bool
    ) -> IdentityView | None:
        """The identity (None: new); ALREADY_EXISTS when it exists and the call may not add to it."""
        existing = state.identity(identity_id)
        if existing is not None and create_only:
            raise AlreadyExistsError(f"identity {identity_id!r} already exists", reason=Reason.IDENTITY_EXISTS)
        if existing is not None and not (append or self.settings.implicit_append):
            raise AlreadyExistsError(
                f"identity {identity_id!r} exists; set append to add faces to it", reason=Reason.IDENTITY_EXISTS
            )
        return existing

    def _record(
        self, op: AuditOp, identity_id: str, faces: int, principal: str, via: str, *, health: bool = True, **extra: Any
    ) -> int | None:
        """Append an audit row (durable on return); a storage failure raises UNAVAILABLE (and, with
        ``health``, degrades writes: without, the caller's own write does)."""
        if self.audit is None:
            return None
        record = functools.partial(
            self.audit.record, op, identity_id, principal=principal, faces=faces, via=via, **extra
        )
        return self.writes.run(record) if health else record()

    def _failed(self, seq: int | None) -> None:
        if seq is not None and self.audit is not None:
            self.audit.failed(seq)

    def _finish_erasures(self) -> None:
        """Pseudonymise audit rows of identities the ledger holds erased (a crash between the two writes)."""
        if self.audit is None or self.ledger is None:
            return
        try:
            n = self.audit.pseudonymise_erased(self.ledger.current().subjects.keys())
        except (FaceSearchError, sqlite3.Error) as err:
            log.warning("audit log: erased identities not pseudonymised (retried at the next start): %s", err)
            return
        if n:
            log.warning("audit log: %d rows of erased identities pseudonymised (an erasure interrupted)", n)

    def _prune_audit(self) -> None:
        """Delete audit rows past the retention, at most every AUDIT_PRUNE_EVERY_S (best effort)."""
        now = time.monotonic()
        if self.audit is None or (self._audit_pruned and now - self._audit_pruned < AUDIT_PRUNE_EVERY_S):
            return
        self._audit_pruned = now
        try:
            n = self.audit.prune(older_than_days=self.settings.audit_retention_days)
        except (FaceSearchError, sqlite3.Error) as err:
            log.warning("audit log not pruned (retried within the hour): %s", err)
            return
        if n:
            log.info("audit log: %d rows older than %g days deleted", n, self.settings.audit_retention_days)

    def base_open_set(self, base: BaseIndex) -> None:
        """Attach ``base``'s open-set statistics (loaded or computed: run it off the event loop, before install)."""
        if base.open_set is None:
            base.open_set = load_base_open_set(base.dir, self.open_set)

    @property
    def state(self) -> GalleryState | None:
        """The state searches use (a replica raises UNAVAILABLE here while fenced: server/replica_gallery.py)."""
        return self._state

    @property
    def current(self) -> GalleryState | None:
        """The installed state, for gauges and status (never raises)."""
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
                apply_changes(state, delta)
                high = delta.high_water
            built = time.perf_counter() - t0
            with self._write:
                t1 = time.perf_counter()
                delta = self.journal.snapshot(after_seq=high)  # the last ones: writes wait for these only
                if not delta.empty:
                    apply_changes(state, delta)
                self._state = state
                if cut:
                    self._retain_while_serving(base)
                held = time.perf_counter() - t1
            if state.live.high_water > cut:  # D2: live changes on top of the version: checkpoint them
                key = key_for(base, self.journal.journal_id, self.open_set)
                if not self.checkpoints.holds(key, state.live.high_water):  # D3: not when restored as it is
                    self.checkpoints.request()
            else:  # nothing to replay on this version: a checkpoint of another would only hold stale data
                self.checkpoints.drop()
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
        key = key_for(base, self.journal.journal_id, self.open_set)  # D2: a checkpoint replaces most of the replay
        restored = self.checkpoints.restore(key, at_least=0, at_most=snap.high_water)
        if restored is not None:
            data: GalleryOpenSet | None = restored[0]
            if base is not None:
                base.open_set = None
            touched = _touched_after(snap, restored[1]) | set(base.hidden_identities if base else ())
            if erasures := _erasures_after(snap, restored[1]):  # D3: replayed below; its bytes rewritten soon
                self.checkpoints.replayed_erasures(erasures, restored[1])
        elif base is not None:
            self.base_open_set(base)
            data, base.open_set = base.open_set, None  # taken over: the state keeps it current
        else:
            data = None
        state = GalleryState(base, live, OpenSetState(data or self.open_set.empty(self.d)))
        if restored is None:
            touched = _touched(snap) | set(live.base_tombstones) | set(base.hidden_identities if base else ())
        t0 = time.perf_counter()
        state.upkeep.changed(touched)
        log.info(
            "open-set statistics: %d identities (k=%d, rule %s); %d touched by live changes replayed in %.2fs%s",
            state.open_set.gallery_size,
            state.open_set.k,
            state.open_set.rule,
            len(touched),
            time.perf_counter() - t0,
            f" (on the checkpoint at journal seq {restored[1]})" if restored is not None else "",
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
        self,
        identity_id: str,
        name: str | None,
        metadata: dict[str, str],
        faces: Sequence[NewFace],
        create_only: bool = False,
        *,
        append: bool = False,
        request: EnrollRequest | None = None,
        deadline: Checkpoint | None = None,
        principal: str | None = None,
    ) -> EnrollOutcome:
        """Add ``faces`` to ``identity_id`` (created when new; an existing one needs ``append``).

        ``request``: the call's idempotency key (a retry gets the first result); ``deadline``: the
        caller's, checked right before the journal commit (once it has passed nothing is written);
        ``principal``: who asks (audit log; default: the call's principal).
        """
        who = principal or current_principal().name
        with self._write:
            if request is not None and (replayed := self.replay(request)) is not None:
                return replayed
            refuse_erased(self.ledger, identity_id)
            state = self._require_state()
            existing = self.refuse_existing(state, identity_id, create_only, append)
            images = request.images if request is not None else ()
            if not faces:
                return EnrollOutcome(False, [], existing.face_count if existing else 0, images)
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
            count = (existing.face_count if existing else 0) + len(faces)
            audit_seq: list[int | None] = [None]

            def within(conn: sqlite3.Connection, seq: int, vids: np.ndarray) -> None:
                """Inside the journal transaction, right before its commit."""
                if deadline is not None:
                    deadline.check("the enrollment's commit (nothing was written)")
                if request is not None:
                    ids = iter(face_id(v) for v in vids.tolist())
                    done = tuple(replace(i, face_id=next(ids)) if i.accepted else i for i in images)
                    outcome = EnrollOutcome(existing is None, [face_id(v) for v in vids.tolist()], count, done)
                    put_request(conn, request_key(request.request_id), request.digest, _outcome_json(outcome), now)
                    self._enrolled += 1
                    if self._enrolled >= REQUEST_EXPIRY_EVERY:
                        self._enrolled = 0
                        expire_requests(conn, before=now - self.settings.request_ttl_s, keep=self.settings.request_max)
                audit_seq[0] = self._record(
                    AuditOp.ENROLL,
                    identity_id,
                    len(faces),
                    who,
                    "Enroll",
                    health=False,
                    request_id=request.request_id if request else None,
                )

            try:
                seq, vids = self.writes.run(functools.partial(self.journal.enroll, row, faces, within=within))
            except BaseException:
                self._failed(audit_seq[0])
                raise
            row = LiveIdentity(row.identity_id, seq, False, row.name, row.metadata, row.created_at, row.updated_at)
            live_faces = [
                LiveFace(int(v), seq, identity_id, f.source, f.box, f.det_score, f.face_size, f.blur, now)
                for v, f in zip(vids.tolist(), faces, strict=True)
            ]
            in_base = state.base is not None and state.base.store.find_identity(identity_id) is not None
            state.live.enroll(row, live_faces, np.stack([f.embedding for f in faces]), in_base)
            state.upkeep.changed([identity_id])
            self.checkpoints.changed()  # D2
            self._prune_audit()
            ids = iter(face_id(v) for v in vids.tolist())
            done = tuple(replace(i, face_id=next(ids)) if i.accepted else i for i in images)
            return EnrollOutcome(
                existing is None, [face_id(v) for v in vids.tolist()], state.face_count(identity_id), done
            )

    def delete_identity(self, identity_id: str, *, principal: str | None = None) -> int:
        who = principal or current_principal().name
        with self._write:
            state = self._require_state()
            existing = state.require(identity_id)
            base_ids, live_ids = state.face_vector_ids(identity_id)
            doomed = [*base_ids.tolist(), *live_ids.tolist()]
            record_identity_erasure(self.ledger, state, identity_id, doomed, principal=who)  # before the journal
            self.checkpoints.erased()  # D3: the checkpoint is rewritten without the subject within erase_s
            audit_seq = self._record(
                AuditOp.DELETE_IDENTITY, identity_id, len(doomed), who, "DeleteIdentity", erased=True
            )
            now = time.time()
            row = LiveIdentity(identity_id, 0, True, None, {}, now, now)
            try:
                seq = self.writes.run(self.journal.delete_identity, row, doomed)
            except BaseException:
                self._failed(audit_seq)
                raise
            row = LiveIdentity(identity_id, seq, True, None, {}, now, now)
            in_base = state.base is not None and state.base.store.find_identity(identity_id) is not None
            state.live.delete_identity(row, doomed, in_base)
            state.upkeep.changed([identity_id])
            self._prune_audit()
            return existing.face_count

    def delete_faces(self, face_ids: Sequence[str], *, principal: str | None = None) -> int:
        if not face_ids:
            raise InvalidInputError("name at least one face id", reason=Reason.NO_FACE_IDS)
        who = principal or current_principal().name
        vids = list(dict.fromkeys(parse_face_id(f) for f in face_ids))
        with self._write:
            state = self._require_state()
            owners = self._owners(state, vids)
            missing = [face_id(v) for v, o in zip(vids, owners, strict=True) if o is None]
            if missing:
                raise NotFoundError(f"faces do not exist: {', '.join(missing[:10])}", reason=Reason.FACE_NOT_FOUND)
            identity_ids = [o for o in owners if o is not None]
            record_face_erasure(self.ledger, state, vids, identity_ids, principal=who)  # before the journal and the OK
            self.checkpoints.erased()  # D3: the checkpoint is rewritten without those faces within erase_s
            audit_seqs = [
                self._record(AuditOp.DELETE_FACES, owner, n, who, "DeleteFaces")
                for owner, n in Counter(identity_ids).items()
            ]
            try:
                seq = self.writes.run(self.journal.delete_faces, vids, identity_ids)
            except BaseException:
                for audit_seq in audit_seqs:
                    self._failed(audit_seq)
                raise
            state.live.delete_faces(seq, vids, identity_ids)
            state.upkeep.changed(identity_ids)
            self._prune_audit()
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


def apply_changes(state: GalleryState, delta: JournalSnapshot) -> None:
    """Apply journal changes made after a state's snapshot to it (live state and statistics)."""
    state.live.load(delta)
    state.upkeep.changed(_touched(delta))


def _touched_after(snap: JournalSnapshot, seq: int) -> set[str]:
    """D2: identities whose faces a snapshot's changes after ``seq`` change (a checkpoint holds the rest)."""
    return {i.identity_id for i in snap.identities if i.seq > seq} | {
        t.identity_id for t in snap.tombstones if t.identity_id and t.seq > seq
    }


def _erasures_after(snap: JournalSnapshot, seq: int) -> int:
    """D3: deletions (identities, faces) a snapshot holds after journal change ``seq``."""
    return len(
        {i.seq for i in snap.identities if i.deleted and i.seq > seq} | {t.seq for t in snap.tombstones if t.seq > seq}
    )


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
