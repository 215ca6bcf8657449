"""Write (or, with ``--check``, verify) the index of each library subpackage.

Each ``facesearch/<package>/__init__.py`` is generated from the code: a docstring naming the
package's layer and listing its modules (their docstring's first paragraph) with the tests that
import them, then re-exports with ``__all__`` of the names that other packages, benchmarks and
tests import from the package's modules. Run it after adding, renaming or removing a module or a
cross-package import:

    .venv/bin/python scripts/gen_package_index.py          # rewrite the indexes
    .venv/bin/python scripts/gen_package_index.py --check  # exit 1 if any index is out of date

The output goes through ``ruff check --fix`` and ``ruff format`` with the project's settings, so
the committed files are exactly what this script writes.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUFF = Path(sys.executable).with_name("ruff")
USERS = ("facesearch", "server", "indexer", "export", "training", "bench", "tests")
LAYERS = (
    "apps > torch (nets) > eval (evaluation) > batch (jobs | client) > storage (store) > pipeline (vision) "
    "> models (bundle) > scores (scoring) > base (errors | util | api) > reasons"
)
#: package -> (what it holds, its layer)
PACKAGES = {
    "util": (
        "Filesystem primitives shared by every writer: the one atomic file writer, directory "
        "replacement and pointer switch, and file digests.",
        "base",
    ),
    "vision": (
        "The face pipeline: safe photo decoding and limits, the MMOD detector and its pyramid, "
        "5-point landmarks, chip alignment, the embedder, quality signals, and which face of a "
        "photo a caller takes.",
        "pipeline",
    ),
    "bundle": (
        "The model-bundle format (``manifest.json``, contract ids, the models it holds) and where "
        "commands find the bundle to use.",
        "models",
    ),
    "scoring": (
        "From similarities to decisions: normalised open-set scores, identity templates, the "
        "gallery cohort and its saved statistics, calibration tables, thresholds, and the one "
        "decision rule.",
        "scores",
    ),
    "store": (
        "What a published index version holds on disk and what the server adds to it: the index "
        "artifact, the identity store (the only SQL), the live journal, and the open-set build "
        "from a store.",
        "storage",
    ),
    "jobs": (
        "Long batch jobs over many photos: the one resumable sharded runner, image lists and "
        "photo inputs, and ``facesearch embed``.",
        "batch",
    ),
    "client": ("The Python client of the gRPC service (used by the ``facesearch`` CLI).", "batch"),
    "evaluation": (
        "Measuring models and decisions: LFW pairs, the 1:N open-set protocol, calibration "
        "measurement, model evaluation and promotion, DET plots, synthetic galleries.",
        "eval",
    ),
    "nets": (
        "Torch only: dlib's serialization readers, torch networks that compute what dlib's do, "
        "training backbones and the checkpoint format. Imported by ``export`` and ``training`` "
        "alone; serving and indexing never import torch.",
        "torch",
    ),
}


def _defined(tree: ast.Module) -> set[str]:
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)}
    for n in tree.body:
        targets = [n.target] if isinstance(n, ast.AnnAssign) else n.targets if isinstance(n, ast.Assign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _imported_from(package: str, package_dir: Path, modules: list[str]) -> dict[str, set[str]]:
    """Public names each module gives to code outside the package."""
    used: dict[str, set[str]] = {m: set() for m in modules}
    prefix = f"facesearch.{package}."
    for top in USERS:
        for path in sorted((ROOT / top).rglob("*.py")):
            if package_dir in path.parents or "api" in path.relative_to(ROOT).parts[:2]:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
                    module = node.module.split(".")[2]
                    if module in used:
                        used[module] |= {a.name for a in node.names if not a.name.startswith("_")}
    return used


def render(package: str) -> str:
    package_dir = ROOT / "facesearch" / package
    modules = sorted(p.stem for p in package_dir.glob("*.py") if p.stem != "__init__")
    trees = {m: ast.parse((package_dir / f"{m}.py").read_text()) for m in modules}
    used = _imported_from(package, package_dir, modules)
    tests = sorted((ROOT / "tests").rglob("test_*.py"))
    summary, layer = PACKAGES[package]
    lines = textwrap.wrap('"""' + summary, 100)
    lines += ["", *textwrap.wrap(f"Layer: {layer}. Layers, top to bottom: {LAYERS}.", 100), ""]
    lines += ["Modules (and the tests that cover them):", ""]
    for m in modules:
        doc = " ".join((ast.get_docstring(trees[m]) or "").split("\n\n")[0].split())
        covering = [
            str(t.relative_to(ROOT)) for t in tests if re.search(rf"facesearch\.{package}\.{m}\b", t.read_text())
        ]
        text = f"- ``{m}``: {doc}"
        text += (
            (" Tests: " + ", ".join(f"``{t}``" for t in covering) + ".") if covering else " Tests: through its callers."
        )
        lines += textwrap.wrap(text, 100, subsequent_indent="  ", break_on_hyphens=False)
    lines += ['"""', "", "from __future__ import annotations", ""]
    exported: list[str] = []
    for m in modules:
        names = sorted(n for n in used[m] if n in _defined(trees[m]) and n not in exported)
        if names:
            listed = names[0] if len(names) == 1 else "(" + "".join(f"{n}, " for n in names) + ")"
            lines.append(f"from facesearch.{package}.{m} import {listed}")
            exported += names
    lines += ["", "__all__ = [" + "".join(f'"{n}", ' for n in sorted(exported)) + "]", ""]
    return _ruff("\n".join(lines), package)


def _ruff(source: str, package: str) -> str:
    name = f"facesearch/{package}/__init__.py"
    fixed = subprocess.run(
        [str(RUFF), "check", "--fix", "--quiet", "--stdin-filename", name, "-"],
        input=source,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return subprocess.run(
        [str(RUFF), "format", "--quiet", "--stdin-filename", name, "-"],
        input=fixed,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed index differs from the code")
    args = ap.parse_args(argv)
    stale = []
    for package in PACKAGES:
        path = ROOT / "facesearch" / package / "__init__.py"
        text = render(package)
        if path.read_text() != text:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(text)
    if args.check and stale:
        print(f"gen_package_index: out of date: {', '.join(stale)} (run scripts/gen_package_index.py)", file=sys.stderr)
        return 1
    print(f"gen_package_index: {'rewrote ' + ', '.join(stale) if stale and not args.check else 'indexes up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
