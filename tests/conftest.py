"""Shared fixtures and the suite's rules.

Data: tests read photos and statistics from one data root, ``$FACESEARCH_DATA`` or, when that is
unset, the small fixture set committed in ``tests/data`` (what it holds and how it was chosen:
``tests/data/README.md``), so a fresh clone runs every test. The session sets
``FACESEARCH_DATA`` to that default, so library code that reads the variable
(``facesearch.evaluation.synthetic.default_model_path``) and the processes tests start see the same
root. Benchmarks read ``../shared/data`` (``bench/common.py``), never ``tests/data``.

CI: when ``CI=true`` (or ``1``) a skip is a failure: a test that skips (missing data, a missing
extra, a missing tool) fails with the skip's reason, and a module that skips on import is a
collection error, so CI cannot go green on a suite that did not run.

Order: no test may depend on another's side effects. pytest-randomly (test extra) shuffles the
order on every run; the seed is printed at the end (also under ``-q``): ``--randomly-seed=N``
repeats that order, ``-p no:randomly`` runs in file order.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE_DATA = REPO / "tests" / "data"
os.environ.setdefault("FACESEARCH_DATA", str(FIXTURE_DATA))


def data_dir() -> Path:
    """The tests' data root: ``$FACESEARCH_DATA``, by default ``tests/data``."""
    return Path(os.environ.get("FACESEARCH_DATA", FIXTURE_DATA))


def ci_forbids_skips() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1"}


def _skip_to_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip report into a failure that keeps the skip's reason (its longrepr is
    ``(path, line, "Skipped: reason")``)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr
    report.outcome = "failed"
    report.longrepr = f"CI=true: a skip is a failure here. {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if ci_forbids_skips() and report.skipped and not hasattr(report, "wasxfail"):
        _skip_to_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if ci_forbids_skips() and report.skipped:
        _skip_to_failure(report)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if config.pluginmanager.has_plugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(f"test order: shuffled with --randomly-seed={seed} (-p no:randomly: file order)")


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    root = data_dir() / "lfw-dev"
    if not (root / "images").is_dir():
        pytest.skip(f"LFW dev data not found at {root} (tests/data/lfw-dev is committed; FACESEARCH_DATA overrides it)")
    return root


@pytest.fixture(scope="session")
def lfw_images(lfw_dir: Path) -> list[Path]:
    """A deterministic sample of 24 LFW images (every Nth of the sorted list)."""
    paths = sorted((lfw_dir / "images").glob("*/*.jpg"))
    step = max(1, len(paths) // 24)
    return paths[::step][:24]


@pytest.fixture(scope="session")
def group_photos(lfw_dir: Path) -> list[Path]:
    """LFW photos showing several faces (the pipeline finds 2+ at min_face 80): ``tests/data/group_photos.txt``."""
    names = (FIXTURE_DATA / "group_photos.txt").read_text().split()
    return [lfw_dir / "images" / name for name in names]


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dlib models exported by our own export code (needs the export extra)."""
    pytest.importorskip("torch", reason="exporting the models needs the export extra (torch)")
    from export.bundle_writer import DlibExportConfig, write_dlib_bundle

    out = tmp_path_factory.mktemp("bundle") / "dlib"
    write_dlib_bundle(DlibExportConfig(out=out))
    return out


@pytest.fixture(scope="session")
def dlib_models_dir() -> Path:
    from facesearch.errors import ModelFormatError

    try:
        from facesearch.nets.dlib_sources import default_models_dir

        return default_models_dir()
    except (ImportError, ModelFormatError) as err:
        pytest.skip(f"dlib model files unavailable: {err}")
