"""Photo inputs: a folder tree (one folder per identity, LFW style) or a CSV/JSONL manifest.

Tree: ``TREE/<identity>/<photo>``; the folder name is the identity id and, with ``_`` read
as a space, its display name. Manifest: CSV with a header, or JSON lines, with fields
``path`` (relative paths are relative to the manifest), ``identity_id`` and optional ``name``
and ``metadata`` (a JSON object; other CSV columns are collected into it).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facesearch.errors import InvalidInputError
from facesearch.jobs.image_list import IMAGE_SUFFIXES


@dataclass(frozen=True, slots=True)
class ImageRow:
    path: str
    identity_id: str
    name: str | None = None
    metadata: dict[str, Any] | None = None


def rows_from_tree(tree: Path) -> list[ImageRow]:
    if not tree.is_dir():
        raise InvalidInputError(f"--images {tree}: not a folder")
    rows = []
    for person in sorted(p for p in tree.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = person.name.replace("_", " ")
        for photo in sorted(person.rglob("*")):
            if photo.suffix.lower() in IMAGE_SUFFIXES and photo.is_file():
                rows.append(ImageRow(str(photo), person.name, name))
    if not rows:
        raise InvalidInputError(f"--images {tree}: no photos in identity folders (expected TREE/<identity>/<photo>)")
    return rows


def rows_from_manifest(path: Path) -> list[ImageRow]:
    if not path.is_file():
        raise InvalidInputError(f"--manifest {path}: no such file")
    base = path.parent
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        records = _jsonl(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        records = _csv(path)
    else:
        raise InvalidInputError(f"--manifest {path}: expected .csv or .jsonl")
    rows = []
    for line, rec in records:
        photo = str(rec.get("path") or "").strip()
        identity = str(rec.get("identity_id") or "").strip()
        if not photo or not identity:
            raise InvalidInputError(f"--manifest {path} line {line}: needs non-empty path and identity_id")
        meta = rec.get("metadata")
        if isinstance(meta, str):
            try:
                meta = json.loads(meta) if meta.strip() else None
            except json.JSONDecodeError:
                raise InvalidInputError(f"--manifest {path} line {line}: metadata is not JSON") from None
        if meta is not None and not isinstance(meta, dict):
            raise InvalidInputError(f"--manifest {path} line {line}: metadata must be a JSON object")
        extra = {k: v for k, v in rec.items() if k not in ("path", "identity_id", "name", "metadata") and v != ""}
        if extra:
            meta = {**extra, **(meta or {})}
        full = Path(photo) if Path(photo).is_absolute() else base / photo
        name = rec.get("name")
        rows.append(ImageRow(str(full), identity, str(name) if name else None, meta or None))
    if not rows:
        raise InvalidInputError(f"--manifest {path} has no rows")
    return rows


def _jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for i, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as err:
                raise InvalidInputError(f"--manifest {path} line {i}: {err}") from None
            if not isinstance(rec, dict):
                raise InvalidInputError(f"--manifest {path} line {i}: expected a JSON object")
            out.append((i, rec))
    return out


def _csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if not reader.fieldnames or "path" not in reader.fieldnames or "identity_id" not in reader.fieldnames:
            raise InvalidInputError(f"--manifest {path}: the header must name at least path and identity_id")
        return [(i, dict(rec)) for i, rec in enumerate(reader, 2)]
