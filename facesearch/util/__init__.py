"""Filesystem primitives shared by every writer: the one atomic file writer, directory replacement
and pointer switch, and file digests.

Layer: base. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs | client)
> storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors | util |
api).

Modules (and the tests that cover them):

- ``fs``: Files that readers see whole or not at all: the one atomic writer, the one pointer switch,
  whole directory replacement, and file digests. Tests: ``tests/unit/test_fs.py``.
"""

from __future__ import annotations

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

__all__ = [
    "atomic_path",
    "fsync_dir",
    "fsync_path",
    "read_pointer",
    "replace_dir",
    "sha256_file",
    "switch_pointer",
    "write_atomic",
]
