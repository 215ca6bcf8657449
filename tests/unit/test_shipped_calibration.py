"""Shipped decision calibrations: installed into a bundle only when its model files, preprocessing
and flip averaging are those the calibration was measured with; the shipped tables are readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.shipped_calibration import CALIBRATIONS_DIR, SHIPPED_FILE, install_shipped_calibration
from facesearch.bundle.manifest import CALIBRATION_FILE
from facesearch.scoring.calibration import Calibration
from facesearch.scoring.open_set_calibration import OPEN_SET_CALIBRATION_FILE, load_open_set_calibration

SOURCE = {"a.dat": "11" * 32, "b.dat": "22" * 32}


def _manifest(flip: bool, source: dict[str, str] | None = None, preprocessing: str = "1") -> dict[str, object]:
    embedding: dict[str, object] = {"dim": 128}
    if flip:
        embedding["flip_average"] = True
    return {"source": {"files": dict(source or SOURCE)}, "preprocessing_version": preprocessing, "embedding": embedding}


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    root = tmp_path / "calibrations"
    for variant, flip in (("plain", False), ("flip", True)):
        folder = root / variant
        folder.mkdir(parents=True)
        (folder / "calibration.json").write_text(json.dumps({"variant": variant}))
        (folder / "open_set_calibration.json").write_text(json.dumps({"variant": variant}))
        (folder / SHIPPED_FILE).write_text(
            json.dumps(
                {
                    "source_files": SOURCE,
                    "preprocessing_version": "1",
                    "flip_average": flip,
                    "files": ["calibration.json", "open_set_calibration.json"],
                }
            )
        )
    return root


@pytest.mark.parametrize(("flip", "variant"), [(False, "plain"), (True, "flip")])
def test_the_matching_variant_is_installed(shipped: Path, tmp_path: Path, flip: bool, variant: str) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    names = install_shipped_calibration(bundle, _manifest(flip), shipped)
    assert names == ["calibration.json", "open_set_calibration.json"]
    for name in names:
        assert json.loads((bundle / name).read_text()) == {"variant": variant}
    assert sorted(p.name for p in bundle.iterdir()) == names  # no temporary files left


@pytest.mark.parametrize(
    "manifest",
    [
        _manifest(False, {**SOURCE, "b.dat": "33" * 32}),  # other model weights
        _manifest(True, preprocessing="2"),  # other preprocessing
        {"preprocessing_version": "1", "embedding": {}},  # no source files recorded
    ],
)
def test_nothing_is_installed_for_other_embeddings(shipped: Path, tmp_path: Path, manifest: dict[str, object]) -> None:
    assert install_shipped_calibration(tmp_path, manifest, shipped) == []
    assert not (tmp_path / CALIBRATION_FILE).exists()


def test_shipped_calibrations_are_readable_and_say_where_they_come_from(tmp_path: Path) -> None:
    folders = sorted(p for p in CALIBRATIONS_DIR.iterdir() if (p / SHIPPED_FILE).is_file())
    assert folders, f"no shipped calibration in {CALIBRATIONS_DIR}"
    variants = set()
    for folder in folders:
        meta = json.loads((folder / SHIPPED_FILE).read_text())
        assert set(meta["files"]) == {CALIBRATION_FILE, OPEN_SET_CALIBRATION_FILE}
        assert "lfw-dev" in meta["data"] and meta["commands"]
        variants.add(meta["flip_average"])
        cal = load_open_set_calibration(folder)
        assert cal is not None and cal.max_gallery >= 700  # all of lfw-dev: galleries up to half its people
        assert Calibration.from_dict(json.loads((folder / CALIBRATION_FILE).read_text())).points
        bundle = tmp_path / folder.name
        bundle.mkdir()
        manifest = {
            "source": {"files": meta["source_files"]},
            "preprocessing_version": meta["preprocessing_version"],
            "embedding": {"flip_average": meta["flip_average"]},
        }
        assert install_shipped_calibration(bundle, manifest) == meta["files"]
    assert len(variants) == len(folders)  # one calibration per embedding variant
