"""Which servers share a store, how far each has applied its log, and waiting for a change to reach them.

Each replica records ``(replica_id, applied_seq, heartbeat_at)`` in ``replicas`` after every
successful catch-up (:class:`~facesearch.store.postgres.follower.LogFollower` does it at least every
poll interval). ``heartbeat_at`` is the *database's* clock, and so are the ages computed from it:
replicas' clocks never need to agree.

The deletion guarantee rests on two rules with one constant, ``fence_s``:

* a replica serves searches only while its last successful catch-up *started* less than ``fence_s``
  ago by its own monotonic clock (``LogFollower.serving_allowed``); past that it may have missed a
  deletion, so it stops answering until it has caught up;
* a deletion, once committed, waits (:meth:`ReplicaRegistry.wait_applied`) until every registered
  replica has either applied it (``applied_seq >= seq``) or last heartbeated more than ``fence_s +
  margin_s`` ago (database clock): such a replica's last successful catch-up started before that
  heartbeat was written, so by its own clock more than ``fence_s`` have passed too: it has stopped
  serving. Only then is the deletion acknowledged.

So after an OK no replica returns the deleted faces: those that are up have applied it (normally
within one notification round trip, milliseconds), and one that is cut off from PostgreSQL or dead
stops serving within ``fence_s`` of its last contact, which the deletion waited out. A PostgreSQL
outage shorter than ``fence_s`` fences nobody (reads go on from memory), and no deletion can be
acknowledged during it anyway.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from facesearch.store.postgres.store import PgStore

__all__ = ["Propagation", "ReplicaRegistry", "ReplicaState"]


@dataclass(frozen=True, slots=True)
class ReplicaState:
    replica_id: str
    applied_seq: int
    age_s: float  # since its last heartbeat, by the database's clock
    info: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Propagation:
    """Where a change stands on the registered replicas (:meth:`ReplicaRegistry.wait_applied`)."""

    seq: int
    applied: tuple[str, ...]  # applied it
    fenced: tuple[str, ...]  # did not, but last heartbeated over fence_s + margin ago: not serving
    waiting: tuple[str, ...]  # neither, when the wait timed out

    @property
    def complete(self) -> bool:
        """No replica can still return what the change removed."""
        return not self.waiting


class ReplicaRegistry:
    """The ``replicas`` table of a store (``store.replicas``)."""

    def __init__(self, store: PgStore) -> None:
        self._store = store

    def heartbeat(self, replica_id: str, applied_seq: int, info: Mapping[str, Any] | None = None) -> None:
        """Record that ``replica_id`` has applied the log up to ``applied_seq`` (never moves back)."""
        with self._store.connection("heartbeat") as conn:
            conn.execute(
                "INSERT INTO replicas (replica_id, applied_seq, info) VALUES (%s, %s, %s) "
                "ON CONFLICT (replica_id) DO UPDATE SET applied_seq = greatest(replicas.applied_seq, "
                "excluded.applied_seq), heartbeat_at = now(), info = CASE WHEN excluded.info = '{}' THEN "
                "replicas.info ELSE excluded.info END",
                (replica_id, applied_seq, Jsonb(dict(info or {}))),
            )

    def forget(self, replica_id: str) -> None:
        """A replica that stops cleanly leaves the registry (deletions no longer wait for it)."""
        with self._store.connection("forget replica") as conn:
            conn.execute("DELETE FROM replicas WHERE replica_id = %s", (replica_id,))

    def states(self) -> list[ReplicaState]:
        with self._store.connection("read replicas") as conn:
            rows = conn.execute(
                "SELECT replica_id, applied_seq, extract(epoch FROM now() - heartbeat_at)::float8, info "
                "FROM replicas ORDER BY replica_id"
            ).fetchall()
        return [ReplicaState(r[0], int(r[1]), float(r[2]), dict(r[3] or {})) for r in rows]

    def wait_applied(
        self,
        seq: int,
        *,
        fence_s: float,
        margin_s: float = 0.5,
        timeout_s: float | None = None,
        poll_s: float = 0.02,
    ) -> Propagation:
        """Wait until every registered replica has applied ``seq`` or is fenced (see the module
        docstring). ``timeout_s`` defaults to ``fence_s + margin_s + 1``: enough for every replica to be
        one or the other, so a complete :class:`Propagation` comes back unless one keeps heartbeating
        without applying (which :class:`LogFollower` never does: it heartbeats what it applied)."""
        deadline = time.monotonic() + (fence_s + margin_s + 1.0 if timeout_s is None else timeout_s)
        while True:
            states = self.states()
            applied = tuple(s.replica_id for s in states if s.applied_seq >= seq)
            fenced = tuple(s.replica_id for s in states if s.applied_seq < seq and s.age_s > fence_s + margin_s)
            waiting = tuple(s.replica_id for s in states if s.replica_id not in applied and s.replica_id not in fenced)
            if not waiting or time.monotonic() >= deadline:
                return Propagation(seq, applied, fenced, waiting)
            time.sleep(poll_s)
