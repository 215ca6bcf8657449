"""The client CLI commands (enroll, identify, verify, delete, list) against a real server,
including the exact ``identify --json`` contract."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from facesearch.cli import client_commands
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import ServerProcess, start_server

pytestmark = pytest.mark.slow


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="facesearch")
    sub = parser.add_subparsers(dest="command", required=True)
    client_commands.register(sub)
    result = client_commands.dispatch(parser.parse_args(argv))
    assert result is not None
    return result


@pytest.fixture(scope="module")
def server(server_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("cli")
    srv = start_server(server_bundle, root / "index", root / "logs", env={"FACESEARCH_MIN_SIMILARITY": "0.91"})
    yield srv
    assert srv.stop() == 0


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [x for x in capsys.readouterr().out.splitlines() if x.strip()]


def test_cli_round_trip(
    server: ServerProcess, people: dict[str, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", server.target]
    a, b, stranger = list(people)[:3]
    assert (
        cli(
            [
                "enroll",
                "--identity",
                a,
                "--name",
                "Person A",
                "--use-largest-face",
                "--json",
                *target,
                *map(str, people[a][:3]),
            ]
        )
        == 0
    )
    out = json.loads(lines(capsys)[-1])
    assert out["identity_id"] == a and out["created"] and len(out["face_ids"]) >= 2
    assert cli(["enroll", "--identity", b, "--use-largest-face", *target, *map(str, people[b][:3])]) == 0
    assert b in capsys.readouterr().out

    listing = tmp_path / "photos.txt"
    listing.write_text(f"{people[b][4]}\n# a comment\n{people[stranger][0]}\n")
    missing = tmp_path / "missing.jpg"
    assert (
        cli(
            [
                "identify",
                "--json",
                "--largest-only",
                "--top-k",
                "2",
                *target,
                str(people[a][4]),
                str(missing),
                "--list",
                str(listing),
            ]
        )
        == 1
    )  # one photo could not be read
    rows = [json.loads(x) for x in lines(capsys)]
    assert [r["path"] for r in rows] == [str(people[a][4]), str(missing), str(people[b][4]), str(people[stranger][0])]
    for row in rows:
        assert set(row) <= {"path", "faces", "error", "detection"}
        for face in row["faces"]:  # the issue-4 keys, plus the keys open-set decisions added
            assert set(face) == {"box", "detection_score", "match", "candidates", "threshold"}
            assert len(face["box"]) == 4 and isinstance(face["detection_score"], float)
            assert face["match"] is None or set(face["match"]) == {
                "identity_id",
                "name",
                "similarity",
                "normalised_score",
            }
            # no leaks: only candidates at or above the threshold (a stranger's face lists none)
            assert len(face["candidates"]) <= 2 and (face["match"] is None) == (face["candidates"] == [])
            for c in face["candidates"]:
                assert set(c) == {"identity_id", "name", "similarity", "face_id", "normalised_score"}
            assert face["threshold"]["kind"] == "default" and face["threshold"]["score_kind"] == "raw"
    match = rows[0]["faces"][0]["match"]
    assert match == {
        "identity_id": a,
        "name": "Person A",
        "similarity": match["similarity"],
        "normalised_score": match["normalised_score"],
    }
    assert rows[1]["faces"] == [] and rows[1]["error"]["reason"] == "IMAGE_UNREADABLE"
    assert rows[2]["faces"][0]["match"]["identity_id"] == b
    assert rows[3]["faces"][0]["match"] is None  # a stranger is unknown

    assert cli(["identify", *target, str(people[a][4])]) == 0
    assert "Person A" in capsys.readouterr().out

    assert cli(["verify", "--json", *target, str(people[a][3]), str(people[a][4])]) == 0
    assert json.loads(lines(capsys)[-1])["decision"] == "SAME"
    assert cli(["verify", "--json", *target, str(people[a][3]), "--identity", b]) == 0
    assert json.loads(lines(capsys)[-1])["decision"] == "DIFFERENT"

    assert cli(["list", "--json", *target]) == 0
    listed = [json.loads(x) for x in lines(capsys)]
    assert [x["identity_id"] for x in listed] == sorted([a, b])

    assert cli(["delete", *target, b]) == 0
    capsys.readouterr()
    assert cli(["delete", *target, b]) == 2  # NOT_FOUND
    assert "IDENTITY_NOT_FOUND" in capsys.readouterr().err
    assert cli(["list", *target]) == 0
    assert lines(capsys) == [f"{a}\tPerson A\t{out['face_count']}"]


def test_cli_unreachable_server_is_reported(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["list", "--target", "127.0.0.1:1", "--timeout", "2"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err
