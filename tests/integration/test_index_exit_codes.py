"""Every ``facesearch-index`` subcommand's exit codes, run as a subprocess (README, "Exit status"):
0 done (and the answer is yes), 1 the job ran and failed or the answer is no, 2 bad usage or invalid
input. One root is built once and walked through every subcommand; the table must name every
subcommand the parser has."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facesearch.store.index_artifact import INDEX_FILE, current_version
from facesearch.store.live_journal import LiveIdentity, LiveJournal, NewFace
from indexer.main import parser
from indexer.publish import locked
from tests.pg_fixtures import *  # noqa: F403 - pg_dsn: the db subcommand against a real PostgreSQL

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONTRACT = "exit-codes:1"
FAST = ["--quiet", "--memory-budget", "1G"]
SEEN: dict[str, set[int]] = {}


def index(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "indexer", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)
    SEEN.setdefault(str(args[0]), set()).add(done.returncode)
    return done


def expect(code: int, *args: str | Path) -> str:
    done = index(*args)
    assert done.returncode == code, f"{args}: exit {done.returncode}, expected {code}\n{done.stderr[-2000:]}"
    return done.stdout + done.stderr


def _npz(path: Path, n: int, seed: int, prefix: str, contract: str = CONTRACT) -> Path:
    x = np.random.default_rng(seed).normal(size=(n, 128)).astype(np.float32)
    ids = np.asarray([f"{prefix}-subject-{i % 6}" for i in range(n)])
    np.savez(path, embeddings=x, identities=ids, contract_id=np.asarray(contract))
    return path


def test_every_subcommand_exits_0_1_or_2_as_documented(tmp_path: Path, pg_dsn: str) -> None:
    root = tmp_path / "root"
    a = _npz(tmp_path / "a.npz", 60, 1, "a")
    b = _npz(tmp_path / "b.npz", 30, 2, "b")
    other = _npz(tmp_path / "other.npz", 30, 3, "c", contract="another:1")

    expect(0, "build", "--embeddings", a, "--out", root, *FAST)
    expect(2, "build", "--embeddings", tmp_path / "none.npz", "--out", root, *FAST)  # invalid input
    expect(2, "build", "--out", root)  # usage: no input
    bad = tmp_path / "bad.npz"
    x = np.random.default_rng(4).normal(size=(20, 128)).astype(np.float32)
    x[0] = np.nan
    np.savez(bad, embeddings=x, identities=np.asarray(["d"] * 20), contract_id=np.asarray(CONTRACT))
    expect(1, "build", "--embeddings", bad, "--out", tmp_path / "root2", *FAST)  # published, a row failed

    expect(0, "add", root, "--embeddings", b, *FAST)
    expect(1, "add", root, "--embeddings", other, *FAST)  # another model contract
    expect(2, "add", root, "--embeddings", tmp_path / "none.npz", *FAST)

    expect(0, "info", root)
    expect(1, "info", tmp_path / "nowhere")
    expect(2, "info")

    expect(0, "verify", root, "--no-recall")
    expect(2, "verify", root, "--no-such-flag")

    expect(0, "remove", root, "--identity", "b-subject-0", "--quiet")
    expect(1, "remove", root, "--identity", "nobody", "--quiet")
    expect(2, "remove")

    expect(1, "erase-status", root)  # b0 is still in the kept versions before the removal
    expect(1, "erase-status", root, "nobody")  # not erased
    expect(2, "erase-status")

    expect(0, "rollback", root)
    expect(0, "rollback", root, "--to", "v000003")
    expect(1, "rollback", root, "--to", "v000099")
    expect(2, "rollback")

    expect(1, "compact", root)  # no live journal
    journal = LiveJournal.open(root / "live", contract_id=CONTRACT, d=128)
    unit = np.zeros(128, np.float32)
    unit[0] = 1.0
    journal.enroll(LiveIdentity("live-1", 0, False, "Live", {}, 0.0, 0.0), [NewFace(unit, None, None, 0.9, 80, 50)])
    journal.close()
    out = expect(0, "compact", root, *FAST)  # publishes, and reports without a KeyError
    assert "live changes folded in" in out and "KeyError" not in out
    expect(0, "compact", root, *FAST)  # nothing left to compact
    expect(2, "compact")

    expect(0, "journal", "check", root)
    vectors = next((root / "live").glob("vectors-*"))
    raw = bytearray(vectors.read_bytes())
    raw[-5] ^= 0xFF  # inside the one record's embedding
    vectors.write_bytes(bytes(raw))
    expect(1, "journal", "check", root)
    expect(0, "journal", "repair", root)
    expect(0, "journal", "check", root)
    expect(2, "journal")

    expect(0, "prune", root, "--keep", "1")
    expect(2, "prune", root, "--keep", "0")
    with locked(root):
        expect(1, "prune", root, "--keep", "1")  # another job holds the root
    expect(0, "erase-status", root)  # the removal is complete now
    expect(0, "erase-status", root, "b-subject-0")

    expect(0, "unerase", root, "b-subject-0")
    expect(1, "unerase", root, "b-subject-0")  # no longer erased
    expect(2, "unerase", root)

    out = expect(0, "audit", "list", root, "--identity", "b-subject-0", "--json")  # its removal and unerase
    assert [json.loads(line)["operation"] for line in out.splitlines() if line.startswith("{")] == ["erase", "unerase"]
    assert "b-subject-0" not in out  # an erased identity's rows keep only its digest
    expect(0, "audit", "prune", root)
    expect(1, "audit", "list", tmp_path / "nowhere")  # no audit log
    expect(2, "audit", "list", root, "--since", "yesterday")
    expect(2, "audit")

    expect(1, "db", "status", "--store", pg_dsn)  # not migrated yet (helper E, issue 14)
    expect(0, "db", "migrate", "--store", pg_dsn)
    expect(0, "db", "status", "--store", pg_dsn)
    expect(2, "db", "status", "--store", "mysql://somewhere/db")  # not a PostgreSQL URL
    expect(2, "db")

    vdir = root / str(current_version(root))
    raw = bytearray((vdir / INDEX_FILE).read_bytes())
    raw[-9] ^= 0xFF
    (vdir / INDEX_FILE).write_bytes(bytes(raw))
    out = expect(1, "verify", root, "--no-recall")
    assert "sha256 differs" in out
    shutil.rmtree(tmp_path / "root2", ignore_errors=True)

    commands = set(parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert commands == set(SEEN), f"subcommands without exit-code cases: {sorted(commands - set(SEEN))}"
    for command, codes in SEEN.items():
        assert 0 in codes and 2 in codes, (command, codes)
