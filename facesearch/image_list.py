"""Reading the list of images a job works on: a file of paths, or a folder."""

from __future__ import annotations

from pathlib import Path

from facesearch.errors import InvalidInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def read_image_list(source: Path) -> list[Path]:
    """One image path per line (blank lines and ``#`` comments skipped; relative paths are
    relative to the list file), or every image under a folder, sorted."""
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise InvalidInputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}",
                                    reason="EMPTY_INPUT")
        return paths
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"cannot read image list {source}: {err}", reason="BAD_LIST") from err
    paths = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line)
        paths.append(path if path.is_absolute() else source.parent / path)
    if not paths:
        raise InvalidInputError(f"image list {source} names no images", reason="EMPTY_INPUT")
    return paths
