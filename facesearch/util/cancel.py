"""Cooperative cancellation: a deadline plus a cancel flag, checked by the thread doing the work.

A server request's CPU work runs on a worker thread that the caller's task cannot interrupt. The
request carries a :class:`CancelToken` (its deadline, and an event the server sets when the caller
cancels or goes away) down into the pipeline, and the worker calls :meth:`CancelToken.check` at cheap
checkpoints *inside* each stage: between detector pyramid levels and tiles, between embedding
batches, between the faces aligned and the photos of an enrolment. The first check after the
deadline or the cancel raises (:class:`DeadlineExceeded` / :class:`Cancelled`), so the thread stops
within one checkpoint's worth of work and the request's admission slot is given back only then.

Functions of the vision layer take any :class:`Checkpoint` (``None``: never cancelled); the embedding
batcher passes :class:`AllCancelled` for a batch shared by several requests (it stops when every one of
them is cancelled). The token is thread-safe: ``threading.Event`` and ``time.monotonic``.

Work that cannot check a flag itself (one onnxruntime run over a detector tile) registers
:meth:`CancelToken.on_stop`: the callback runs, once, when the token is cancelled or its deadline passes
(a timer thread, started only while a callback is registered), e.g. to set ``RunOptions.terminate``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = [
    "AllCancelled",
    "CancelToken",
    "Cancelled",
    "Checkpoint",
    "DeadlineExceeded",
    "WorkStopped",
    "checkpoint",
    "interrupt_on_stop",
]


class WorkStopped(Exception):  # noqa: N818 - a condition, not a failure
    """The work was stopped at a checkpoint (deadline passed or cancelled)."""


class DeadlineExceeded(WorkStopped):
    """The caller's deadline passed; the work was abandoned."""


class Cancelled(WorkStopped):
    """The caller cancelled or went away, or the server is shutting down."""


class Checkpoint(Protocol):
    """Anything a worker can check between two cheap steps."""

    def check(self, stage: str) -> None: ...


class CancelToken:
    """An absolute ``time.monotonic()`` deadline (``inf``: none) and a cancel flag."""

    __slots__ = ("_callbacks", "_event", "_keys", "_lock", "_timer", "_why", "at")

    def __init__(self, at: float = float("inf")) -> None:
        self.at = at
        self._event = threading.Event()
        self._why = ""
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._keys = itertools.count()
        self._timer: threading.Timer | None = None

    @classmethod
    def after(cls, seconds: float | None) -> CancelToken:
        """A token whose deadline is ``seconds`` from now (None: no deadline)."""
        return cls(float("inf") if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def cancel(self, why: str = "the call was cancelled") -> None:
        """Stop the work at its next checkpoint (idempotent; the first reason is kept)."""
        if not self._event.is_set():
            self._why = why
            self._event.set()
        self._fire()

    def on_stop(self, fn: Callable[[], object]) -> Callable[[], None]:
        """Call ``fn`` once (from any thread) when the token is cancelled or its deadline passes, at once
        if it already is; returns the function that unregisters it (call it when the work is done)."""
        with self._lock:
            key = next(self._keys)
            self._callbacks[key] = fn
            if self._timer is None and self.at != float("inf"):
                self._timer = threading.Timer(max(0.0, self.remaining()), self._fire)
                self._timer.daemon = True
                self._timer.start()
        if self.cancelled:
            self._fire()

        def unregister() -> None:
            with self._lock:
                self._callbacks.pop(key, None)
                if not self._callbacks and self._timer is not None:
                    self._timer.cancel()
                    self._timer = None

        return unregister

    def _fire(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        for fn in callbacks:
            fn()

    @property
    def cancelled(self) -> bool:
        """Cancelled, or past the deadline."""
        return self._event.is_set() or time.monotonic() >= self.at

    def check(self, stage: str) -> None:
        """Raise :class:`Cancelled` or :class:`DeadlineExceeded` if the work must stop before ``stage``."""
        if self._event.is_set():
            raise Cancelled(f"{self._why} before {stage}")
        if time.monotonic() >= self.at:
            raise DeadlineExceeded(f"deadline exceeded before {stage}")


class AllCancelled:
    """A checkpoint for work shared by several requests: it stops once every one of them is cancelled."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: Sequence[CancelToken]) -> None:
        self._tokens = tuple(tokens)

    def check(self, stage: str) -> None:
        if self._tokens and all(t.cancelled for t in self._tokens):
            raise Cancelled(f"every request of the batch was cancelled or timed out before {stage}")

    def on_stop(self, fn: Callable[[], object]) -> Callable[[], None]:
        """:meth:`CancelToken.on_stop` for the whole batch: ``fn`` runs once every token has stopped."""
        left = [len(self._tokens)]
        lock = threading.Lock()

        def one() -> None:
            with lock:
                left[0] -= 1
                done = left[0] == 0
            if done:
                fn()

        unregisters = [t.on_stop(one) for t in self._tokens]

        def unregister() -> None:
            for u in unregisters:
                u()

        return unregister


def interrupt_on_stop(cancel: Checkpoint | None, fn: Callable[[], object]) -> Callable[[], None]:
    """``cancel.on_stop(fn)`` where the checkpoint can tell (a token or a batch of them); else nothing.
    Returns the unregister function."""
    if isinstance(cancel, CancelToken | AllCancelled):
        return cancel.on_stop(fn)
    return lambda: None


def checkpoint(cancel: Checkpoint | None, stage: str) -> None:
    """``cancel.check(stage)`` where there is a checkpoint (vision functions take ``None`` for none)."""
    if cancel is not None:
        cancel.check(stage)
