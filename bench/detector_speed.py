"""The int8 MMOD detector against the float one (exact dlib parity), same run: speed and agreement.

Speed, in ms per photo, at the default minimum face (40 px, so upsample 1): the network alone
(``forward``) and the whole detection (``detect``: pyramid, network, decoding), on LFW photos
(250x250) and on 640x480 and 1920x1080 photos composed of LFW photos; then onnxruntime session
settings (threads, spinning, execution mode, graph optimisation level, the NHWC transformer) on
the network alone. Rounds are interleaved (every variant once per round) and the fastest round
reported, as a ratio against the float detector with facesearch's settings
(:func:`facesearch.vision.onnx_session.create_session`) measured in the same round.

Agreement, on photos the int8 ranges were not measured on: for each face the float detector
finds, whether the int8 detector finds it (IoU >= 0.5), how close the box is, and the score
difference; plus faces only the int8 detector finds. On lfw-dev photos at upsample 0 and 1, and on
composed group photos (several LFW photos at random sizes on one canvas).

    nice -n 10 .venv/bin/python -m bench.detector_speed [--bundle DIR] [--out FILE]

DIR is a bundle exported with ``facesearch-export dlib --detector int8`` (it holds both models);
without it one is exported to a temporary folder first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from bench.common import data_dir, machine, table
from facesearch.bundle.manifest import DetectorVariant, ModelBundle
from facesearch.vision.decode import load_image
from facesearch.vision.detector import Detection, DetectorConfig, FaceDetector
from facesearch.vision.onnx_session import create_session

UPSAMPLE = 1  # the default minimum face, 40 px
SIZES = {"250x250": None, "640x480": (640, 480), "1920x1080": (1920, 1080)}


@dataclass(frozen=True, slots=True)
class Setting:
    """onnxruntime session options to measure, as changes to facesearch's own."""

    name: str
    threads: int = 2
    spinning: bool = False
    parallel: bool = False
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    disabled: tuple[str, ...] = ()

    def session(self, path: Path) -> ort.InferenceSession:
        if self.name == "facesearch":
            return create_session(path, intra_op_threads=self.threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 2 if self.parallel else 1
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = self.level
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        return ort.InferenceSession(
            str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=list(self.disabled)
        )


SETTINGS = (
    Setting("facesearch"),  # 2 intra-op threads, sequential, ENABLE_ALL, no spinning
    Setting("spinning threads", spinning=True),
    Setting("1 thread", threads=1),
    Setting("parallel execution, 2 inter-op", parallel=True),
    Setting("ENABLE_EXTENDED (no layout transforms)", level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
    Setting("NhwcTransformer disabled", disabled=("NhwcTransformer",)),
)


# --- photos ----------------------------------------------------------------------------------


def held_out_photos(bundle: ModelBundle) -> list[Path]:
    """lfw-dev photos the int8 ranges were not measured on, sorted."""
    root = data_dir() / "lfw-dev" / "images"
    calibration = bundle.section("detector")["quantization"]["ranges"]["calibration"]
    used = set(calibration["photos"])
    return [p for p in sorted(root.glob("*/*.jpg")) if p.relative_to(root).as_posix() not in used]


def compose(size: tuple[int, int], photos: list[Path], rng: np.random.Generator) -> np.ndarray:
    """LFW photos in the 200-px cells of a grid on a smooth canvas, each as large as its cell or smaller
    (down to half; faces ~40-90 px)."""
    width, height = size
    low = rng.integers(40, 200, size=(max(2, height // 120), max(2, width // 120), 3)).astype(np.uint8)
    canvas = Image.fromarray(low).resize((width, height), Image.Resampling.BILINEAR)
    cols, rows = max(1, width // 200), max(1, height // 200)
    cells = [(c, r) for r in range(rows) for c in range(cols)]
    for (c, r), path in zip(cells, photos, strict=False):
        side = int(rng.uniform(0.5, 1.0) * min(width // cols, height // rows))
        x = c * (width // cols) + int(rng.integers(0, width // cols - side + 1))
        y = r * (height // rows) + int(rng.integers(0, height // rows - side + 1))
        canvas.paste(Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BILINEAR), (x, y))
    return np.asarray(canvas)


# --- speed ---------------------------------------------------------------------------------------


def _ms_per_photo(fn: Callable[[np.ndarray], object], images: list[np.ndarray]) -> tuple[float, float]:
    """Wall and CPU (this process, all threads) milliseconds per photo. On a shared machine the CPU
    time counts the work done whatever the scheduling (the threads sleep, never spin, while waiting)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for im in images:
        fn(im)
    return 1000.0 * (time.perf_counter() - wall) / len(images), 1000.0 * (time.process_time() - cpu) / len(images)


def measure_speed(
    models: dict[str, tuple[Path, dict]], photos: dict[str, list[np.ndarray]], rounds: int
) -> dict[tuple[str, str, str, str], float]:
    """Fastest ms/photo of (size, variant, stage, wall|cpu) over interleaved rounds, facesearch's settings."""
    detectors = {
        v: FaceDetector(SETTINGS[0].session(p), DetectorConfig.from_manifest(s)) for v, (p, s) in models.items()
    }
    times: dict[tuple[str, str, str, str], list[float]] = {}
    for size, images in photos.items():
        batches = {v: [d.prepare([im], UPSAMPLE) for im in images] for v, d in detectors.items()}
        for v, d in detectors.items():  # warm-up: arenas sized for this photo size
            d.forward(batches[v][0])
            d.detect(images[0], UPSAMPLE)
        for _ in range(rounds if size != "1920x1080" else max(2, rounds // 2)):
            for v, d in detectors.items():
                it = iter(batches[v])
                runs = {
                    "forward": _ms_per_photo(lambda _im, d=d, it=it: d.forward(next(it)), images),
                    "detect": _ms_per_photo(lambda im, d=d: d.detect(im, UPSAMPLE), images),
                }
                for stage, (wall, cpu) in runs.items():
                    times.setdefault((size, v, stage, "wall"), []).append(wall)
                    times.setdefault((size, v, stage, "cpu"), []).append(cpu)
    return {k: min(v) for k, v in times.items()}


def measure_settings(
    models: dict[str, tuple[Path, dict]], images: list[np.ndarray], rounds: int
) -> dict[tuple[str, str], float]:
    """Median ms/photo of the network alone for (setting, variant), interleaved rounds."""
    runs = {}
    for setting in SETTINGS:
        for v, (path, section) in models.items():
            det = FaceDetector(setting.session(path), DetectorConfig.from_manifest(section))
            batches = [det.prepare([im], UPSAMPLE) for im in images]
            det.forward(batches[0])
            runs[(setting.name, v)] = (det, batches)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, (det, batches) in runs.items():
            it = iter(batches)
            times[key].append(_ms_per_photo(lambda _im, d=det, i=it: d.forward(next(i)), images)[0])
    return {k: min(v) for k, v in times.items()}


# --- agreement -----------------------------------------------------------------------------------


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inner = max(w, 0) * max(h, 0)
    return inner / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inner)


@dataclass(frozen=True, slots=True)
class Agreement:
    faces: int  # found by the float detector
    found: int  # of those, found by int8 (IoU >= 0.5)
    extra: int  # int8 faces matching no float face
    mean_iou: float
    identical: float  # share of matched boxes equal to the float box
    max_score_diff: float
    extra_scores: tuple[float, ...]
    missed_scores: tuple[float, ...]


def agreement(ref: list[list[Detection]], got: list[list[Detection]]) -> Agreement:
    found, extra, ious, same, diffs, extra_s, missed_s = 0, 0, [], 0, [0.0], [], []
    for r, g in zip(ref, got, strict=True):
        free = list(g)
        for a in r:
            best = max(free, key=lambda b, a=a: _iou(a.box, b.box), default=None)
            if best is None or _iou(a.box, best.box) < 0.5:
                missed_s.append(round(a.score, 3))
                continue
            free.remove(best)
            found += 1
            ious.append(_iou(a.box, best.box))
            same += a.box == best.box
            diffs.append(abs(a.score - best.score))
        extra += len(free)
        extra_s += [round(b.score, 3) for b in free]
    faces = sum(map(len, ref))
    return Agreement(
        faces,
        found,
        extra,
        float(np.mean(ious)) if ious else float("nan"),
        same / max(found, 1),
        max(diffs),
        tuple(sorted(extra_s)),
        tuple(sorted(missed_s)),
    )


def measure_agreement(models: dict[str, tuple[Path, dict]], sets: dict[str, tuple[list[np.ndarray], int]]) -> dict:
    dets = {v: FaceDetector.from_onnx(p, s) for v, (p, s) in models.items()}
    out = {}
    for name, (images, upsample) in sets.items():
        ref = [dets["float"].detect(im, upsample) for im in images]
        got = [dets["int8"].detect(im, upsample) for im in images]
        out[name] = agreement(ref, got)
    return out


# --- report --------------------------------------------------------------------------------------


def _speed_row(speed: dict, size: str, stage: str) -> list[str]:
    f_wall, i_wall = speed[size, "float", stage, "wall"], speed[size, "int8", stage, "wall"]
    f_cpu, i_cpu = speed[size, "float", stage, "cpu"], speed[size, "int8", stage, "cpu"]
    return [f"{f_wall:.1f}", f"{i_wall:.1f}", f"{f_wall / i_wall:.2f}x", f"{f_cpu / i_cpu:.2f}x"]


def _vs(base: float, got: float) -> list[str]:
    return [f"{got:.1f}", f"{base / got:.2f}x"]


def _rest(a: Agreement) -> list[str]:
    return [f"{a.identical:.1%}", f"{a.max_score_diff:.3f}", str(list(a.missed_scores)), str(list(a.extra_scores))]


def report(speed: dict, settings: dict, agree: dict, sizes: dict[str, int], header: str) -> str:
    rows = [
        [size, str(sizes[size]), *_speed_row(speed, size, "forward"), *_speed_row(speed, size, "detect")]
        for size in SIZES
    ]
    speed_md = table(
        rows,
        [
            "photo",
            "photos",
            *("float forward ms", "int8 forward ms", "speed-up", "CPU-time speed-up"),
            *("float detect ms", "int8 detect ms", "speed-up", "CPU-time speed-up"),
        ],
    )
    base = settings[("facesearch", "float")]
    rows = [
        [
            name,
            f"{settings[name, 'float']:.1f}",
            f"{base / settings[name, 'float']:.2f}x",
            *_vs(base, settings[name, "int8"]),
        ]
        for name in dict.fromkeys(k[0] for k in settings)
    ]
    settings_md = table(rows, ["session setting", "float ms", "vs float facesearch", "int8 ms", "vs float facesearch"])
    rows = [
        [name, str(a.faces), f"{a.found / max(a.faces, 1):.2%}", str(a.extra), f"{a.mean_iou:.3f}", *_rest(a)]
        for name, a in agree.items()
    ]
    agree_md = table(
        rows,
        [
            *("photos", "float faces", "int8 recall", "int8 extra", "mean IoU", "identical boxes", "max |score diff|"),
            *("missed (float score)", "extra (int8 score)"),
        ],
    )
    return (
        f"{header}\n\n## Speed at the default minimum face (40 px, upsample 1), ms per photo\n\n{speed_md}\n\n"
        f"## onnxruntime session settings, network only, 250x250 photos, ms per photo\n\n{settings_md}\n\n"
        f"## Agreement with the float detector, held-out photos\n\n{agree_md}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=None, help="a --detector int8 bundle (default: export one)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--agreement-photos", type=int, default=300)
    parser.add_argument("--group-photos", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="detector-speed-") as tmp:
        bundle_dir = args.bundle
        if bundle_dir is None:
            from export.bundle_writer import DlibExportConfig, write_dlib_bundle  # torch: only to export

            bundle_dir = Path(tmp) / "int8"
            write_dlib_bundle(DlibExportConfig(out=bundle_dir, detector=DetectorVariant.INT8))
        bundle = ModelBundle.load(bundle_dir)
        models = {v.value: bundle.detector_model(v) for v in (DetectorVariant.FLOAT, DetectorVariant.INT8)}
        held_out = held_out_photos(bundle)
        rng = np.random.default_rng(args.seed)
        lfw = [load_image(p) for p in sorted(rng.choice(held_out, args.agreement_photos, replace=False))]
        speed_photos = {
            "250x250": lfw[:8],
            "640x480": [compose((640, 480), list(rng.choice(held_out, 6, replace=False)), rng) for _ in range(3)],
            "1920x1080": [compose((1920, 1080), list(rng.choice(held_out, 24, replace=False)), rng)],
        }
        load_before = os.getloadavg()
        speed = measure_speed(models, speed_photos, args.rounds)
        settings = measure_settings(models, lfw[:8], args.rounds)
        groups = [
            compose((640, 480), list(rng.choice(held_out, 6, replace=False)), rng) for _ in range(args.group_photos)
        ]
        agree = measure_agreement(
            models,
            {
                f"lfw-dev, {len(lfw)} photos, upsample 1": (lfw, 1),
                f"lfw-dev, {len(lfw)} photos, upsample 0": (lfw, 0),
                f"composed group photos 640x480, {len(groups)}, upsample 1": (groups, 1),
            },
        )
        load_after = os.getloadavg()
    header = (
        f"Machine: {machine()}; onnxruntime {ort.__version__}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after. Rounds: {args.rounds} (1920x1080: {max(2, args.rounds // 2)}), "
        "the fastest of each. "
        f"int8 ranges sha256 {bundle.section('detector')['quantization']['ranges']['sha256'][:12]}."
    )
    text = report(speed, settings, agree, {k: len(v) for k, v in speed_photos.items()}, header)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
