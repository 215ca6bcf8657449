"""The detector's work besides the network: dlib's upsampling and pyramid, before/after, same run.

For an LFW photo (250x250), the same photo enlarged to 640x480, and a 1080p frame's budgeted scan
copy (2149x1209, :mod:`facesearch.vision.detection_plan`), times what the detector does around its
network: ``pyramid_up`` (the 2x upsampling of an exact plan), the exact pyramid tensor
(bit-exact dlib), and the fast pyramid (OpenCV, used for scaled copies), with the pyramid module
as it is now ("after") and as it was at ``--reference`` ("before", read from git), interleaved
round by round on the same arrays, and checks that both give bit-identical tensors. The network's
time on the same tensor (onnxruntime, 1 thread) is measured in the same rounds, for the share.

    .venv/bin/python -m bench.pyramid_speed --bundle DIR
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np

from bench.common import REPO, lfw_images, machine, table
from facesearch.bundle.manifest import ModelBundle
from facesearch.vision import pyramid as after_module
from facesearch.vision.decode import DecodeLimits, load_image
from facesearch.vision.pipeline import FacePipeline, PipelineConfig, scan_copy

#: The commit before the blocked, gather-once exact resize.
REFERENCE = "e06d8f2"


def _reference_module(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:facesearch/vision/pyramid.py"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("pyramid_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:facesearch/vision/pyramid.py", "exec"), module.__dict__)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO / ".facesearch" / "models" / "dlib")
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", default=REFERENCE)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pyramid_speed.md")
    args = parser.parse_args(argv)
    before = _reference_module(args.reference)
    pipe = FacePipeline(ModelBundle.load(args.bundle), PipelineConfig(threads=1))
    det, cfg = pipe.detector, pipe.detector.config
    photos = [load_image(p, DecodeLimits()) for p in lfw_images(args.photos)]
    sizes = {"250x250 (LFW)": (250, 250), "640x480": (640, 480), "1920x1080 (scan copy)": (1920, 1080)}
    stages = ("upsample", "exact pyramid", "fast pyramid", "network")
    times: dict[tuple[str, str, str], list[float]] = {}
    mismatches = 0
    shapes: dict[str, str] = {}
    t_start = time.perf_counter()
    for label, (w, h) in sizes.items():
        plan = pipe.plan(w, h)
        for photo in photos:
            image = photo if (w, h) == (250, 250) else cv2.resize(photo, (w, h), interpolation=cv2.INTER_LINEAR)
            scan = image if plan.exact else scan_copy(image, plan)
            planes = np.ascontiguousarray(scan.transpose(2, 0, 1)[None])
            up = plan.upsample if plan.exact else 0
            shapes[label] = f"{scan.shape[1]}x{scan.shape[0]}, upsample {up}"
            for k in range(args.rounds):
                order = (before, after_module) if k % 2 == 0 else (after_module, before)
                got = {}
                for module in order:
                    name = "before" if module is before else "after"
                    upped = planes
                    t_up = 0.0
                    for _ in range(up):
                        src = upped
                        t0 = time.thread_time()
                        upped = module.pyramid_up_planes(src)
                        t_up += (time.thread_time() - t0) * 1e3
                    layout = after_module.tiled_pyramid_layout(
                        upped.shape[2], upped.shape[3], cfg.rate_down, cfg.padding, cfg.outer_padding
                    )
                    t0 = time.thread_time()
                    tensor = module.build_pyramid_tensor(upped, cfg.avg_rgb, layout)
                    t_exact = (time.thread_time() - t0) * 1e3
                    t0 = time.thread_time()
                    module.build_pyramid_tensor(upped, cfg.avg_rgb, layout, exact=False)
                    t_fast = (time.thread_time() - t0) * 1e3
                    times.setdefault((label, "upsample", name), []).append(t_up)
                    times.setdefault((label, "exact pyramid", name), []).append(t_exact)
                    times.setdefault((label, "fast pyramid", name), []).append(t_fast)
                    got[name] = (upped, tensor)
                fast_up = planes
                t0 = time.thread_time()
                for _ in range(up):
                    fast_up = after_module.pyramid_up_planes_fast(fast_up)
                times.setdefault((label, "fast upsample", "after"), []).append((time.thread_time() - t0) * 1e3)
                mismatches += not np.array_equal(got["before"][0], got["after"][0])
                mismatches += not np.array_equal(got["before"][1].view(np.int32), got["after"][1].view(np.int32))
                if k == 0:
                    prepared = det.prepare([scan], up, exact=True)
                    t0 = time.thread_time()
                    det.forward(prepared)
                    t_net = (time.thread_time() - t0) * 1e3
                    times.setdefault((label, "network", "after"), []).append(t_net)
                    times.setdefault((label, "network", "before"), []).append(t_net)
    rows = []
    for label in sizes:
        med = {(s, n): float(np.median(times[(label, s, n)])) for s in stages for n in ("before", "after")}
        for s in stages:
            b, a = med[(s, "before")], med[(s, "after")]
            ratio = "(same)" if s == "network" else (f"{a / b:.2f}" if b > 0 else "-")
            rows.append([label, s, f"{b:.1f}", f"{a:.1f}", ratio])
        fast_up_ms = float(np.median(times[(label, "fast upsample", "after")]))
        rows.append([label, "fast upsample (exact=False)", "-", f"{fast_up_ms:.1f}", "-"])
        for mode, pyr in (("exact (parity, and photos <= 0.65 MP)", "exact pyramid"), ("fast pyramid", "fast pyramid")):
            if mode.startswith("fast") and label != "1920x1080 (scan copy)":
                continue
            b = med[("upsample", "before")] + med[(pyr, "before")] + med[("network", "before")]
            a = med[("upsample", "after")] + med[(pyr, "after")] + med[("network", "after")]
            rows.append([label, f"sum, {mode}", f"{b:.1f}", f"{a:.1f}", f"{a / b:.2f}"])
        if label != "1920x1080 (scan copy)":  # the exact plan scanned the fast way (exact=False), vs before
            b = med[("upsample", "before")] + med[("exact pyramid", "before")] + med[("network", "before")]
            a = fast_up_ms + med[("fast pyramid", "after")] + med[("network", "after")]
            rows.append([label, "sum, exact plan scanned fast (exact=False)", f"{b:.1f}", f"{a:.1f}", f"{a / b:.2f}"])
    text = [
        "# Detector work besides the network: upsampling and pyramid, before/after, same run",
        "",
        f"Command: `.venv/bin/python -m bench.pyramid_speed --bundle BUNDLE --photos {args.photos} "
        f"--rounds {args.rounds}` (BUNDLE: `facesearch-export dlib --out BUNDLE`).",
        f"Machine: {machine()} (shared with other jobs). Took {time.perf_counter() - t_start:.0f} s.",
        "",
        f"Before: facesearch/vision/pyramid.py at {args.reference}; after: the working tree. Median ms over "
        f"{args.photos} LFW photos x {args.rounds} rounds, before and after alternating in each round on the "
        "same arrays; network: onnxruntime, 1 thread, once per photo on the same tensor (not changed). "
        "Times are CPU time of the calling thread (time.thread_time: on this shared machine wall time "
        "swings 2-5x with the other jobs; CPU time still varies some with them). "
        "Scans: " + "; ".join(f"{k}: {v}" for k, v in shapes.items()) + ".",
        "",
        table(rows, ["photo", "stage", "before ms", "after ms", "after / before"]),
        "",
        f"Tensors and upsampled images not bit-identical between before and after: {mismatches} (must be 0).",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
