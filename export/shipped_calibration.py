"""Decision calibrations shipped with facesearch, installed into a freshly exported bundle.

``facesearch eval calibrate`` measures a bundle's calibration (``calibration.json``: raw-cosine
false-match rates; ``open_set_calibration.json``: FPIR of the normalised score by gallery
size) from labelled photos. Those tables depend only on what the embeddings are: dlib's model
files, the preprocessing and whether faces are flip-averaged. So for the default dlib bundle
they are computed once and shipped here, one folder per embedding variant::

    export/calibrations/<variant>/calibration.json
    export/calibrations/<variant>/open_set_calibration.json
    export/calibrations/<variant>/shipped.json    what it applies to, the commands that made it, the data

``shipped.json`` holds the sha256 of dlib's ``.dat`` files (``source_files``), the
``preprocessing_version`` and ``flip_average`` the calibration was measured with;
:func:`install_shipped_calibration` copies a variant's files into a bundle only when all three
are the bundle's. The shipped tables were measured on lfw-dev: a test that scores lfw-dev photos
with them is in-sample (``shipped.json`` says so under ``data``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from facesearch.errors import BundleError
from facesearch.util.fs import atomic_path

CALIBRATIONS_DIR = Path(__file__).resolve().parent / "calibrations"
SHIPPED_FILE = "shipped.json"


def applies_to(shipped: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """Whether a shipped calibration was computed for a bundle with this manifest's embeddings."""
    source = manifest.get("source") or {}
    embedding = manifest.get("embedding") or {}
    return (
        shipped.get("source_files") == source.get("files")
        and str(shipped.get("preprocessing_version")) == str(manifest.get("preprocessing_version"))
        and bool(shipped.get("flip_average", False)) == bool(embedding.get("flip_average", False))
    )


def find_shipped_calibration(manifest: dict[str, Any], root: Path = CALIBRATIONS_DIR) -> Path | None:
    """The shipped calibration folder that applies to a bundle's manifest, or None."""
    if not root.is_dir():
        return None
    for folder in sorted(p for p in root.iterdir() if (p / SHIPPED_FILE).is_file()):
        try:
            shipped = json.loads((folder / SHIPPED_FILE).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise BundleError(f"{folder / SHIPPED_FILE}: unreadable: {err}") from err
        if applies_to(shipped, manifest):
            return folder
    return None


def install_shipped_calibration(bundle_dir: Path, manifest: dict[str, Any], root: Path = CALIBRATIONS_DIR) -> list[str]:
    """Copy the shipped calibration files that match ``manifest`` into ``bundle_dir``; their names.

    Nothing is copied (an empty list) when no shipped calibration was computed with the
    bundle's model files, preprocessing and flip averaging: calibrate it with
    ``facesearch eval calibrate``. Each file is written to a temporary name and renamed.
    """
    folder = find_shipped_calibration(manifest, root)
    if folder is None:
        return []
    shipped = json.loads((folder / SHIPPED_FILE).read_text())
    names = [str(n) for n in shipped["files"]]
    for name in names:
        with atomic_path(Path(bundle_dir) / name) as tmp:
            shutil.copyfile(folder / name, tmp)
    return names
