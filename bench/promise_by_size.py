"""What the default Identify decision promises at each gallery size, before and after issue 11.5.

For each gallery size N the table gives the default threshold (score, value), the
per-comparison FMR and the FPIR at N it stands for, and the true-accept rate of genuine pairs
at that threshold (raw cosine only: read off the TAR column of ``calibration.json``, i.e.
lfw-dev's 8,004 genuine pairs, interpolated linearly in the cosine; in-sample for the shipped
calibration). A normalised threshold has no pairs TAR: its miss rate is the open-set FNIR of
``bench/results/open_set.md``.

- *before*: the rule until issue 11.5: below the open-set calibration's range the raw
  calibration's default FMR held per comparison (so FPIR = 1 - (1 - FMR)^N grows with N),
  from it the open-set default FPIR on the normalised score. Computed here with the same
  calibrations (``resolve_threshold`` at ``max_fmr=default_fmr`` below the range).
- *after*: :class:`facesearch.scoring.thresholds.ThresholdPolicy`'s default, as the server
  applies it (GetStats' ``default_threshold``).

The calibrations are read from a directory holding ``calibration.json`` and
``open_set_calibration.json``: a model bundle, or the shipped ones in ``export/calibrations``
(what ``facesearch-export dlib`` installs into the default bundle).

    nice -n 10 .venv/bin/python -m bench.promise_by_size [--calibrations DIR] [--sizes 1,3,...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.common import REPO, table
from facesearch.scoring.calibration import Calibration
from facesearch.scoring.decision import DecisionThreshold, ScoreKind
from facesearch.scoring.open_set_calibration import load_open_set_calibration
from facesearch.scoring.thresholds import ThresholdPolicy, ThresholdRequest

SHIPPED = REPO / "export" / "calibrations" / "dlib-flip-average"
SIZES = (1, 3, 10, 50, 127, 128, 1000)
UNMEASURED = 5000  # FPIR 1% needs FMR 2e-6 here: below the shipped calibration.json's 3e-6


def tar_at(raw: Calibration, threshold: float) -> float | None:
    """Genuine pairs accepted at a raw cosine ``threshold`` (None outside the table's range)."""
    xs = np.array([p.threshold for p in raw.points])
    if not xs[0] <= threshold <= xs[-1]:
        return None
    return float(np.interp(threshold, xs, [p.tar for p in raw.points]))


def cells(t: DecisionThreshold, raw: Calibration) -> list[str]:
    tar = tar_at(raw, t.value) if t.score_kind is ScoreKind.RAW else None
    return [
        f"{t.score_kind} {t.value:.4f}",
        f"{t.fmr:.2g}" if t.fmr is not None else "-",
        f"{t.fpir * 100:.3g}%" if t.fpir is not None else "-",
        f"{tar * 100:.1f}%" if tar is not None else "-",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibrations", type=Path, default=SHIPPED, help="directory with the two calibration files")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="gallery sizes, comma-separated")
    args = ap.parse_args(argv)
    raw = Calibration.from_dict(json.loads((args.calibrations / "calibration.json").read_text()))
    open_set = load_open_set_calibration(args.calibrations)
    if open_set is None:
        raise SystemExit(f"no open_set_calibration.json in {args.calibrations}")
    policy = ThresholdPolicy(raw, open_set)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        after = policy.identify(ThresholdRequest(), n)
        before = (
            policy.identify(ThresholdRequest(), n)
            if n >= open_set.min_gallery
            else policy.identify(ThresholdRequest(max_fmr=raw.default_fmr), n)
        )
        rows.append([str(n), *cells(before, raw), *cells(after, raw)])
    print(f"calibrations: {args.calibrations} ({raw.source}; open-set default FPIR {open_set.default_fpir:g})")
    print(f"GetStats after: default_fpir {policy.default_fpir}, threshold_note: {policy.note}\n")
    head = ["threshold", "FMR", "FPIR at N", "TAR pairs"]
    print(table(rows, ["N", *(f"before: {h}" for h in head), *(f"after: {h}" for h in head)]))
    # the server's fallback when the gallery's normalised statistics are unavailable
    big = [n for n in (*SIZES, UNMEASURED) if n >= open_set.min_gallery]
    fallback = [
        [str(n), *cells(t, raw), t.reason]
        for n in big
        for t in [policy.identify(ThresholdRequest(), n, normalised=False)]
    ]
    print("\nafter, normalised scores unavailable (raw cosine at the same FPIR):\n")
    print(table(fallback, ["N", *head, "reason"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
