"""Wake-ups when the store's log grows: LISTEN on a connection of its own, never relied on for content.

Every store write queues ``NOTIFY facesearch_changes, '<seq>'``; PostgreSQL delivers it when (and
only if) the transaction commits, in commit order, to every listening connection. A replica's loop::

    listener = ChangeListener(store.dsn)
    while serving:
        listener.wait(timeout=poll_s)           # a notification, a reconnection, or the poll interval
        delta = store.snapshot(after_seq=applied)  # the log is the truth: catch up by seq
        apply(delta); applied = delta.high_water

A notification only says "look now": what changed is read from the log by seq, so a notification
that is missed (the listening connection dropped, PostgreSQL restarted, the replica was busy) loses
nothing: the next wake-up, at the latest the poll interval, catches up. :meth:`ChangeListener.wait`
reports ``resync`` after it (re)connects, when notifications may have been missed meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from facesearch.store.postgres.failures import is_transient
from facesearch.store.postgres.sql import NOTIFY_CHANNEL
from facesearch.store.store_location import redact

__all__ = ["ChangeListener", "Wake"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Wake:
    """Why :meth:`ChangeListener.wait` returned: the highest seq notified (None: none), and whether the
    listening connection was (re)established, so notifications may have been missed: catch up."""

    seq: int | None
    resync: bool

    @property
    def timed_out(self) -> bool:
        return self.seq is None and not self.resync


class ChangeListener:
    """A LISTENing connection to the store (one per replica; not shared between threads)."""

    def __init__(self, dsn: str, *, connect_timeout_s: int = 5, retry_s: float = 0.5) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout_s
        self._retry_s = retry_s
        self._conn: psycopg.Connection[Any] | None = None
        self.reconnects = 0  # connections made after the first (for logs and tests)
        self._connected_once = False

    def _connect(self) -> bool:
        """Connect and LISTEN; False (logged) when the store cannot be reached now."""
        try:
            conn = psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self._connect_timeout, application_name="facesearch-listen"
            )
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg.Error as err:
            if not is_transient(err):
                raise
            log.warning("store %s: cannot listen for changes (%s); retrying", redact(self._dsn), err)
            return False
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        self._conn = conn
        return True

    def wait(self, timeout: float) -> Wake:
        """Block until a notification, a (re)connection or ``timeout`` seconds; drains what is queued."""
        deadline = time.monotonic() + timeout
        if self._conn is None or self._conn.closed:
            if self._connect():
                return Wake(None, True)
            time.sleep(min(self._retry_s, max(0.0, deadline - time.monotonic())))
            return Wake(None, False)
        conn = self._conn
        seqs: list[int] = []
        try:
            for note in conn.notifies(timeout=max(0.0, deadline - time.monotonic()), stop_after=1):
                seqs.append(_seq(note.payload))
            if seqs:  # take whatever else already arrived, without waiting
                seqs += [_seq(n.payload) for n in conn.notifies(timeout=0.0)]
        except psycopg.Error as err:
            if not is_transient(err):
                raise
            log.warning("store %s: listening connection lost (%s); reconnecting", redact(self._dsn), err)
            self._drop()
            return Wake(max(seqs) if seqs else None, self._connect())
        return Wake(max(seqs) if seqs else None, False)

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> ChangeListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _seq(payload: str) -> int:
    try:
        return int(payload)
    except ValueError:
        return 0
