"""Failpoints: make a named write site fail on purpose, to test what a full or failing disk does.

A write site calls :func:`hit` with its name just before the operation it guards (for the live
journal: ``journal.append``, ``journal.fsync``, ``journal.commit``, ``journal.rotate``). Nothing
happens unless a failpoint is set for that name, by the environment (for server processes)::

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
``kill``
    the process kills itself with ``SIGKILL`` (a crash at exactly that point).

Cost when unset: one dictionary lookup in ``os.environ`` per hit. Hit counts are per process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ENV", "Failpoint", "FailpointSpecError", "active", "hit", "parse"]

ENV = "FACESEARCH_FAILPOINTS"
_ERRNOS = {"eio": errno.EIO, "enospc": errno.ENOSPC, "edquot": errno.EDQUOT}
_ACTIONS = (*_ERRNOS, "torn", "kill")


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
    if point.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
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
