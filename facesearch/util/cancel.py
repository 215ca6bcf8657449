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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Protocol

__all__ = ["AllCancelled", "CancelToken", "Cancelled", "Checkpoint", "DeadlineExceeded", "WorkStopped", "checkpoint"]


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

    __slots__ = ("_event", "_why", "at")

    def __init__(self, at: float = float("inf")) -> None:
        self.at = at
        self._event = threading.Event()
        self._why = ""

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


def checkpoint(cancel: Checkpoint | None, stage: str) -> None:
    """``cancel.check(stage)`` where there is a checkpoint (vision functions take ``None`` for none)."""
    if cancel is not None:
        cancel.check(stage)
