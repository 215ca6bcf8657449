"""Where a command finds its model bundle when none is given on the command line."""

from __future__ import annotations

import os
from pathlib import Path

from facesearch.errors import BundleError

DEFAULT_DATA_DIR = Path(os.environ.get("FACESEARCH_HOME", Path.home() / ".local" / "share" / "facesearch"))


def resolve_bundle(explicit: Path | None) -> Path:
    """``--bundle``, else ``$FACESEARCH_BUNDLE``, else ``$FACESEARCH_HOME/models/dlib``."""
    if explicit is not None:
        return explicit
    env = os.environ.get("FACESEARCH_BUNDLE")
    if env:
        return Path(env)
    default = DEFAULT_DATA_DIR / "models" / "dlib"
    if (default / "manifest.json").is_file():
        return default
    raise BundleError(
        "no model bundle: pass --bundle DIR or set FACESEARCH_BUNDLE "
        "(make one with `facesearch-export dlib --out DIR`)", reason="BUNDLE_MISSING",
    )
