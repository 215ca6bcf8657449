"""Replacing a whole directory (a model bundle) so that readers see the old one or the new one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_dir(staged: Path, target: Path) -> None:
    """Move the fully written ``staged`` directory to ``target``, replacing any ``target`` there.

    An existing target is first renamed aside (``<name>.old``), so ``target`` is only ever absent
    for the moment between two renames on one file system, never half written; the old copy is
    deleted afterwards.
    """
    if not target.exists():
        os.replace(staged, target)
        return
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)
