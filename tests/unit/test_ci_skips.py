"""Under ``CI=true`` a skip is a failure (``tests/conftest.py``); without it a skip stays a skip.

Each case runs pytest in a subprocess on a tiny suite in a temp folder that carries a copy of
the real ``tests/conftest.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SKIPS_IN_TEST = """
import pytest

def test_passes():
    pass

def test_needs_data():
    pytest.skip("no photos under /nowhere (set FACESEARCH_DATA)")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
"""

PASSES = """
def test_passes():
    pass
"""

SKIPS_ON_IMPORT = """
import pytest

pytest.importorskip("facesearch_no_such_module", reason="the missing extra")

def test_never_runs():
    pass
"""


def _pytest(tmp_path: Path, *sources: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir(parents=True)
    shutil.copyfile(CONFTEST, suite / "conftest.py")
    for i, source in enumerate(sources):
        (suite / f"test_tiny_{i}.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:randomly", str(suite)]
    return subprocess.run(cmd, cwd=suite, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("ci", [None, "false"])
def test_a_skip_is_a_skip_outside_ci(tmp_path: Path, ci: str | None) -> None:
    done = _pytest(tmp_path, SKIPS_IN_TEST, ci=ci)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped, 1 xfailed" in done.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_skip_fails_in_ci_with_its_reason(tmp_path: Path, ci: str) -> None:
    done = _pytest(tmp_path, SKIPS_IN_TEST, ci=ci)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed, 1 xfailed" in done.stdout  # an expected failure is not a skip
    assert "FAILED test_tiny_0.py::test_needs_data" in done.stdout
    assert "CI=true: a skip is a failure here" in done.stdout and "no photos under /nowhere" in done.stdout


def test_a_module_skipped_on_import_fails_in_ci(tmp_path: Path) -> None:
    quiet = _pytest(tmp_path / "local", PASSES, SKIPS_ON_IMPORT, ci=None)
    assert quiet.returncode == 0 and "1 passed, 1 skipped" in quiet.stdout, quiet.stdout + quiet.stderr
    loud = _pytest(tmp_path / "ci", PASSES, SKIPS_ON_IMPORT, ci="true")
    assert loud.returncode not in (0, 5), loud.stdout + loud.stderr
    assert "ERROR" in loud.stdout and "test_tiny_1.py" in loud.stdout
    assert "CI=true: a skip is a failure here" in loud.stdout and "the missing extra" in loud.stdout
