"""The architecture rules of ``pyproject.toml`` ([tool.importlinter]) hold, and each one fails
when it is broken: a copy of the source tree gets one planted violation and ``lint-imports``
must reject it, naming the contract. Also: no module imports another module's ``_private``
names (tests excepted).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("facesearch", "server", "indexer", "export", "training")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy_tree(dest: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_tree(tmp_path_factory.mktemp("arch") / "clean")


def test_the_tree_keeps_every_contract(clean_copy: Path) -> None:
    result = _lint(clean_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


PLANTS = {
    # contract name as lint-imports prints it -> (file, line planted in it)
    "Apps never import one another": ("server/planted.py", "import indexer.main\n"),
    "Library layers import downward only": (
        "facesearch/scoring/planted.py",
        "import facesearch.store.identity_store\n",
    ),
    "The library never imports an app": ("facesearch/store/planted.py", "import server.config\n"),
    "Torch, torchvision and onnx only in facesearch.nets, export and training": (
        "indexer/planted.py",
        "import torch\n",
    ),
}


@pytest.mark.parametrize("contract", sorted(PLANTS))
def test_a_planted_violation_breaks_its_contract(tmp_path: Path, contract: str) -> None:
    root = _copy_tree(tmp_path)
    rel, line = PLANTS[contract]
    (root / rel).write_text(f'"""A planted violation."""\n\n{line}')
    result = _lint(root)
    assert result.returncode != 0, result.stdout
    assert f"{contract} BROKEN" in result.stdout
    assert "1 broken" in result.stdout


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found += [f"{path}:{node.lineno}: {alias.name}" for alias in node.names if alias.name.startswith("_")]
    return found


def test_no_module_imports_private_names_of_another() -> None:
    sources = [p for name in (*PACKAGES, "bench") for p in (REPO / name).rglob("*.py") if "api" not in p.parts]
    offenders = [hit for p in sources for hit in _private_imports(p)]
    assert not offenders, "\n".join(offenders)


def test_the_private_name_check_sees_a_private_import(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("from facesearch.scoring.gallery_stats import _hidden\n")
    assert _private_imports(planted) == [f"{planted}:1: _hidden"]
