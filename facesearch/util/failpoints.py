"""Failpoints: make a named write site fail (or the process die) on purpose, to test what a full or
failing disk, or a crash at exactly that point, does.

A write site calls :func:`hit` with its name just before (or just after) the write, fsync, commit or
rename it guards. Every site is declared once, in :data:`SITES`, with the operations that reach it
(:class:`Operation`: what a test runs to get there); ``tests/unit/test_lock_failpoints.py`` checks
that the sites called in the code and the declared ones are the same, and the crash-point test
(``tests/integration/test_crash_points.py``) crashes a real process at every declared site, so a new
site is covered as soon as it is declared. Nothing happens unless a failpoint is set for that name,
by the environment (for server and ``facesearch-index`` processes)::

    FACESEARCH_FAILPOINTS="journal.append:eio*2,journal.commit:enospc+3"

or in-process by :func:`active` (a context manager, for tests). A spec is a comma-separated list
of ``SITE:ACTION[*TIMES][+SKIP]``: let the first ``SKIP`` hits of ``SITE`` pass (default 0), then
act on the next ``TIMES`` hits (default: every one). Actions:

``eio``, ``enospc``, ``edquot``
    raise ``OSError`` with that errno (what the kernel returns for a failing disk, a full disk,
    an exhausted quota).
``torn``
    :func:`hit` returns ``"torn"``: the site writes part of its data and then fails with
    ``ENOSPC``, as a write cut short by a full disk does (sites that cannot tear ignore it).
``kill`` (or ``crash``)
    the process kills itself with ``SIGKILL`` (a crash at exactly that point: no cleanup, no
    ``finally``, no flush of anything not yet written).
``slow``
    the site waits :data:`SLOW_S` seconds, then goes on (a stalled disk: lets a test's caller
    deadline pass at exactly that point, whatever the machine's speed).

Sites of the PostgreSQL store (``Site.store`` :attr:`Store.POSTGRESQL`: ``pg.*`` in ``PgStore``'s write
transactions, ``replica.*`` in a replica's write path; ``tests/integration/test_pg_crash_points.py``
runs them through real replicas) take ``kill``/``crash`` and ``slow`` as above; ``eio`` (``enospc``,
``edquot``) there stands for the connection to PostgreSQL breaking at that point
(:func:`facesearch.store.postgres.failures.inject` raises it as ``psycopg.OperationalError``).

A spec naming an undeclared site is refused (a typo would otherwise never fire). Cost when unset:
one dictionary lookup in ``os.environ`` per hit. Hit counts are per process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "CURRENT_SWITCH",
    "ENV",
    "SITES",
    "SLOW_S",
    "AtomicSites",
    "Failpoint",
    "FailpointSpecError",
    "Operation",
    "Site",
    "Store",
    "active",
    "hit",
    "parse",
]

ENV = "FACESEARCH_FAILPOINTS"
_ERRNOS = {"eio": errno.EIO, "enospc": errno.ENOSPC, "edquot": errno.EDQUOT}
_KILLS = ("kill", "crash")
_ACTIONS = (*_ERRNOS, "torn", *_KILLS, "slow")
SLOW_S = 2.0


class Operation(StrEnum):
    """What reaches a site: a server RPC, the server's swap to a new version, or a ``facesearch-index`` job."""

    ENROLL = "enroll"  # Enroll RPC (the live journal's append and commit)
    DELETE_IDENTITY = "delete_identity"  # DeleteIdentity RPC (erasure ledger, then journal)
    DELETE_FACES = "delete_faces"  # DeleteFaces RPC (erasure ledger, then journal)
    SWAP = "swap"  # the server installs a compacted version and prunes its journal (rotation, vacuum)
    COMPACT = "compact"  # facesearch-index compact: snapshot, seal, publish, CURRENT switch, prune old versions
    ROLLBACK = "rollback"  # facesearch-index rollback: the CURRENT switch


class Store(StrEnum):
    """Which store's write path holds a site (each crash-point matrix runs its own store's sites)."""

    SQLITE = "sqlite"  # the live journal, the erasure ledger and the index root's files
    POSTGRESQL = "postgresql"  # PgStore's write transactions and a replica's write path


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    operations: tuple[Operation, ...]
    where: str
    store: Store = Store.SQLITE


@dataclass(frozen=True, slots=True)
class AtomicSites:
    """The sites of one caller of :func:`facesearch.util.fs.atomic_path` (before the temporary file's
    fsync, before its rename over the target, after the rename and before the directory's fsync)."""

    fsync: str
    rename: str
    renamed: str


_O = Operation
_WRITES = (_O.ENROLL, _O.DELETE_IDENTITY, _O.DELETE_FACES, _O.SWAP)
_DELETES = (_O.DELETE_IDENTITY, _O.DELETE_FACES)
_PUBLISH = (_O.COMPACT,)
_POINTER = (_O.COMPACT, _O.ROLLBACK)
_STORE_WRITES = (_O.ENROLL, _O.DELETE_IDENTITY, _O.DELETE_FACES)
_PG = Store.POSTGRESQL

#: Every failpoint site, in the order an operation meets them.
SITES: dict[str, Site] = {
    s.name: s
    for s in (
        Site("ledger.commit", _DELETES, "erasure ledger: before the erasure's row is inserted and committed"),
        Site("ledger.committed", _DELETES, "erasure ledger: after the erasure committed, before the journal"),
        Site("journal.append", (_O.ENROLL,), "live journal: before the new faces' records are written"),
        Site("journal.fsync", (_O.ENROLL,), "live journal: records written, before their fsync"),
        Site("journal.appended", (_O.ENROLL,), "live journal: records fsync'd, before their rows"),
        Site("journal.rotate", (_O.SWAP,), "live journal: before a new vectors file is written (rotation)"),
        Site("journal.rotated", (_O.SWAP,), "live journal: new vectors file fsync'd, before the switch commits"),
        Site("journal.commit", _WRITES, "live journal: before COMMIT"),
        Site("journal.committed", _WRITES, "live journal: after COMMIT, before the caller is answered"),
        Site("journal.unlink", (_O.SWAP,), "live journal: rotation committed, before older vectors files go"),
        Site("journal.vacuum", (_O.SWAP,), "journal pruned: before journal.sqlite is VACUUMed"),
        Site("journal.checkpoint", (_O.SWAP,), "journal VACUUMed: before its write-ahead log is truncated"),
        Site("compact.snapshot", _PUBLISH, "compaction: journal snapshot read, before anything is written"),
        Site("publish.seal", _PUBLISH, "staged version written, before its manifest"),
        Site("publish.rename", _PUBLISH, "before the staging folder is renamed to the version"),
        Site("publish.renamed", _PUBLISH, "version folder in place, before CURRENT is switched"),
        Site("current.fsync", _POINTER, "CURRENT switch: new pointer written, before its fsync"),
        Site("current.rename", _POINTER, "CURRENT switch: before the new pointer replaces CURRENT"),
        Site("current.renamed", _POINTER, "CURRENT switch: after the rename, before the root's fsync"),
        Site("publish.prune", _PUBLISH, "before an old version is moved to .trash-*"),
        Site("publish.trash", _PUBLISH, "old version in .trash-*, before it is deleted"),
        # PostgreSQL store (PgStore.writing, every write transaction; a replica's enroll/delete)
        Site("pg.write", _STORE_WRITES, "PostgreSQL write: rows written under the append lock, before COMMIT", _PG),
        Site("pg.commit", _STORE_WRITES, "PostgreSQL write: COMMIT itself (eio: the connection breaks before it)", _PG),
        Site("pg.committed", _STORE_WRITES, "PostgreSQL write: after COMMIT, before the store returns", _PG),
        Site("replica.apply", _STORE_WRITES, "replica: write committed, before its own catch-up applies it", _PG),
        Site("replica.propagate", _DELETES, "replica: deletion applied here, before waiting for the others", _PG),
    )
}

#: The ``CURRENT`` pointer switch (:func:`facesearch.util.fs.switch_pointer`).
CURRENT_SWITCH = AtomicSites("current.fsync", "current.rename", "current.renamed")


@dataclass(frozen=True, slots=True)
class Failpoint:
    site: str
    action: str
    times: int | None  # None: every hit after the skipped ones
    skip: int


class FailpointSpecError(ValueError):
    """A malformed ``FACESEARCH_FAILPOINTS`` value (the message names the bad item)."""


def parse(spec: str) -> dict[str, Failpoint]:
    """``"site:action*times+skip,..."`` -> failpoints by site."""
    out: dict[str, Failpoint] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        site, sep, rest = item.partition(":")
        skip = times = None
        if "+" in rest:
            rest, _, skip_text = rest.partition("+")
            skip = _count(skip_text, item)
        if "*" in rest:
            rest, _, times_text = rest.partition("*")
            times = _count(times_text, item)
        if not sep or not site or rest not in _ACTIONS:
            raise FailpointSpecError(
                f"{ENV}: bad failpoint {item!r}: want SITE:ACTION[*TIMES][+SKIP], ACTION one of {', '.join(_ACTIONS)}"
            )
        if site not in SITES:
            raise FailpointSpecError(f"{ENV}: unknown site {site!r} in {item!r}; sites: {', '.join(SITES)}")
        out[site] = Failpoint(site, rest, times, skip or 0)
    return out


def _count(text: str, item: str) -> int:
    if not text.isdigit():
        raise FailpointSpecError(f"{ENV}: bad count in failpoint {item!r}")
    return int(text)


class _Registry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.env_text: str | None = None
        self.env_points: dict[str, Failpoint] = {}
        self.local: dict[str, Failpoint] = {}
        self.hits: dict[str, int] = {}


_REG = _Registry()


def hit(site: str) -> str | None:
    """Called by a write site before it acts; raises, kills, or returns an action for the site to
    perform (``"torn"``), or None (no failpoint set: the usual case)."""
    text = os.environ.get(ENV)
    if text is None and not _REG.local:
        return None
    with _REG.lock:
        if text != _REG.env_text:
            _REG.env_points, _REG.env_text = parse(text or ""), text
            _REG.hits.clear()
        point = _REG.local.get(site) or _REG.env_points.get(site)
        if point is None:
            return None
        n = _REG.hits.get(site, 0)
        _REG.hits[site] = n + 1
    if n < point.skip or (point.times is not None and n >= point.skip + point.times):
        return None
    if point.action in _ERRNOS:
        code = _ERRNOS[point.action]
        raise OSError(code, f"{os.strerror(code)} (failpoint {site})")
    if point.action in _KILLS:
        os.kill(os.getpid(), signal.SIGKILL)
    if point.action == "slow":
        time.sleep(SLOW_S)
        return None
    return point.action


@contextlib.contextmanager
def active(spec: str) -> Iterator[None]:
    """In-process failpoints for the body (hit counts start at 0), e.g. ``active("journal.fsync:eio*1")``."""
    points = parse(spec)
    with _REG.lock:
        saved = dict(_REG.local)
        _REG.local.update(points)
        for site in points:
            _REG.hits.pop(site, None)
    try:
        yield
    finally:
        with _REG.lock:
            _REG.local = saved
            for site in points:
                _REG.hits.pop(site, None)
