"""facesearch-train end to end on a few LFW identities: train, interrupt, resume == uninterrupted;
photos that cannot be read are listed in rejects.csv, skipped, and make the exit status 1."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="training needs torch (the export extra)")
pytest.importorskip("torchvision", reason="training needs torchvision")

from facesearch.nets.backbones import build_backbone  # noqa: E402
from facesearch.nets.checkpoint import load_checkpoint  # noqa: E402
from tests.integration.bad_photos import write_bad_photos  # noqa: E402
from training.main import main as train_main  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_tree(lfw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 identities with >= 4 photos, 4 photos each (copied to a temp folder), and a folder of
    photos that cannot be read (tests/integration/bad_photos.py)."""
    people = sorted(p for p in (lfw_dir / "images").iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 4)
    tree = tmp_path_factory.mktemp("tiny") / "tree"
    for person in people[:12]:
        (tree / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:4]:
            shutil.copy(photo, tree / person.name / photo.name)
    write_bad_photos(tree / "Bad_Rows", sorted((tree / people[0].name).glob("*.jpg"))[0])
    return tree


def _args(tree: Path, bundle: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "--data",
        str(tree),
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--val-fraction",
        "0.34",
        "--min-face",
        "80",
        "--chips-cache",
        str(cache),
        "--workers",
        "1",
        "--threads",
        "2",
        "--no-progress",
        *extra,
    ]


def _timeless(history: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]


def test_interrupted_and_resumed_run_equals_uninterrupted(
    tiny_tree: Path, bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "chips"
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_main(_args(tiny_tree, bundle_dir, whole, cache)) == 1  # trained; 4 photos could not be read
    out, err = capsys.readouterr()
    assert "facesearch-export checkpoint" in out and "4 photos could not be read" in err
    unread = {row["path"].rsplit("/", 1)[-1]: row["reason"] for row in csv.DictReader((whole / "rejects.csv").open())}
    assert {k: v for k, v in unread.items() if v in ("UNDECODABLE", "TOO_LARGE")} == {
        "empty.jpg": "UNDECODABLE",
        "huge.png": "TOO_LARGE",
        "not_an_image.jpg": "UNDECODABLE",
        "truncated.jpg": "UNDECODABLE",
    }

    assert train_main(_args(tiny_tree, bundle_dir, parts, cache, "--stop-after-steps", "2")) == 1
    interrupted = load_checkpoint(parts / "last.pt")
    assert (interrupted["epoch"], interrupted["global_step"], interrupted["step_in_epoch"]) == (0, 2, 2)
    assert train_main(_args(tiny_tree, bundle_dir, parts, cache)) == 1
    assert not list((parts / "checkpoints").glob("step_*.pt"))  # superseded by epoch_001.pt

    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(parts / "last.pt")
    steps = a["data"]["train_chips"] // 8  # one epoch of --batch-size 8
    assert a["epoch"] == b["epoch"] == 1 and a["global_step"] == b["global_step"] == steps >= 3
    for key in ("model_state", "head_state"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(
        torch.equal(x, y)
        for x, y in zip(
            a["optimizer_state"]["state"][0].values(), b["optimizer_state"]["state"][0].values(), strict=True
        )
    )
    assert _timeless(a["history"]) == _timeless(b["history"])
    assert a["fingerprint"] == b["fingerprint"] and a["data"] == b["data"]
    start = load_checkpoint(whole / "checkpoints" / "epoch_000.pt")["model_state"]  # the base model
    changed = {k for k in start if not torch.equal(start[k], a["model_state"][k])}
    assert changed and "body.layers.0.weight" not in changed  # trained the last stage; the stem stayed frozen

    # the interface helper B's export relies on: arch + model_state rebuild the trained backbone
    best = load_checkpoint(whole / "best.pt")
    net = build_backbone(json.loads(json.dumps(best["arch"])))
    net.load_state_dict(best["model_state"])
    assert net.eval()(torch.full((1, 3, 150, 150), 100.0)).shape == (1, 128)
    assert best["base_bundle"]["contract_id"].startswith("dlib-resnet-v1:")
    assert (best["data"]["train_identities"], best["data"]["val_identities"]) == (8, 4)

    rows = list(csv.DictReader((whole / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[0]["val_accuracy"]) > 0.5  # the base model, before training
    assert (whole / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    balance = json.loads((whole / "class_balance.json").read_text())
    assert balance["train"]["identities"] == 8 and balance["val"]["identities"] == 4
    split = json.loads((whole / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    assert (whole / "checkpoints" / "epoch_000.pt").is_file() and (whole / "checkpoints" / "epoch_001.pt").is_file()

    # a resume with another run-defining option is refused, exit 2, without touching the run
    before = (parts / "last.pt").read_bytes()
    capsys.readouterr()
    assert train_main(_args(tiny_tree, bundle_dir, parts, cache, "--lr", "0.001")) == 2
    err = capsys.readouterr().err
    assert "CHECKPOINT_MISMATCH" in err and "Traceback" not in err
    assert (parts / "last.pt").read_bytes() == before


def test_bad_input_exits_2_with_a_message(bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "o")
    assert train_main(["--data", str(tmp_path / "nope"), "--bundle", str(bundle_dir), "--out", out]) == 2
    assert "--data" in capsys.readouterr().err
    assert train_main(["--data", str(tmp_path), "--bundle", str(tmp_path / "nob"), "--out", out]) == 2
    assert "not a model bundle" in capsys.readouterr().err
    assert train_main(["--data", str(tmp_path), "--bundle", str(bundle_dir), "--out", out, "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
