"""ListIdentities page cost against the number of live identities (issue 13, item 8).

    .venv/bin/python -m bench.list_pages [--sizes 1000,10000,100000] [--pages 200] [--out bench/results/list_pages.md]

The live delta's identities (no published version, so the page is the live side alone) are loaded
into a real :class:`server.live_state.LiveState`; a page of 100 is asked for at seeded random
places. ``before`` is the listing as it was before this change (a copy of the identity dict and a
sort of every live id per page, reproduced here as the reference); ``after`` is
:meth:`server.gallery.GalleryState.list_page` (bisection into the ordered id list, one slice).
Both return the same pages (checked). Reported: median and p99 seconds per page, and the ratio,
measured in the same run on the same state, interleaved.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import machine, table
from facesearch.store.live_journal import JournalSnapshot, LiveIdentity
from server.gallery import GalleryState, IdentityView
from server.live_state import LiveState
from server.open_set_state import OpenSetState
from server.open_set_upkeep import OpenSetParams

D = 128
PAGE = 100


def state_with(n: int) -> GalleryState:
    live = LiveState(D, lambda ids: set(), lambda vid: False, lambda vid: None)
    now = time.time()
    rows = [LiveIdentity(f"person-{i:08d}", i + 1, i % 10 == 0, None, {}, now, now) for i in range(n)]
    random.Random(1).shuffle(rows)
    live.load(JournalSnapshot("bench", n, rows, [], np.zeros((0, D), np.float32), []))
    return GalleryState(None, live, OpenSetState(OpenSetParams().empty(D)))


def before(state: GalleryState, after: str, limit: int) -> list[str]:
    """The listing's live side as it was: copy the rows, sort every alive id after the token."""
    live_rows = dict(state.live.identities)
    alive = sorted(i for i, row in live_rows.items() if not row.deleted and i > after)[: limit + 1]
    return alive[:limit]


def after_(state: GalleryState, after: str, limit: int) -> list[str]:
    page: list[IdentityView]
    page, _ = state.list_page(after, limit)
    return [v.identity_id for v in page]


def measure(n: int, pages: int) -> list[str]:
    state = state_with(n)
    rng = random.Random(2)
    tokens = [f"person-{rng.randrange(n):08d}" for _ in range(pages)]
    t_before, t_after = [], []
    for token in tokens:  # interleaved: the machine's load moves both alike
        t0 = time.perf_counter()
        old = before(state, token, PAGE)
        t1 = time.perf_counter()
        new = after_(state, token, PAGE)
        t2 = time.perf_counter()
        assert old == new, (token, old[:3], new[:3])
        t_before.append(t1 - t0)
        t_after.append(t2 - t1)

    def p99(xs: list[float]) -> float:
        return sorted(xs)[min(len(xs) - 1, int(0.99 * len(xs)))]

    mb, ma = statistics.median(t_before), statistics.median(t_after)
    return [
        f"{n:,}",
        f"{mb * 1e3:.2f}",
        f"{p99(t_before) * 1e3:.2f}",
        f"{ma * 1e3:.3f}",
        f"{p99(t_after) * 1e3:.3f}",
        f"{mb / ma:.1f}x" if mb / ma < 10 else f"{mb / ma:.0f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/list_pages.md"))
    args = parser.parse_args()
    rows = [measure(int(n), args.pages) for n in args.sizes.split(",")]
    header = ["live identities", "before p50 ms", "before p99 ms", "after p50 ms", "after p99 ms", "p50 ratio"]
    text = (
        "# ListIdentities page cost vs live identities\n\n"
        f"Command: `.venv/bin/python -m bench.list_pages --sizes {args.sizes} --pages {args.pages}`\n\n"
        f"Machine: {machine()} (shared, noisy). Page size {PAGE}, {args.pages} pages at seeded random "
        "places per size, before/after interleaved on the same state; every page checked equal. "
        "10% of the live rows are deletions (skipped by both).\n\n"
        + table(rows, header)
        + "\n\n`before`: a copy of the live identity dict and a sort of every live id after the token, per page "
        "(the code before this change). `after`: `GalleryState.list_page` (bisection into "
        "`LiveState.ordered_ids`, kept sorted as identities are added, and one slice), which also builds the "
        "page's views (names, face counts): the reference leaves that out, so `before` is a lower bound of the "
        "old cost. The cost no longer grows with the number of live identities, only with the page.\n"
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
