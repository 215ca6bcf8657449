"""Open-set identification on lfw-dev with the detection cascade vs the budgeted scan, same bundle.

Two subcommands:

``compare``: reads two embedding caches of ``bench/open_set_faces.py`` (one per detector mode, same
bundle) and prints, per mode, the headline numbers of ``bench/open_set.py`` (section 1's table, the
leave-one-out FNIR at k=4, the held-out calibration check with ``--splits`` identity halves), the
shipped bundle calibration applied to the full protocol, a paired bootstrap of the FNIR difference
(cascade - budget, the same searches resampled for both) and how the per-photo faces differ.

``latency``: whole analysis (decode + detect + landmarks + embed) through ``FacePipeline`` in this
process for LFW originals, composed 1080p frames and 12 MP photos (``bench/photo_compose.py``),
budget and cascade interleaved per photo, p50; plus planted faces found.

    .venv/bin/python -m bench.open_set_faces /tmp/os_budget.npz --bundle DIR --detector budget
    .venv/bin/python -m bench.open_set_faces /tmp/os_cascade.npz --bundle DIR --detector cascade
    .venv/bin/python -m bench.cascade_open_set compare --bundle DIR \
        --cache budget=/tmp/os_budget.npz --cache cascade=/tmp/os_cascade.npz [--splits 20]
    .venv/bin/python -m bench.cascade_open_set latency --bundle DIR [--per-kind lfw=12,frame1080=4,phone12=4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import data_dir, machine, table
from bench.open_set import Faces, classic_as_norm, load_faces, pct, row, run_split, split_people, summary
from bench.open_set import honesty as held_out
from facesearch.evaluation.ident import Searches, fnir_at, fpir_at, threshold_at_fpir
from facesearch.scoring.normalise import DEFAULT_K
from facesearch.scoring.open_set_calibration import load_open_set_calibration, resolve_threshold

MODES = ("budget", "cascade")


def _protocol(faces: Faces) -> dict[str, Searches]:
    spec = split_people(faces)
    plain = run_split(faces, faces.plain, spec, k=DEFAULT_K)
    flip = run_split(faces, faces.flip, spec, k=DEFAULT_K)
    return {
        "raw cosine (dlib-equivalent)": plain.raw,
        "raw cosine + flip": flip.raw,
        "classic AS-norm k=50 (mean+std)": classic_as_norm(faces, faces.plain, spec, 50),
        f"facesearch normalised k={DEFAULT_K}": plain.normalised,
        f"facesearch normalised k={DEFAULT_K} + flip": flip.normalised,
    }


def _fnir1(s: Searches, ix: np.ndarray) -> float:
    sub = Searches(s.mated[ix], s.mate_rank[ix], s.top_score[ix])
    return fnir_at(sub, threshold_at_fpir(sub.top_score[~sub.mated], 0.01))


def paired_diff(a: Searches, b: Searches, reps: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """FNIR@FPIR1%(b) - FNIR@FPIR1%(a) and its 95% interval, the same searches resampled for both."""
    assert np.array_equal(a.mated, b.mated)
    rng = np.random.default_rng(seed)
    mated, nonmated = np.flatnonzero(a.mated), np.flatnonzero(~a.mated)
    every = np.arange(len(a.mated))
    diffs = []
    for _ in range(reps):
        ix = np.r_[rng.choice(mated, len(mated)), rng.choice(nonmated, len(nonmated))]
        diffs.append(_fnir1(b, ix) - _fnir1(a, ix))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return _fnir1(b, every) - _fnir1(a, every), float(lo), float(hi)


def compare(args: argparse.Namespace) -> None:
    caches = dict(item.split("=", 1) for item in args.cache)
    faces = {m: load_faces(Path(caches[m]), 2) for m in MODES}
    a, b = faces["budget"], faces["cascade"]
    print(f"# cascade vs budget open-set, {machine()}")
    # faces per photo
    both = a.found & b.found
    cos = np.sum(a.plain[both] * b.plain[both], axis=1)
    print(
        table(
            [
                ["photos", str(len(a.paths))],
                ["face found: budget / cascade", f"{int(a.found.sum())} / {int(b.found.sum())}"],
                [
                    "found by budget only / cascade only",
                    f"{int((a.found & ~b.found).sum())} / {int((~a.found & b.found).sum())}",
                ],
                ["cosine budget vs cascade embedding, median", f"{np.median(cos):.4f}"],
                [
                    "  photos with cosine < 0.99 / < 0.95 / < 0.8",
                    f"{int((cos < 0.99).sum())} / {int((cos < 0.95).sum())} / {int((cos < 0.8).sum())}",
                ],
            ],
            ["per-photo faces", "value"],
        )
    )
    for path, c in sorted(zip(np.array(a.paths)[both], cos, strict=True), key=lambda x: x[1])[:5]:
        print(f"  lowest cosine: {c:.3f} {Path(path).parent.name}/{Path(path).name}")
    for path in np.array(a.paths)[a.found != b.found]:
        print(f"  found differs: {Path(path).parent.name}/{Path(path).name}")
    print()
    # 1. the protocol
    prot = {m: _protocol(faces[m]) for m in MODES}
    rows = []
    for name in prot["budget"]:
        for m in MODES:
            rows.append(row(f"{name} [{m}]", summary(prot[m][name])))
    print("## 1. protocol (gallery 417, 1529 mated, 1036 non-mated)")
    print(table(rows, ["scoring [detector]", "rank-1", "rank-5", "FNIR @ FPIR 1%", "FNIR @ FPIR 0.1%"]))
    print()
    drows = []
    for name in (
        "raw cosine (dlib-equivalent)",
        f"facesearch normalised k={DEFAULT_K}",
        f"facesearch normalised k={DEFAULT_K} + flip",
    ):
        d, lo, hi = paired_diff(prot["budget"][name], prot["cascade"][name])
        drows.append([name, f"{d * 100:+.2f} pt", f"{lo * 100:+.2f} .. {hi * 100:+.2f} pt"])
    print("## paired bootstrap (1000 resamples of searches): FNIR@FPIR1% cascade - budget")
    print(table(drows, ["scoring", "difference", "95% interval"]))
    print()
    # leave-one-out non-mated searches (steadier), k=4
    lrows = []
    for m in MODES:
        scored = run_split(faces[m], faces[m].plain, split_people(faces[m]), k=DEFAULT_K, loo=True)
        r, n = summary(scored.raw), summary(scored.normalised)
        lrows.append([m, pct(r["fnir@1%"]), pct(r["fnir@0.1%"]), pct(n["fnir@1%"]), pct(n["fnir@0.1%"])])
    print("## leave-one-out non-mated searches added (k=4)")
    print(table(lrows, ["detector", "raw @1%", "raw @0.1%", "normalised @1%", "normalised @0.1%"]))
    print()
    # the shipped bundle's calibration on the full protocol (calibrated on lfw-dev budget embeddings)
    cal = load_open_set_calibration(args.bundle)
    srows = []
    for m in MODES:
        scored = run_split(faces[m], faces[m].plain, split_people(faces[m]), k=DEFAULT_K)
        for fpir in (0.01, 0.001):
            th = resolve_threshold(cal, None, gallery_size=scored.gallery_size, max_fpir=fpir)
            s = scored.normalised
            srows.append([m, pct(fpir, 1), f"{th.score:.4f}", pct(fpir_at(s, th.score), 2), pct(fnir_at(s, th.score))])
    print("## shipped bundle calibration applied (in-sample for budget: calibrated on lfw-dev budget embeddings)")
    print(table(srows, ["detector", "asked FPIR", "threshold", "achieved FPIR", "FNIR"]))
    print()
    # held-out: calibrate on half the identities, check on the other half
    hrows = []
    for m in MODES:
        start = time.perf_counter()
        h = held_out(faces[m], faces[m].plain, args.splits, DEFAULT_K)
        for key in ("facesearch|full|0.01", "facesearch|full|0.001", "raw|full|0.01"):
            v = h[key]
            assert isinstance(v, dict)
            lo, hi = v["ci95"]
            hrows.append(
                [
                    m,
                    key,
                    pct(v["achieved"], 2),
                    f"{pct(lo, 2)}-{pct(hi, 2)}",
                    f"{v['events']}/{v['searches']}",
                    pct(v["fnir_mean"]),
                ]
            )
        print(f"  held-out {m}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"## held-out calibration ({args.splits} identity halves: calibrate on A, search B with its full gallery)")
    print(table(hrows, ["detector", "scoring|gallery|asked FPIR", "achieved FPIR", "95% CI", "events", "FNIR mean"]))


def latency(args: argparse.Namespace) -> None:
    from bench.photo_compose import PHOTO_KINDS, FaceSource, compose, match_boxes
    from facesearch.bundle.manifest import ModelBundle
    from facesearch.vision.decode import decode_image
    from facesearch.vision.pipeline import DetectorMode, FacePipeline, PipelineConfig

    bundle = ModelBundle.load(args.bundle)
    pipes = {m: FacePipeline(bundle, PipelineConfig(threads=1, detector_mode=DetectorMode(m))) for m in MODES}
    pool = [FaceSource(p.parent.name, p) for p in sorted((data_dir() / "lfw-dev" / "images").glob("*/*_0001.jpg"))]
    plan = [(k, int(n)) for k, n in (item.split("=") for item in args.per_kind.split(","))]
    rows = []
    for kind, count in plan:
        times: dict[str, list[float]] = {m: [] for m in MODES}
        found = dict.fromkeys(MODES, 0)
        faces_out = dict.fromkeys(MODES, 0)
        planted_n = 0
        for index in range(count):
            data, planted = compose(PHOTO_KINDS[kind], index, pool, args.seed)
            planted_n += len(planted)
            for m in MODES:
                pipes[m].analyze(decode_image(data))  # warm-up for this photo size
            for _ in range(args.reps):
                for m in MODES:  # interleaved
                    t = time.perf_counter()
                    result = pipes[m].analyze(decode_image(data))
                    times[m].append(time.perf_counter() - t)
            for m in MODES:
                result = pipes[m].analyze(decode_image(data))
                faces_out[m] += len(result)
                matched = match_boxes([f.box for f in planted], [f.box for f in result])
                found[m] += sum(j is not None for j in matched)
        p50 = {m: float(np.median(times[m])) * 1000 for m in MODES}
        rows.append(
            [
                kind,
                str(count),
                f"{p50['budget']:.1f}",
                f"{p50['cascade']:.1f}",
                f"{p50['budget'] / p50['cascade']:.2f}x",
                f"{found['budget']}/{planted_n} ({faces_out['budget']})",
                f"{found['cascade']}/{planted_n} ({faces_out['cascade']})",
            ]
        )
        print(rows[-1], flush=True)
    print(f"# whole analysis latency, {machine()}, seed {args.seed}, {args.reps} timed runs per photo and mode")
    print(
        table(
            rows,
            [
                "kind",
                "photos",
                "budget p50 ms",
                "cascade p50 ms",
                "budget / cascade",
                "planted found budget (faces out)",
                "planted found cascade (faces out)",
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--bundle", type=Path, required=True)
    c.add_argument("--cache", action="append", required=True, help="MODE=PATH, for budget and cascade")
    c.add_argument("--splits", type=int, default=20)
    c.set_defaults(fn=compare)
    lat = sub.add_parser("latency")
    lat.add_argument("--bundle", type=Path, required=True)
    lat.add_argument("--per-kind", default="lfw=12,frame1080=4,phone12=4")
    lat.add_argument("--reps", type=int, default=3)
    lat.add_argument("--seed", type=int, default=11)
    lat.set_defaults(fn=latency)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
