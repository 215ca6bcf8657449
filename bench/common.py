"""Helpers shared by the benchmarks: data location, image sample, timing, table output."""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("FACESEARCH_DATA", REPO.parent / "shared" / "data"))


def lfw_images(count: int) -> list[Path]:
    paths = sorted((data_dir() / "lfw-dev" / "images").glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no LFW images under {data_dir()}/lfw-dev (set FACESEARCH_DATA)")
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def machine() -> str:
    cores = len(os.sched_getaffinity(0))
    return f"{platform.machine()}, {cores} cores, Python {platform.python_version()}"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    body = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


class PeakSampler:
    """The largest value of ``read()`` seen while running, sampled every ``interval`` seconds in a
    thread (e.g. a server's VmRSS, which only /proc sampling shows per phase: VmHWM never falls).
    ``on_sample(value)`` runs after each reading (to stop a process that grows past a cap).
    A reading that raises (the process is gone) ends the sampling."""

    def __init__(
        self, read: Callable[[], int], interval: float = 0.05, on_sample: Callable[[int], None] | None = None
    ) -> None:
        self.read, self.interval, self.on_sample = read, interval, on_sample
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.read()
            except (OSError, ValueError, AttributeError):
                return
            self.peak = max(self.peak, value)
            if self.on_sample is not None:
                self.on_sample(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
