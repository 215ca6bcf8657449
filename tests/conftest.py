"""Shared fixtures: where the shared data lives, and a model bundle exported once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("FACESEARCH_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    root = data_dir() / "lfw-dev"
    if not (root / "images").is_dir():
        pytest.skip(f"LFW dev data not found at {root} (set FACESEARCH_DATA to the shared data folder)")
    return root


@pytest.fixture(scope="session")
def lfw_images(lfw_dir: Path) -> list[Path]:
    """A deterministic sample of 24 LFW images (every Nth of the sorted list)."""
    paths = sorted((lfw_dir / "images").glob("*/*.jpg"))
    step = max(1, len(paths) // 24)
    return paths[::step][:24]


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dlib models exported by our own export code (needs the export extra)."""
    pytest.importorskip("torch", reason="exporting the models needs the export extra (torch)")
    from export.bundle_writer import DlibExportConfig, write_dlib_bundle

    out = tmp_path_factory.mktemp("bundle") / "dlib"
    write_dlib_bundle(DlibExportConfig(out=out))
    return out


@pytest.fixture(scope="session")
def dlib_models_dir() -> Path:
    from facesearch.errors import ModelFormatError

    try:
        from facesearch.nets.dlib_sources import default_models_dir

        return default_models_dir()
    except (ImportError, ModelFormatError) as err:
        pytest.skip(f"dlib model files unavailable: {err}")
