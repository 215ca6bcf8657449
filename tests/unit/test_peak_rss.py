"""``indexer.sizes.peak_rss`` is the job's own high-water mark, not its parent's.

``getrusage``'s ``ru_maxrss`` survives ``execve``, so a job started by a large process (the test
runner here) would report the parent's peak; the indexer records peak RSS in every manifest and
checks it against ``--memory-budget``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_child_reports_its_own_peak_not_its_parents() -> None:
    ballast = bytearray(400 << 20)
    for i in range(0, len(ballast), 4096):  # touch every page: resident, not just reserved
        ballast[i] = 1
    code = (
        "import resource; from indexer.sizes import peak_rss; "
        "print(peak_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    own, inherited_kb = int(out[0]), int(out[1])
    assert own < 200 << 20  # the child imported a little; it never held the parent's 400 MB
    assert inherited_kb * 1024 > own  # what ru_maxrss would have reported instead
    del ballast
