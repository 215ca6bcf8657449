"""Filesystem primitives shared by every writer: the one atomic file writer, directory replacement
and pointer switch, and file digests.

Layer: base. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs | client)
> storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors | util |
api) > reasons.

Modules (and the tests that cover them):

- ``cancel``: Cooperative cancellation: a deadline plus a cancel flag, checked by the thread doing
  the work. Tests: ``tests/unit/test_service_bounds.py``.
- ``failpoints``: Failpoints: make a named write site fail (or the process die) on purpose, to test
  what a full or failing disk, or a crash at exactly that point, does. Tests:
  ``tests/integration/test_crash_points.py``, ``tests/integration/test_pg_crash_points.py``,
  ``tests/integration/test_server_enroll_idempotency.py``, ``tests/unit/test_lock_failpoints.py``.
- ``fs``: Files that readers see whole or not at all: the one atomic writer, the one pointer switch,
  whole directory replacement, and file digests. Tests:
  ``tests/integration/test_server_erasure.py``, ``tests/unit/test_fs.py``.
- ``lock``: Single-writer locks: an exclusive ``flock`` on a lock file that names its holder. Tests:
  ``tests/unit/test_lock_failpoints.py``.
"""

from __future__ import annotations

from facesearch.util.cancel import (
    AllCancelled,
    Cancelled,
    CancelToken,
    Checkpoint,
    DeadlineExceeded,
    WorkStopped,
    checkpoint,
    interrupt_on_stop,
)
from facesearch.util.failpoints import (
    SLOW_S,
    Operation,
)
from facesearch.util.fs import (
    atomic_path,
    fsync_dir,
    fsync_path,
    read_pointer,
    replace_dir,
    sha256_file,
    switch_pointer,
    write_atomic,
)
from facesearch.util.lock import (
    FileLock,
    LockHeldError,
    hold,
    holder_pid,
)

__all__ = [
    "SLOW_S",
    "AllCancelled",
    "CancelToken",
    "Cancelled",
    "Checkpoint",
    "DeadlineExceeded",
    "FileLock",
    "LockHeldError",
    "Operation",
    "WorkStopped",
    "atomic_path",
    "checkpoint",
    "fsync_dir",
    "fsync_path",
    "hold",
    "holder_pid",
    "interrupt_on_stop",
    "read_pointer",
    "replace_dir",
    "sha256_file",
    "switch_pointer",
    "write_atomic",
]
