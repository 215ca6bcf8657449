"""The open-set split of an identity tree (``<Person>/<photo>``) for 1:N evaluation.

gallery = the first photo (by file name) of each person with at least two photos;
probes = those people's other photos (mated searches); non-mated = every photo of the
people with a single photo (nobody in the gallery). Identity-disjoint by construction:
a non-mated person never appears in the gallery. The split is written as three image
lists (absolute paths, one per line) that ``facesearch eval ident`` and ``facesearch
embed`` read; the photos are never copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facesearch.errors import InvalidInputError, Reason
from facesearch.jobs.image_list import IMAGE_SUFFIXES
from facesearch.util.fs import write_atomic

SPLIT_FILES = ("gallery.txt", "probes.txt", "nonmated.txt")


@dataclass(frozen=True, slots=True)
class OpenSetSplit:
    gallery: tuple[Path, ...]
    probes: tuple[Path, ...]
    nonmated: tuple[Path, ...]


def identity_photos(tree: Path) -> dict[str, list[Path]]:
    """Photos per identity folder, both sorted by name."""
    if not tree.is_dir():
        raise InvalidInputError(f"{tree} is not a folder of <Person>/<photo>", reason=Reason.BAD_TREE)
    people: dict[str, list[Path]] = {}
    for folder in sorted(p for p in tree.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if photos:
            people[folder.name] = photos
    if not people:
        raise InvalidInputError(f"no <Person>/<photo> images under {tree}", reason=Reason.EMPTY_INPUT)
    return people


def open_set_split(people: dict[str, list[Path]]) -> OpenSetSplit:
    gallery, probes, nonmated = [], [], []
    for name in sorted(people):
        photos = people[name]
        if len(photos) >= 2:
            gallery.append(photos[0])
            probes.extend(photos[1:])
        else:
            nonmated.extend(photos)
    return OpenSetSplit(tuple(gallery), tuple(probes), tuple(nonmated))


def write_split(split: OpenSetSplit, out: Path) -> tuple[Path, Path, Path]:
    """Write gallery.txt, probes.txt and nonmated.txt into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, paths in zip(SPLIT_FILES, (split.gallery, split.probes, split.nonmated), strict=True):
        target = out / name
        write_atomic(target, "".join(f"{p.resolve()}\n" for p in paths))
        written.append(target)
    return written[0], written[1], written[2]
