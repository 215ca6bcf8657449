"""The calibration shipped in export/calibrations applies to the bundle our exporter writes today
(same dlib files, preprocessing and flip averaging): installed, it loads as the bundle's calibration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from export.shipped_calibration import SHIPPED_FILE, find_shipped_calibration, install_shipped_calibration
from facesearch.bundle.manifest import MANIFEST, ModelBundle
from facesearch.scoring.open_set_calibration import load_open_set_calibration


def test_the_exported_bundle_gets_its_shipped_calibration(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "dlib"
    shutil.copytree(bundle_dir, bundle)
    for name in ("calibration.json", "open_set_calibration.json"):
        (bundle / name).unlink(missing_ok=True)  # whatever the exporter did, start uncalibrated
    manifest = json.loads((bundle / MANIFEST).read_text())
    folder = find_shipped_calibration(manifest)
    assert folder is not None, "no shipped calibration for the bundle facesearch-export writes by default"
    assert json.loads((folder / SHIPPED_FILE).read_text())["contract_id"] == manifest["contract_id"]
    assert install_shipped_calibration(bundle, manifest) == ["calibration.json", "open_set_calibration.json"]
    loaded = ModelBundle.load(bundle, verify=False)
    assert loaded.calibration is not None and loaded.calibration.identities > 1000
    cal = load_open_set_calibration(bundle)
    assert cal is not None and cal.identities > 1000
