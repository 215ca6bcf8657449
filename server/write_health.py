"""Whether the gallery can take writes: degraded while the live journal's storage is full or failing.

Every journal write (enroll, delete) runs through :meth:`WriteHealth.run`. A storage failure
(:class:`~facesearch.errors.UnavailableError`, reason ``STORAGE_FULL`` or ``STORAGE_ERROR``: nothing
was written) marks writes *degraded* and is re-raised, so the caller gets UNAVAILABLE; the next
write that succeeds marks them healthy again. Nothing else is needed for writes to resume once space
returns: the journal undid its partial work, and each write simply tries again.

Searches are unaffected: the server stays SERVING. Who watches (``server/app.py``): the metric
``facesearch_writes_degraded`` (1 while degraded), ``facesearch_write_failures_total{reason}``, and
the health service ``facesearch.v1.FaceSearch.Writes`` (NOT_SERVING while degraded); listeners are
called on every failure and on recovery, from the writing thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from facesearch.errors import UnavailableError

log = logging.getLogger(f"facesearch.{__name__}")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WriteStatus:
    """The journal's write health now."""

    degraded: bool = False
    reason: str | None = None  # the last failure's reason (STORAGE_FULL, STORAGE_ERROR)
    message: str = ""
    since: float = 0.0  # time.time() of the first failure of this degraded spell
    failures: int = 0  # failed writes since the server started


class WriteHealth:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status = WriteStatus()
        self._listeners: list[Callable[[WriteStatus], None]] = []

    def listen(self, listener: Callable[[WriteStatus], None]) -> None:
        self._listeners.append(listener)

    def run(self, write: Callable[..., T], *args: object) -> T:
        """``write(*args)``, recording whether the storage took it."""
        try:
            result = write(*args)
        except UnavailableError as err:
            self._failed(err)
            raise
        if self.status.degraded:
            self._recovered()
        return result

    def _failed(self, err: UnavailableError) -> None:
        with self._lock:
            was = self.status
            self.status = WriteStatus(
                True, str(err.reason), err.message, was.since if was.degraded else time.time(), was.failures + 1
            )
            status = self.status
        if not was.degraded:
            log.error("writes degraded (%s): %s; searches go on, writes are retried as they come", err.reason, err)
        self._tell(status)

    def _recovered(self) -> None:
        with self._lock:
            if not self.status.degraded:
                return
            spell = time.time() - self.status.since
            self.status = replace(WriteStatus(), failures=self.status.failures)
            status = self.status
        log.warning("writes resumed after %.1fs degraded", spell)
        self._tell(status)

    def _tell(self, status: WriteStatus) -> None:
        for listener in self._listeners:
            try:
                listener(status)
            except Exception:  # a watcher must never fail a write
                log.exception("write-health listener failed")
