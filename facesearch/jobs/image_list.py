"""Reading the list of images a job works on: a file of paths, or a folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from facesearch.errors import InvalidInputError, Reason

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def read_image_list(source: Path) -> list[Path]:
    """One image path per line (blank lines and ``#`` comments skipped; relative paths are
    relative to the list file), or every image under a folder, sorted."""
    if source.is_dir():
        paths = sorted(p for p in walk_files(source) if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise InvalidInputError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}", reason=Reason.EMPTY_INPUT
            )
        return paths
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"cannot read image list {source}: {err}", reason=Reason.BAD_LIST) from err
    paths = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line)
        paths.append(path if path.is_absolute() else source.parent / path)
    if not paths:
        raise InvalidInputError(f"image list {source} names no images", reason=Reason.EMPTY_INPUT)
    return paths


def walk_files(folder: Path) -> Iterator[Path]:
    """Every file under ``folder``, following symlinked folders (a tree assembled from links is
    common) but never into a folder twice, so a link cycle cannot loop."""
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for name in files:
            path = Path(top) / name
            if path.is_file():
                yield path
