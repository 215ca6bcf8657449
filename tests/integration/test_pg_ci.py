"""The PostgreSQL tests cannot pass CI without running: with no PostgreSQL server binaries the
fixtures skip, and under ``CI=true`` (tests/conftest.py) that skip is a failure naming what is missing.

Runs pytest in a subprocess on a tiny suite (a copy of the real conftest, one test asking for
``pg_dsn``) with ``FACESEARCH_PG_BIN`` pointing at a folder without the binaries; then with the real
binaries, to show the same suite passes when PostgreSQL is there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg_fixtures import find_pg_bin

REPO = Path(__file__).resolve().parents[2]

USES_PG = """
from tests.pg_fixtures import *  # noqa: F403

def test_uses_postgresql(pg_dsn):
    assert pg_dsn.startswith("postgresql://")
"""


def _pytest(tmp_path: Path, *, ci: bool, pg_bin: str | None) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    shutil.copyfile(REPO / "tests" / "conftest.py", suite / "conftest.py")
    (suite / "test_tiny_pg.py").write_text(USES_PG)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "FACESEARCH_PG_BIN")}
    env["PYTHONPATH"] = str(REPO)
    if ci:
        env["CI"] = "true"
    if pg_bin is not None:
        env["FACESEARCH_PG_BIN"] = pg_bin
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:randomly", str(suite)]
    return subprocess.run(cmd, cwd=suite, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("ci", [False, True])
def test_a_missing_postgresql_skips_locally_and_fails_under_ci(tmp_path: Path, ci: bool) -> None:
    empty = tmp_path / "no-binaries"
    empty.mkdir()
    done = _pytest(tmp_path, ci=ci, pg_bin=str(empty))
    out = done.stdout + done.stderr
    assert "PostgreSQL server binaries not found" in out
    if ci:
        # the fixture's skip happens in setup, so pytest counts the failure as an error
        assert done.returncode == 1 and "1 error" in out and "CI=true: a skip is a failure" in out
    else:
        assert done.returncode == 0 and "1 skipped" in out


def test_the_same_suite_passes_with_postgresql(tmp_path: Path) -> None:
    found = find_pg_bin()
    if found is None:
        pytest.skip("PostgreSQL server binaries not found (initdb, pg_ctl)")
    done = _pytest(tmp_path, ci=True, pg_bin=str(found))
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr
