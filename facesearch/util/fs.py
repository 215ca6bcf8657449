"""Files that readers see whole or not at all: the one atomic writer, the one pointer switch, whole
directory replacement, and file digests.

Atomic write
    :func:`write_atomic` (bytes or text) and :func:`atomic_path` (for writers that need a path, such
    as ``torch.save``, ``faiss.write_index`` or a CSV writer) write a temporary file in the target's
    own directory (``.<name>.tmp-<pid>-<thread>``), ``fsync`` it, ``os.replace`` it over the target
    and ``fsync`` the directory. A reader sees the old file or the new one; after a crash at any
    point the target is the old file or the new one, never a prefix. A failed write removes its
    temporary file and leaves the target as it was.

Pointer
    A pointer file (an index root's or a models folder's ``CURRENT``) is one line, the name of a
    sibling folder. :func:`switch_pointer` replaces it atomically; :func:`read_pointer` reads the
    name. Callers check what the name must look like (their errors differ).

Directory
    :func:`replace_dir` moves a fully written staging directory over a target directory (a model
    bundle); the target is only ever absent between two renames.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from facesearch.util import failpoints

_BLOCK = 1 << 20


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's) data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it); file systems that cannot are skipped."""
    with contextlib.suppress(OSError):
        fsync_path(path)


@contextlib.contextmanager
def atomic_path(path: Path, sites: failpoints.AtomicSites | None = None) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; on a clean exit it replaces ``path``.

    The body writes (and closes) the temporary file; it is then ``fsync``'d and renamed over
    ``path``, and the directory is ``fsync``'d. On an exception the temporary file is removed and
    ``path`` is untouched. ``sites``: the caller's failpoints (:mod:`facesearch.util.failpoints`).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        yield tmp
        if sites is not None:
            failpoints.hit(sites.fsync)
        fsync_path(tmp)
        if sites is not None:
            failpoints.hit(sites.rename)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sites is not None:
        failpoints.hit(sites.renamed)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes | str, sites: failpoints.AtomicSites | None = None) -> None:
    """Replace ``path``'s content with ``data`` (text is written as UTF-8) through :func:`atomic_path`."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path, sites) as tmp, tmp.open("wb") as fh:
        fh.write(payload)


def switch_pointer(pointer: Path, name: str) -> None:
    """Point ``pointer`` (a ``CURRENT`` file) at the sibling folder ``name``, atomically."""
    write_atomic(pointer, name + "\n", failpoints.CURRENT_SWITCH)


def read_pointer(pointer: Path) -> str | None:
    """The folder name a pointer file holds (stripped), or None when there is no pointer file."""
    try:
        return pointer.read_text().strip()
    except FileNotFoundError:
        return None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_dir(staged: Path, target: Path) -> None:
    """Move the fully written ``staged`` directory to ``target``, replacing any ``target`` there.

    An existing target is first renamed aside (``<name>.old``), so ``target`` is only ever absent
    for the moment between two renames on one file system, never half written; the old copy is
    deleted afterwards.
    """
    if not target.exists():
        os.replace(staged, target)
        return
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)
