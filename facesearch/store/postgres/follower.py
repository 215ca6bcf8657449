"""A replica's follower of the store's log: keeps what it serves current, and says when it must not serve.

:class:`LogFollower` owns the replica's applied position. :meth:`LogFollower.catch_up` reads
``store.snapshot(after_seq=applied)`` and hands it to the replica's ``apply`` (for the server:
``LiveState.load`` plus the open-set upkeep, as ``Gallery`` does for a journal), then records the new
position as the replica's heartbeat. Everything that changes what a replica serves goes through it,
one catch-up at a time, in seq order:

* at start, before the replica reports SERVING (``applied`` = the published version's ``live_seq``);
* in the background (:meth:`start`): woken by LISTEN/NOTIFY, at the latest every ``poll_s``;
* by a replica's own write, right after the store returned: the write is applied with everything
  before it, before the reply (read-your-writes), so a replica never applies its own change out of
  order with another replica's.

``apply`` must be idempotent: when it fails part-way the position does not move, and the next
catch-up hands it the same changes again (``LiveState.load`` of the same rows is).

Retention without an indexer run: every ``retention.expire_every_s`` (``FACESEARCH_STORE_EXPIRE_S``,
300 s) the background thread also expires idempotency keys and audit rows past their windows
(:func:`facesearch.store.postgres.retention.expire_if_free`: one replica at a time, under an advisory
try-lock; the rules are the indexer's). A failure there is logged and retried at the next interval;
it never stops the following.

:meth:`serving_allowed` is the replica's half of the deletion guarantee
(:mod:`facesearch.store.postgres.replicas`): False once its last successful catch-up started
``fence_s`` or more ago. A PostgreSQL outage shorter than that changes nothing for reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from facesearch.errors import UnavailableError
from facesearch.store.live_journal import JournalSnapshot
from facesearch.store.postgres.listener import ChangeListener
from facesearch.store.postgres.retention import RetentionWindows, expire_if_free
from facesearch.store.postgres.store import PgStore

__all__ = ["LogFollower"]

log = logging.getLogger(__name__)


class LogFollower:
    def __init__(
        self,
        store: PgStore,
        apply: Callable[[JournalSnapshot], None],
        *,
        replica_id: str,
        applied_seq: int = 0,
        poll_s: float = 1.0,
        fence_s: float = 10.0,
        info: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retention: RetentionWindows | None = None,
    ) -> None:
        if poll_s >= fence_s:
            raise ValueError(f"poll_s ({poll_s}) must be well under fence_s ({fence_s})")
        self.store = store
        self.replica_id = replica_id
        self.poll_s = poll_s
        self.fence_s = fence_s
        self._apply = apply
        self._applied = applied_seq
        self._info = dict(info or {})
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ok: float | None = None  # when the last successful catch-up started (monotonic)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # catch-ups that failed (store unreachable), for logs and metrics
        self.retention = retention if retention is not None else RetentionWindows.from_env()
        self._next_expiry = clock() + self.retention.expire_every_s
        self.expired_runs = 0  # expiry runs this replica made (another replica may have made others)

    @property
    def applied_seq(self) -> int:
        return self._applied

    def catch_up(self) -> int:
        """Apply what follows the applied position (one consistent snapshot), heartbeat; returns the
        new position. UNAVAILABLE when the store cannot be reached (nothing applied)."""
        with self._lock:
            started = self._clock()
            snap = self.store.snapshot(after_seq=self._applied)
            if not snap.empty:
                self._apply(snap)
            self._applied = max(self._applied, snap.high_water)
            self.store.replicas.heartbeat(self.replica_id, self._applied, self._info)
            self._last_ok = started
            return self._applied

    def serving_allowed(self) -> bool:
        """Whether this replica may answer searches: it caught up less than ``fence_s`` ago."""
        last = self._last_ok
        return last is not None and self._clock() - last < self.fence_s

    def lag_s(self) -> float | None:
        """Seconds since the last successful catch-up started (None: never)."""
        last = self._last_ok
        return None if last is None else self._clock() - last

    # -- background ---------------------------------------------------------------------
    def start(self) -> None:
        """Follow the log in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            raise RuntimeError("follower already started")
        self._thread = threading.Thread(target=self._run, name=f"log-follower-{self.replica_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        listener = ChangeListener(self.store.dsn, retry_s=min(0.5, self.poll_s))
        try:
            while not self._stop.is_set():
                listener.wait(self.poll_s)  # a notification, a reconnection (catch up), or the poll interval
                if self._stop.is_set():
                    break
                try:
                    self.catch_up()
                    self._expire_when_due()
                except UnavailableError as err:
                    self.failures += 1
                    if self.failures == 1 or self.failures % 50 == 0:
                        log.warning(
                            "replica %s: cannot follow the store (%d failures): %s", self.replica_id, self.failures, err
                        )
                    self._stop.wait(min(0.2, self.poll_s))
                except Exception:  # keep following; an apply bug must not silently stop propagation
                    self.failures += 1
                    log.exception("replica %s: catch-up failed", self.replica_id)
                    self._stop.wait(self.poll_s)
        finally:
            listener.close()

    def _expire_when_due(self) -> None:
        """Expire keys and audit rows past their windows when the interval is up (see the module docstring)."""
        every = self.retention.expire_every_s
        if every <= 0 or self._clock() < self._next_expiry:
            return
        self._next_expiry = self._clock() + every
        try:
            done = expire_if_free(self.store, self.retention)
        except UnavailableError as err:
            log.warning(
                "replica %s: expiring request ids and audit rows failed (again in %gs): %s", self.replica_id, every, err
            )
            return
        if done is None:
            return  # another replica is at it
        self.expired_runs += 1
        if done.request_ids or done.audit_rows or done.pseudonymised:
            log.info(
                "replica %s: %d request ids and %d audit rows past their retention deleted, %d audit rows of erased "
                "identities pseudonymised",
                self.replica_id,
                done.request_ids,
                done.audit_rows,
                done.pseudonymised,
            )

    def stop(self, *, forget: bool = True) -> None:
        """Stop following; ``forget`` leaves the registry (a clean shutdown: deletions stop waiting for it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if forget:
            try:
                self.store.replicas.forget(self.replica_id)
            except UnavailableError as err:  # it will look dead, then fenced: still safe
                log.warning("replica %s: not removed from the registry: %s", self.replica_id, err)
