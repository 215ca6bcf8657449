"""One exit-code policy for every command line (facesearch.errors.ExitCode), pinned where it is cheap:
usage and invalid input exit 2, a stop on any other error exits 2 except in facesearch-index (1, kept
as it was). Outcomes that are a "no" (exit 1) are pinned by the integration tests of each command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from export.main import main as export_main
from facesearch import errors
from facesearch.cli.main import main as facesearch_main
from facesearch.errors import ExitCode, FaceSearchError, exit_code
from indexer.main import main as index_main
from server.app import main as server_main
from training.main import main as train_main

MAINS: dict[str, Callable[[list[str] | None], int]] = {
    "facesearch": facesearch_main,
    "facesearch-index": index_main,
    "facesearch-export": export_main,
    "facesearch-server": server_main,
    "facesearch-train": train_main,
}


def test_the_policy() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 130]
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, FaceSearchError)]
    assert {exit_code(c("x")) for c in classes} == {ExitCode.ERROR}


@pytest.mark.parametrize("tool", sorted(MAINS))
def test_bad_usage_exits_2(tool: str) -> None:
    with pytest.raises(SystemExit) as stop:
        MAINS[tool](["--no-such-flag"])
    assert stop.value.code == ExitCode.ERROR


def test_invalid_input_exits_2_and_index_job_errors_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    assert facesearch_main(["embed", "--bundle", out, "--list", str(tmp_path / "none.txt"), "--out", out]) == 2
    assert index_main(["build", "--embeddings", str(tmp_path / "none.npz"), "--out", out]) == 2
    assert index_main(["info", str(tmp_path / "no-index")]) == 1  # NOT_FOUND: the indexer's own rule
    monkeypatch.setenv("FACESEARCH_WORKERS", "0")
    assert server_main([]) == 2
    err = capsys.readouterr().err
    assert "facesearch-index: failed (NOT_FOUND)" in err and "FACESEARCH_WORKERS must be >= 1" in err
