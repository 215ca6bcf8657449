"""Where a command finds its model bundle when none is given on the command line.

Installed bundles live under ``$FACESEARCH_HOME/models``: ``dlib/`` (what ``facesearch-export
dlib`` is told to write) and, once ``facesearch models promote`` has run, one folder per
promoted bundle plus a ``CURRENT`` file naming the one in use (one line, the folder name;
switched by :func:`facesearch.util.fs.switch_pointer`, like an index root's ``CURRENT``).
``CURRENT`` wins over ``dlib/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from facesearch.errors import BundleError, Reason
from facesearch.util.fs import read_pointer

DEFAULT_DATA_DIR = Path(os.environ.get("FACESEARCH_HOME", Path.home() / ".local" / "share" / "facesearch"))
#: The file in a models folder naming the promoted bundle in use.
CURRENT_POINTER = "CURRENT"


def current_bundle(models_dir: Path) -> Path | None:
    """The bundle folder ``models_dir/CURRENT`` names, or None without a pointer."""
    pointer = models_dir / CURRENT_POINTER
    try:
        name = read_pointer(pointer)
    except (OSError, UnicodeDecodeError) as err:
        raise BundleError(f"{pointer}: unreadable bundle pointer: {err}") from err
    if name is None:
        return None
    if not name or "/" in name or name in (".", ".."):
        raise BundleError(f"{pointer}: bad bundle pointer {name!r} (one folder name expected)")
    return models_dir / name


def default_bundle(models_dir: Path) -> Path:
    """``models_dir/CURRENT``'s bundle when promoted, else ``models_dir/dlib`` (which may not exist)."""
    return current_bundle(models_dir) or models_dir / "dlib"


def resolve_bundle(explicit: Path | None) -> Path:
    """``--bundle``, else ``$FACESEARCH_BUNDLE``, else ``$FACESEARCH_HOME/models`` (CURRENT, then dlib)."""
    if explicit is not None:
        return explicit
    env = os.environ.get("FACESEARCH_BUNDLE")
    if env:
        return Path(env)
    default = default_bundle(DEFAULT_DATA_DIR / "models")
    if (default / "manifest.json").is_file():
        return default
    raise BundleError(
        "no model bundle: pass --bundle DIR or set FACESEARCH_BUNDLE "
        "(make one with `facesearch-export dlib --out DIR`)",
        reason=Reason.BUNDLE_MISSING,
    )
