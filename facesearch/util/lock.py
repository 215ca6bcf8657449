"""Single-writer locks: an exclusive ``flock`` on a lock file that names its holder.

One process at a time may write an index root (``ROOT/.lock``: ``facesearch-index`` jobs) or a
live journal (``LIVE_DIR/journal.lock``: the server, ``facesearch-index journal repair``).
:class:`FileLock` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the file and then writes its pid
into it, so a refused process can say who holds it. Readers never take it.

- The lock belongs to the open file: it is released by :meth:`FileLock.release`, by closing, and
  by the kernel when the process dies (``kill -9`` included), so a crash never leaves a stale lock.
  The pid left in the file after a crash is only a hint; what counts is the ``flock``.
- Two :class:`FileLock` of the same path in one process exclude each other too (``flock`` locks
  belong to open file descriptions, not processes).
- ``flock`` works on local file systems and tmpfs; on NFS it may be emulated with ``fcntl`` locks
  or not at all: keep live journals and index roots on local disks.

Refusal is :class:`LockHeldError` (this layer raises no facesearch error class); callers turn it into
their own error, naming ``holder_pid``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FileLock", "LockHeldError", "hold", "holder_pid"]


class LockHeldError(Exception):
    """Another open file holds the lock; ``holder_pid`` is what its holder wrote (None: unknown)."""

    def __init__(self, path: Path, holder_pid: int | None) -> None:
        who = f"pid {holder_pid}" if holder_pid is not None else "another process (pid unknown)"
        super().__init__(f"{path} is held by {who}")
        self.path = path
        self.holder_pid = holder_pid


class FileLock:
    """An exclusive, non-blocking lock on ``path`` (created if missing), held until :meth:`release`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FileLock:
        """Take the lock or raise :class:`LockHeldError` at once (never waits)."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise LockHeldError(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # the pid is a courtesy: a full disk must not block the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def hold(path: str | Path) -> Iterator[FileLock]:
    """``with hold(path):`` the lock for the body (raises :class:`LockHeldError` if taken)."""
    lock = FileLock(path).acquire()
    try:
        yield lock
    finally:
        lock.release()


def holder_pid(path: str | Path) -> int | None:
    """The pid written in a lock file (None when absent or unreadable): who holds it, if anyone does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_pid(fd)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
