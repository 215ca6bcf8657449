"""Byte sizes as people write them (``8G``, ``512M``) and as the job reports them."""

from __future__ import annotations

import os
import resource
import sys

from facesearch.errors import InvalidInputError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"8G"`` -> 8 GiB in bytes; accepts K/M/G/T with optional ``B``/``iB`` and decimals (``1.5G``)."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    number = raw[: len(raw) - len(unit)] if unit else raw
    try:
        value = float(number)
    except ValueError:
        raise InvalidInputError(f"bad size {text!r}: expected a number with K, M, G or T (e.g. 8G)") from None
    if value <= 0:
        raise InvalidInputError(f"bad size {text!r}: must be positive")
    return int(value * _UNITS[unit])


def format_size(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.2f}{unit}"
        n /= 1024
    return f"{n:.2f}T"


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: the high-water mark of this program's own
    memory. ``getrusage``'s ``ru_maxrss`` is kept across ``execve``, so for a job started by a large
    process (a test runner, a notebook) it reports the parent's peak at the fork instead.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru if sys.platform == "darwin" else ru * 1024)


def current_rss() -> int:
    """Current resident set size in bytes (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children, in seconds."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, 1)
