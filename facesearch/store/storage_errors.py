"""Storage failures as errors a caller can act on: a full or failing disk is UNAVAILABLE, not INTERNAL.

:func:`storage_failure` recognises what a write on a full or failing disk raises and returns the
:class:`~facesearch.errors.UnavailableError` to raise instead (None for anything else, which keeps
its own meaning):

=====================================================  ==========================
``OSError`` ``ENOSPC`` (no space), ``EDQUOT`` (quota)    ``Reason.STORAGE_FULL``
``sqlite3`` ``SQLITE_FULL`` ("database or disk is full")  ``Reason.STORAGE_FULL``
``OSError`` ``EIO``, ``EROFS``                            ``Reason.STORAGE_ERROR``
``sqlite3`` ``SQLITE_IOERR*`` ("disk I/O error")          ``Reason.STORAGE_ERROR``
=====================================================  ==========================

Both are retryable: the caller was told nothing was written (the writer undid its partial work
before raising), and the same call succeeds once space returns or the disk recovers.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Iterator

from facesearch.errors import Reason, UnavailableError

__all__ = ["storage_errors", "storage_failure"]

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_IO_ERRNOS = {errno.EIO, errno.EROFS}
_SQLITE_FULL = 13
_SQLITE_IOERR = 10


def storage_failure(err: BaseException, what: str) -> UnavailableError | None:
    """The error to raise for ``err`` (met while doing ``what``), or None if it is no storage failure."""
    if isinstance(err, UnavailableError):
        return err
    if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
        return UnavailableError(f"{what}: storage is full ({err.strerror or err})", reason=Reason.STORAGE_FULL)
    if isinstance(err, OSError) and err.errno in _IO_ERRNOS:
        return UnavailableError(f"{what}: storage error ({err.strerror or err})", reason=Reason.STORAGE_ERROR)
    if isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(err)
        if primary == _SQLITE_FULL or "database or disk is full" in text:
            return UnavailableError(f"{what}: storage is full ({text})", reason=Reason.STORAGE_FULL)
        if primary == _SQLITE_IOERR or "disk I/O error" in text:
            return UnavailableError(f"{what}: storage error ({text})", reason=Reason.STORAGE_ERROR)
    return None


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Re-raise storage failures in the body as :class:`UnavailableError` (others pass unchanged)."""
    try:
        yield
    except (OSError, sqlite3.Error) as err:
        mapped = storage_failure(err, what)
        if mapped is None:
            raise
        raise mapped from err
