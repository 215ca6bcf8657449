"""``facesearch eval ident`` end to end on a slice of lfw-dev: real photos, real bundle, report files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

from facesearch.cli import eval_ident


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesearch")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval").add_subparsers(dest="eval_command", required=True)
    eval_ident.register(ev)
    return parser


def _people(images: Path, counts: range, limit: int) -> list[list[Path]]:
    out = []
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) in counts:
            out.append(photos)
        if len(out) == limit:
            break
    return out


def _write(path: Path, photos: list[Path]) -> Path:
    path.write_text("".join(f"{p}\n" for p in photos))
    return path


def test_eval_ident_writes_report_and_det(
    lfw_dir: Path, bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enrolled = _people(lfw_dir / "images", range(2, 4), 10)
    strangers = _people(lfw_dir / "images", range(1, 2), 6)
    gallery = _write(tmp_path / "gallery.txt", [p[0] for p in enrolled])
    probes = _write(tmp_path / "probes.txt", [q for p in enrolled for q in p[1:]])
    nonmated = _write(tmp_path / "nonmated.txt", [p[0] for p in strangers])
    groups = tmp_path / "groups.csv"
    groups.write_text(
        "identity,group\n" + "".join(f"{p[0].parent.name},{'ab'[i % 2]}\n" for i, p in enumerate(enrolled + strangers))
    )
    out = tmp_path / "report"
    args = _parser().parse_args(
        [
            "eval",
            "ident",
            "--gallery",
            str(gallery),
            "--probes",
            str(probes),
            "--nonmated",
            str(nonmated),
            "--groups",
            str(groups),
            "--bundle",
            str(bundle_dir),
            "--out",
            str(out),
            "--workers",
            "2",
            "--quiet",
        ]
    )
    assert eval_ident.run(args) == 0
    report = json.loads((out / "report.json").read_text())
    ours, raw = report["facesearch"], report["raw"]
    assert report["gallery_size"] == 10 and report["nonmated_source"] == "probes"
    assert ours["mated"] == sum(len(p) - 1 for p in enrolled) and ours["nonmated"] == len(strangers)
    assert ours["rank1"] >= 0.8 and raw["rank1"] >= 0.8  # the same people are found
    assert set(ours["fnir_at_fpir"]) == {"0.01", "0.001"}
    assert len(ours["det"]["fpir"]) == len(ours["det"]["fnir"]) > 0
    assert {g["group"] for g in ours["groups"]} == {"a", "b"}
    assert report["calibrated"][0]["kind"] == "cosine"  # a fresh bundle has no open-set calibration
    with Image.open(out / "det.png") as det:
        assert det.format == "PNG"
    printed = capsys.readouterr().out
    assert "rank-1" in printed and "report.json" in printed


def test_eval_ident_split_lists(lfw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["eval", "ident-split", "--images", str(lfw_dir / "images"), "--out", str(tmp_path)])
    assert eval_ident.run(args) == 0
    people = [sorted(p.glob("*.jpg")) for p in (lfw_dir / "images").iterdir() if p.is_dir()]
    lists = {name: (tmp_path / f"{name}.txt").read_text().split() for name in ("gallery", "probes", "nonmated")}
    assert len(lists["gallery"]) == sum(len(p) >= 2 for p in people)
    assert len(lists["probes"]) == sum(len(p) - 1 for p in people if len(p) >= 2)
    assert len(lists["nonmated"]) == sum(len(p) == 1 for p in people)
    assert "gallery" in capsys.readouterr().out


def test_eval_calibrate_writes_both_tables(lfw_dir: Path, bundle_dir: Path, tmp_path: Path) -> None:
    """``facesearch eval calibrate`` end to end on an identity tree of 40 lfw-dev people (up to 3 photos each,
    linked): the raw-cosine FMR table and the open-set table, written beside each other. The server tests
    calibrate on 330 people from embeddings (tests/integration/server_fixtures.py)."""
    from facesearch.cli.main import main
    from facesearch.scoring.calibration import Calibration
    from facesearch.scoring.open_set_calibration import load_open_set_calibration

    tree = tmp_path / "tree"
    for folder in sorted(p for p in (lfw_dir / "images").iterdir() if p.is_dir())[:40]:
        (tree / folder.name).mkdir(parents=True)
        for photo in sorted(folder.glob("*.jpg"))[:3]:
            (tree / folder.name / photo.name).symlink_to(photo)
    out = tmp_path / "cal" / "calibration.json"
    out.parent.mkdir()
    args = ["eval", "calibrate", "--images", str(tree), "--bundle", str(bundle_dir), "--out", str(out)]
    assert main([*args, "--workers", "2", "--quiet"]) == 0
    table = Calibration.from_dict(json.loads(out.read_text()))
    assert table.identities >= 36 and table.genuine_pairs > 0 and str(tree) in table.source
    open_set = load_open_set_calibration(out.parent)
    assert open_set is not None and open_set.identities == table.identities
    assert open_set.max_gallery == table.identities // 2
