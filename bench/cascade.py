"""The detection cascade (BlazeFace proposals confirmed by MMOD) against today's budgeted MMOD scan, same run.

Photos are composed from lfw-dev faces by ``bench/photo_compose.py`` (LFW originals, 1080p frames
with small faces, group photos, 12 MP phone photos, selfies; seed :data:`SEED`). For each photo,
in one process with one onnxruntime thread per session, alternating the modes:

- ``budget``: ``PipelineConfig()`` with ``detector_mode=budget`` (the default until this bench);
- ``cascade``: ``detector_mode=cascade``.

Per kind: ``detect`` latency p50 (first call a warm-up, then best of 2) and the ratio budget / cascade; recall of
the planted faces by height bucket (IoU >= 0.3, ``photo_compose.match_boxes``); for the cascade,
how many photos fell back to the scan (no proposal confirmed) and the recall of BlazeFace's
proposals alone. ``analyze`` (detect + landmarks + embed) on the LFW originals is timed too.

    nice -n 10 .venv/bin/python -m bench.cascade --bundle DIR [--per-kind lfw=10,frame1080=3,...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from bench.common import REPO, data_dir, machine, table
from bench.photo_compose import PHOTO_KINDS, FaceSource, compose, match_boxes
from facesearch.bundle.manifest import ModelBundle
from facesearch.vision.decode import decode_image
from facesearch.vision.pipeline import DetectorMode, FacePipeline, PipelineConfig

T = TypeVar("T")
SEED = 11
EDGES = (0, 40, 60, 80, 120, 200, 10_000)
DEFAULT_PER_KIND = "lfw=10,frame1080=3,group=2,phone12=2,selfie=2"
MODES = (DetectorMode.BUDGET, DetectorMode.CASCADE)


def _bucket(h: float) -> int:
    return int(np.searchsorted(EDGES, h, side="right")) - 1


def _label(k: int) -> str:
    hi = EDGES[k + 1]
    return f"{EDGES[k]}+ px" if hi >= 10_000 else f"{EDGES[k]}-{hi} px"


def _best_of(fn: Callable[[], T], reps: int = 2) -> tuple[float, T]:
    best, out = float("inf"), fn()
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--per-kind", default=DEFAULT_PER_KIND)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cascade.md")
    args = parser.parse_args()
    plan = [(k, int(n)) for k, n in (item.split("=") for item in args.per_kind.split(","))]
    bundle = ModelBundle.load(args.bundle)
    pipes = {m: FacePipeline(bundle, PipelineConfig(threads=1, detector_mode=m)) for m in MODES}
    cascade = pipes[DetectorMode.CASCADE]
    pool = [FaceSource(p.parent.name, p) for p in sorted((data_dir() / "lfw-dev" / "images").glob("*/*_0001.jpg"))]
    speed_rows, recall_rows = [], []
    analyze: dict[DetectorMode, list[float]] = {m: [] for m in MODES}
    for kind, count in plan:
        times: dict[DetectorMode, list[float]] = {m: [] for m in MODES}
        hits = {m: np.zeros(len(EDGES)) for m in (*MODES, "proposals")}
        total = np.zeros(len(EDGES))
        fallbacks = 0
        for index in range(count):
            data, faces = compose(PHOTO_KINDS[kind], index, pool, SEED)
            image = decode_image(data)
            planted = [f.box for f in faces]
            for f in faces:
                total[_bucket(f.height)] += 1
            for m in MODES:
                seconds, found = _best_of(partial(pipes[m].detect, image))
                times[m].append(seconds)
                for f, j in zip(faces, match_boxes(planted, [d.box for d in found]), strict=True):
                    hits[m][_bucket(f.height)] += j is not None
                if kind == "lfw":
                    analyze[m].append(_best_of(partial(pipes[m].analyze, image))[0])
            plan_ = cascade.plan(image.shape[1], image.shape[0])
            min_face = min(float(cascade.config.min_face), plan_.min_face)
            fallbacks += not cascade.detect_cascade(image, min_face)
            proposals = cascade.propose(image, min_face)
            for f, j in zip(faces, match_boxes(planted, [p.box for p in proposals]), strict=True):
                hits["proposals"][_bucket(f.height)] += j is not None
        p50 = {m: float(np.median(times[m])) * 1000 for m in MODES}
        speed_rows.append(
            [
                kind,
                str(count),
                f"{p50[DetectorMode.BUDGET]:.1f}",
                f"{p50[DetectorMode.CASCADE]:.1f}",
                f"{p50[DetectorMode.BUDGET] / p50[DetectorMode.CASCADE]:.2f}x",
                f"{fallbacks}/{count}",
            ]
        )
        for k in range(len(EDGES) - 1):
            if total[k]:
                recall_rows.append(
                    [kind, _label(k)] + [f"{int(hits[m][k])}/{int(total[k])}" for m in (*MODES, "proposals")]
                )
        print(speed_rows[-1], flush=True)
    lines = [
        "# Detection cascade vs the budgeted MMOD scan",
        "",
        "```",
        f"nice -n 10 .venv/bin/python -m bench.cascade --bundle DIR --per-kind {args.per_kind}",
        "```",
        "",
        f"Machine: {machine()} (shared with other jobs: compare the ratios, measured in the same run). "
        f"Composed photos, seed {SEED}; one onnxruntime thread per session; first call a warm-up, "
        "then best of 2, p50 over photos.",
        "",
        "## detect latency (ms, p50)",
        "",
        table(speed_rows, ["kind", "photos", "budget", "cascade", "budget / cascade", "cascade fell back"]),
        "",
    ]
    if analyze[DetectorMode.BUDGET]:
        a = {m: float(np.median(analyze[m])) * 1000 for m in MODES}
        lines += [
            f"`analyze` (detect + landmarks + embed, flip-averaged) on the LFW originals: budget "
            f"{a[DetectorMode.BUDGET]:.1f} ms, cascade {a[DetectorMode.CASCADE]:.1f} ms "
            f"({a[DetectorMode.BUDGET] / a[DetectorMode.CASCADE]:.2f}x).",
            "",
        ]
    lines += [
        "## planted faces found, by face height",
        "",
        table(recall_rows, ["kind", "face height", "budget", "cascade", "BlazeFace proposals alone"]),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
