"""Helpers shared by the benchmarks: data location, image sample, timing, table output."""

from __future__ import annotations

import os
import platform
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
