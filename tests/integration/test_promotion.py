"""``facesearch models promote``: a worse candidate is refused (exit 1, the measure and the numbers named,
nothing installed); an equal one is installed atomically and becomes the default bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from facesearch.bundle.location import CURRENT_POINTER, default_bundle
from facesearch.bundle.manifest import ModelBundle
from facesearch.cli.main import main
from tests.integration.checkpoint_fixtures import *  # noqa: F403

pytestmark = pytest.mark.slow


def _promote(candidate: Path, current: Path, tree: Path, models: Path, report: Path) -> int:
    return main(
        [
            "models",
            "promote",
            str(candidate),
            "--current",
            str(current),
            "--eval",
            str(tree),
            "--to",
            str(models),
            "--report",
            str(report),
            "--min-face",
            "80",
            "--quiet",
        ]
    )


def test_worse_candidate_is_refused(
    bundle_dir: Path, worse_bundle: Path, eval_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models, report = tmp_path / "models", tmp_path / "report.json"
    assert _promote(worse_bundle, bundle_dir, eval_tree, models, report) == 1
    out = capsys.readouterr()
    assert "refused" in out.err and ("pairs accuracy" in out.err or "FNIR at FPIR 1%" in out.err)
    data = json.loads(report.read_text())
    assert data["decision"] == "refused" and data["reasons"] and data["installed"] is None
    cur, cand = data["current"], data["candidate"]
    assert (
        cand["pairs_accuracy"] < cur["pairs_accuracy"] - 0.005
        or cand["fnir_at_fpir_1pct"] > cur["fnir_at_fpir_1pct"] + 0.01
    )
    assert f"{cur['pairs_accuracy']:.4f}" in out.err or f"{cur['fnir_at_fpir_1pct']:.4f}" in out.err
    assert not (models / CURRENT_POINTER).exists()
    assert default_bundle(models) == models / "dlib"


def test_equal_candidate_is_installed_and_becomes_current(
    bundle_dir: Path, ft_bundle: Path, eval_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models, report = tmp_path / "models", tmp_path / "report.json"
    assert _promote(ft_bundle, bundle_dir, eval_tree, models, report) == 0
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["decision"] == "promoted"
    assert data["candidate"]["pairs_accuracy"] == pytest.approx(data["current"]["pairs_accuracy"], abs=1e-9)
    installed = default_bundle(models)
    bundle = ModelBundle.load(installed)  # a verified copy, found through the pointer
    assert bundle.contract_id == ModelBundle.load(ft_bundle).contract_id
    assert installed.name == bundle.contract_id.replace(":", "-")
    assert (installed / "promotion.json").is_file()
    assert f"facesearch-index build --bundle {installed}" in out
    # promoting again (same contract) replaces the copy in place and keeps the pointer valid
    assert _promote(ft_bundle, installed, eval_tree, models, report) == 0
    assert default_bundle(models) == installed and ModelBundle.load(installed)
    assert not [p for p in models.iterdir() if p.name.startswith(".")]


def test_uncalibrated_candidate_is_refused_before_evaluation(
    bundle_dir: Path, ft_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(ft_bundle, bare)
    (bare / "calibration.json").unlink()
    models, report = tmp_path / "models", tmp_path / "report.json"
    assert _promote(bare, bundle_dir, tmp_path / "no-such-tree", models, report) == 2
    err = capsys.readouterr().err
    assert "no calibration.json" in err and "facesearch eval calibrate" in err
    assert not models.exists() and not report.exists()
