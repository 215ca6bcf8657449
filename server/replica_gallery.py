"""The gallery of one replica of several sharing a PostgreSQL store (``FACESEARCH_STORE=postgresql://...``).

What it serves is the published version of the shared index root plus, in memory, the store's log
after the position that version absorbed (``live_seq`` of a version built from the store; a version
built from photos absorbed nothing of it, so the whole log is replayed). The design is
:mod:`facesearch.store.postgres`'s; here is how a server process follows it:

* **Start.** :meth:`ReplicaGallery.install` (the first one) builds the state from
  ``store.snapshot(after_seq=cut)``, then starts a :class:`~facesearch.store.postgres.LogFollower`
  at that state's position and catches up once more: health turns SERVING only after that (the
  server's ``_install`` runs after this returns). A hot swap to a new version is the same install:
  the tail the version absorbed is dropped (Gallery.install reads the store from its ``live_seq``).
* **Writes.** Nothing is written locally. Enroll calls :meth:`PgStore.enroll` (durable when it
  returns; create-only and the append rule are checked inside the store's transaction, so two
  replicas enrolling one identity at once cannot both create it), then catches up from the log
  (the write and everything before it) before the reply: read-your-writes on this replica. Delete
  commits in the store, catches up, then waits until every registered replica has applied it or
  fenced itself (:meth:`ReplicaRegistry.wait_applied`) before the OK; a deletion found already made
  (NOT_FOUND: a retry) waits the same way for that earlier deletion before its NOT_FOUND. PostgreSQL down: the write
  fails UNAVAILABLE ``STORE_UNAVAILABLE`` (and GetStats/health show writes degraded) and succeeds
  again once it is back, with no restart. A write committed whose follow-up could not finish (the
  store went away between the two) is UNAVAILABLE ``STORE_OUTCOME_UNKNOWN``: retry (an Enroll with
  the same request id gets the first result, a deletion gets NOT_FOUND).
* **Failpoints** (``replica.apply``: committed, before this replica's catch-up; ``replica.propagate``:
  a deletion applied here, before the wait for the others; ``tests/integration/test_pg_crash_points.py``).
* **Other replicas' changes** arrive through the follower's thread (LISTEN/NOTIFY wake-ups, the
  log's seq to catch up, at the latest every ``poll_s``). Applying a snapshot is idempotent here:
  faces already served are skipped (a snapshot may overlap what an install already applied).
* **Fence.** :attr:`ReplicaGallery.state` raises UNAVAILABLE ``REPLICA_FENCED`` once the last
  successful catch-up started ``fence_s`` or more ago (the server also turns health NOT_SERVING);
  it serves again after the next successful catch-up. That is this replica's half of the deletion
  guarantee; the other half is the deleting replica's wait.
* Idempotency keys, the audit log and the erasure ledger are the store's (PgStore writes them in
  the write's own transaction); the replica's own directory (``FACESEARCH_LIVE_DIR``, by default
  ``ROOT/replicas/REPLICA_ID``) holds only caches (open-set statistics, checkpoints).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

from facesearch.errors import InvalidInputError, NotFoundError, PreconditionError, Reason, UnavailableError
from facesearch.store.erasure_ledger import ErasedFace
from facesearch.store.live_journal import JournalSnapshot, LiveJournal, NewFace
from facesearch.store.postgres import Enrolled, LogFollower, PgStore, sql
from facesearch.store.postgres.failures import inject, store_errors
from server.base_index import BaseIndex
from server.gallery import (
    Checkpoint,
    EnrollOutcome,
    EnrollRequest,
    Gallery,
    GalleryState,
    ImageOutcome,
    WriteSettings,
    apply_changes,
    face_id,
    parse_face_id,
)
from server.open_set_upkeep import OpenSetParams
from server.principal import current_principal

__all__ = ["ReplicaGallery", "StoreChanges"]

log = logging.getLogger(f"facesearch.{__name__}")


class StoreChanges:
    """The store's log where :class:`Gallery` reads a journal: its id, a snapshot after a position, and
    a directory of the replica's own (caches and checkpoints)."""

    def __init__(self, store: PgStore, directory: Path) -> None:
        self.store = store
        self.dir = directory

    @property
    def journal_id(self) -> str:
        return self.store.store_id

    def snapshot(self, after_seq: int = 0) -> JournalSnapshot:
        return self.store.snapshot(after_seq=after_seq)


class ReplicaGallery(Gallery):
    """A :class:`Gallery` whose writes go to the shared store and whose live state follows its log."""

    def __init__(
        self,
        store: PgStore,
        local_dir: Path,
        d: int,
        open_set: OpenSetParams | None = None,
        *,
        settings: WriteSettings | None = None,
        replica_id: str,
        fence_s: float = 10.0,
        poll_s: float = 1.0,
        info: dict[str, str] | None = None,
    ) -> None:
        local_dir.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.replica_id = replica_id
        self.fence_s = fence_s
        self.poll_s = poll_s
        self._info = dict(info or {})
        self.follower: LogFollower | None = None
        # Gallery reads the journal's id, snapshots and directory only: every write is overridden here
        super().__init__(cast(LiveJournal, StoreChanges(store, local_dir)), d, open_set, None, settings=settings)

    # -- serving --------------------------------------------------------------------------
    @property
    def state(self) -> GalleryState | None:
        """The state searches use: None until caught up at start, UNAVAILABLE ``REPLICA_FENCED`` while
        this replica is fenced (see the module docstring)."""
        follower = self.follower
        if follower is None:
            return None
        if not follower.serving_allowed():
            lag = follower.lag_s()
            raise UnavailableError(
                f"replica {self.replica_id} has not caught up with the store for "
                f"{'ever' if lag is None else f'{lag:.1f}s'} (FACESEARCH_STORE_FENCE_S={self.fence_s:g}): it may "
                "miss a deletion, so it answers again once it has caught up; another replica can answer now",
                reason=Reason.REPLICA_FENCED,
            )
        return self._state

    def serving(self) -> bool:
        """Whether searches are answered now (health SERVING)."""
        return self.follower is not None and self.follower.serving_allowed()

    def install(self, base: BaseIndex | None) -> None:
        """Serve ``base`` with the store's log after what it absorbed; what the store's erasure ledger
        erased is hidden in it first (a version rebuilt from photos never brings an erased subject back)."""
        try:
            if base is not None:
                base.hide_erased(self.store.erased())
            super().install(base)
        except BaseException:  # e.g. the store unreachable: the watcher loads the version again at its next poll
            state = self._state
            if base is not None and (state is None or state.base is not base):
                base.close()
            raise
        if self.follower is not None:
            return
        state = self._require_state()
        follower = LogFollower(
            self.store,
            self._apply,
            replica_id=self.replica_id,
            applied_seq=state.live.high_water,
            poll_s=self.poll_s,
            fence_s=self.fence_s,
            info=self._info,
        )
        follower.catch_up()  # registered (deletions wait for it from now on) and current before SERVING
        self.follower = follower
        follower.start()
        log.info(
            "replica %s following store %s from seq %d (fence %gs, poll %gs)",
            self.replica_id,
            self.store.where,
            follower.applied_seq,
            self.fence_s,
            self.poll_s,
        )

    def _apply(self, snap: JournalSnapshot) -> None:
        """The follower's apply: the store's changes after the applied position, into the served state."""
        with self._write:
            state = self._require_state()
            live = state.live
            in_base = (
                state.base.contains([f.vector_id for f in snap.faces]).tolist()
                if state.base is not None and snap.faces
                else [False] * len(snap.faces)
            )
            keep = [
                i
                for i, f in enumerate(snap.faces)
                if f.vector_id not in live.faces and f.vector_id not in live.tombstones and not in_base[i]
            ]
            # already served: an install read past the follower's position, or the version absorbed them
            # (a hot swap to a compaction of the store while the follower was behind its live_seq)
            if len(keep) < len(snap.faces):
                snap = replace(snap, faces=[snap.faces[i] for i in keep], embeddings=snap.embeddings[keep])
            high = live.high_water
            if snap.tombstones or any(i.deleted for i in snap.identities):
                self.checkpoints.erased()  # the checkpoint is rewritten without the subject within erase_s
            apply_changes(state, snap)
            live.high_water = max(high, snap.high_water)
            if snap.faces:
                self.checkpoints.changed(len(snap.identities))

    def _retain(self, base: BaseIndex) -> None:
        """The store's log is pruned by the indexer (``PgStore.prune``), never by a replica."""

    def request_count(self) -> int:
        return 0  # request ids live in the store

    def replay(self, request: EnrollRequest) -> EnrollOutcome | None:
        """The first result of ``request``'s id, from the store (whichever replica took it), applied
        here before it is returned; None for a new id. ``REQUEST_ID_REUSED`` for other content.
        (PgStore.enroll checks again inside its transaction: two retries at once write once.)"""
        with self.store.connection("find a request id") as conn:
            row = conn.execute(
                "SELECT fingerprint, result FROM idempotency_keys WHERE request_key = %s",
                (sql.request_key(request.request_id),),
            ).fetchone()
        first = sql.replayed(row, request.request_id, request.digest, None, "")
        if first is None:
            return None
        self._caught_up(first.seq, "an earlier enrollment with this request_id")
        return self._outcome(first, request.images)

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop(forget=True)
        super().close()

    # -- writes -----------------------------------------------------------------------------
    def _caught_up(self, seq: int, what: str) -> None:
        """Apply the log up to ``seq`` (this replica's own write) before replying."""
        follower = self.follower
        if follower is None:
            raise PreconditionError("the replica is still starting", reason=Reason.NOT_READY)
        try:
            with store_errors(f"replica {self.replica_id}: catch up"):
                inject("replica.apply")  # failpoint: committed in the store, not applied here yet
            for _ in range(3):  # a snapshot read after the commit reaches seq in one round
                if follower.catch_up() >= seq:
                    return
        except UnavailableError as err:
            raise UnavailableError(
                f"{what} was committed to the store (seq {seq}) but this replica could not apply it ({err.message}); "
                "retry: an Enroll with the same request_id returns the first result, a deletion gets NOT_FOUND",
                reason=Reason.STORE_OUTCOME_UNKNOWN,
            ) from err
        raise UnavailableError(
            f"{what} was committed to the store (seq {seq}) but the store's log does not show it yet; retry: an "
            "Enroll with the same request_id returns the first result, a deletion gets NOT_FOUND",
            reason=Reason.STORE_OUTCOME_UNKNOWN,
        )

    def _already_deleted(self, query: str, arg: object, what: str) -> None:
        """Before a deletion's NOT_FOUND: when an earlier deletion made it (a retry of one whose reply was
        lost: ``STORE_OUTCOME_UNKNOWN``, or a replica killed before it answered), the NOT_FOUND says it is
        deleted, so it waits as that deletion's OK would have (applied here, then on every replica or
        fenced). Otherwise a retry answered at once while another replica still served the faces."""
        with self.store.connection("find an earlier deletion") as conn:
            row = conn.execute(query, (arg,)).fetchone()
        if row is None or row[0] is None:
            return  # never there, or its deletion pruned (absorbed by every kept version)
        seq, earlier = int(row[0]), f"the earlier deletion of {what}"
        self._caught_up(seq, earlier)
        self._propagated(seq, earlier)

    def _propagated(self, seq: int, what: str) -> None:
        """Wait until no replica can return what deletion ``seq`` removed (applied, or fenced)."""
        try:
            with store_errors(f"replica {self.replica_id}: wait for the other replicas"):
                inject("replica.propagate")  # failpoint: applied here, the others not waited for yet
            done = self.store.replicas.wait_applied(seq, fence_s=self.fence_s)
        except UnavailableError as err:
            raise UnavailableError(
                f"{what} was committed to the store (seq {seq}) but whether every replica applied it could not be "
                f"checked ({err.message}); retry it (a deletion already made gets NOT_FOUND)",
                reason=Reason.STORE_OUTCOME_UNKNOWN,
            ) from err
        if not done.complete:
            raise UnavailableError(
                f"{what} was committed to the store (seq {seq}) but replicas {', '.join(done.waiting)} have neither "
                "applied it nor stopped serving yet; retry it (a deletion already made gets NOT_FOUND)",
                reason=Reason.STORE_OUTCOME_UNKNOWN,
            )

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
        who = principal or current_principal().name
        state = self._require_state()
        existing = self.refuse_existing(state, identity_id, create_only, append)  # early; the store decides
        images = request.images if request is not None else ()
        if not faces:
            return EnrollOutcome(False, [], existing.face_count if existing else 0, images)
        if deadline is not None:
            deadline.check("the enrollment's write to the store (nothing was written)")
        write = functools.partial(
            self.store.enroll,
            identity_id,
            faces,
            name=name or None,
            metadata=metadata,
            create_only=create_only or not (append or self.settings.implicit_append),
            request_id=request.request_id if request is not None else None,
            principal=who,
            fingerprint=request.digest if request is not None else None,  # the photos', as any replica sees them
        )
        done: Enrolled = self.writes.run(write)
        if done.replayed:
            self._caught_up(done.seq, "an earlier enrollment with this request_id")
            return self._outcome(done, images)
        self._caught_up(done.seq, f"the enrollment of {identity_id!r}")
        count = self._require_state().face_count(identity_id)
        return replace(self._outcome(done, images), created=existing is None and done.created, face_count=count)

    @staticmethod
    def _outcome(done: Enrolled, images: tuple[ImageOutcome, ...]) -> EnrollOutcome:
        """An enrollment's result (a replayed one: as first given), the accepted photos given their face ids."""
        vids = [face_id(v) for v in done.vector_ids.tolist()]
        it = iter(vids)
        outcome_images = tuple(replace(i, face_id=next(it, "")) if i.accepted else i for i in images)
        return EnrollOutcome(done.created, vids, done.face_count, outcome_images, done.replayed)

    def delete_identity(self, identity_id: str, *, principal: str | None = None) -> int:
        who = principal or current_principal().name
        state = self._require_state()
        base_ids, _ = state.face_vector_ids(identity_id)
        known: list[ErasedFace] = []
        if state.base is not None and len(base_ids):
            known = [ErasedFace(int(f.vector_id), f.source) for f in state.base.store.faces(base_ids.tolist()) if f]
        self.checkpoints.erased()
        write = functools.partial(self.store.delete_identity, identity_id, known_faces=known, principal=who)
        try:
            deleted = self.writes.run(write)
        except NotFoundError:
            self._already_deleted(
                "SELECT seq FROM identities WHERE identity_id = %s AND deleted", identity_id, f"{identity_id!r}"
            )
            raise
        what = f"the deletion of {identity_id!r}"
        self._caught_up(deleted.seq, what)
        self._propagated(deleted.seq, what)
        return len(deleted.vector_ids)

    def delete_faces(self, face_ids: Sequence[str], *, principal: str | None = None) -> int:
        if not face_ids:
            raise InvalidInputError("name at least one face id", reason=Reason.NO_FACE_IDS)
        who = principal or current_principal().name
        vids = list(dict.fromkeys(parse_face_id(f) for f in face_ids))
        state = self._require_state()
        owners = self._owners(state, vids)
        sources: list[str | None] = [None] * len(vids)
        if state.base is not None:
            sources = [f.source if f is not None else None for f in state.base.store.faces(vids)]
        self.checkpoints.erased()
        write = functools.partial(self.store.delete_faces, vids, owners, sources=sources, principal=who)
        try:
            deleted = self.writes.run(write)
        except NotFoundError:
            self._already_deleted("SELECT max(seq) FROM tombstones WHERE vector_id = ANY(%s)", vids, "faces")
            raise
        self._caught_up(deleted.seq, "the deletion of faces")
        self._propagated(deleted.seq, "the deletion of faces")
        return len(vids)


def open_store(url: str, *, contract_id: str, d: int) -> PgStore:
    """The store at ``url``, its schema checked (``STORE_SCHEMA`` for one this code does not know)."""
    return PgStore.open(url, contract_id=contract_id, d=d)
