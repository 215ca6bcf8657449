"""The int8 face detector: the exported MMOD network quantised to 8 bits, calibrated on photos.

``facesearch-export dlib --detector int8`` writes ``detector.int8.onnx`` beside the float
``detector.onnx`` and makes it the bundle's detector (manifest ``detector.variant``). The recipe,
chosen by measurement (``bench/results/detector_speed.md``):

* onnxruntime static quantisation in QDQ form: weights int8, symmetric, one scale per output
  channel; activations uint8, one scale and zero point per tensor, from MinMax ranges;
* two convolutions stay float: the first (3 input channels: onnxruntime's int8 convolution is
  slower than its float one there) and the scorer's 1x1 taps (the score maxima pick the boxes;
  quantising the scores moves about one box in two by a cell, keeping them float one in eight).

Activation ranges (:class:`ActivationRanges`) are the lowest and highest value of each
quantised tensor over the pyramid tensors of calibration photos, at upsample 0 and 1 (the
detector's inputs for faces of 80 and 40 px). They depend only on the network, so the ranges
measured on lfw-dev are shipped in ``export/calibrations/mmod-int8/ranges.json`` and an export
needs no photos; ``--detector-calibration DIR`` measures them on the operator's photos instead.
The shipped ranges were measured on 64 lfw-dev photos drawn with seed 0 from those that
``pairs.txt`` does not use and ``tests/data`` does not hold (the file lists them, with the
command that regenerates it: ``python -m export.quantize``), so the pairs protocol and the
tests never score a photo the ranges were measured on.

The ranges are keyed by tensor names of the float graph after onnxruntime's pre-processing
(``quant_pre_process``: shape inference and the affine layers folded into the convolutions);
they record the sha256 of the dlib ``.dat`` file and the graph arrangement they were measured
for, and quantising refuses ranges made for another network or that miss a tensor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    TensorsData,
    create_calibrator,
    quant_pre_process,
    quantize_static,
    save_tensors_data,
)

from export.mmod import export_detector
from export.shipped_calibration import CALIBRATIONS_DIR
from facesearch.bundle.manifest import DetectorVariant
from facesearch.errors import ExitCode, FaceSearchError, InvalidInputError, ModelFormatError, exit_code
from facesearch.evaluation.pairs import read_pairs
from facesearch.nets.dlib_sources import DLIB_FILES, default_models_dir
from facesearch.util.fs import sha256_file, write_atomic
from facesearch.vision.decode import load_image
from facesearch.vision.detector import FaceDetector

INT8_FILE = "detector.int8.onnx"
RANGES_FORMAT = "facesearch-mmod-activation-ranges"
SHIPPED_RANGES = CALIBRATIONS_DIR / "mmod-int8" / "ranges.json"
#: How many calibration photos, drawn with which seed, and at which upsampling.
DEFAULT_PHOTOS = 64
DEFAULT_SEED = 0
CALIBRATION_UPSAMPLE = (0, 1)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
QUANTISED_OPS = ("Conv", "Relu")
#: Largest |int8 - float| score on the export's verification inputs; the quantisation error is ~0.1.
MAX_SCORE_DIFF = 0.5
RECIPE = {
    "format": "QDQ (onnxruntime static quantisation)",
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, asymmetric, per tensor, MinMax ranges",
    "float_nodes": "the first convolution (3 input channels) and the scorer's 1x1 taps",
}

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActivationRanges:
    """``(lowest, highest)`` of each activation tensor, and what they were measured for and on.

    ``source_sha256``: the dlib ``.dat`` file; ``graph``: the exported arrangement of its network
    (``detector.output.graph``); ``calibration``: the photos (names, count, seed, upsampling, a
    digest of their bytes) and how they were chosen.
    """

    ranges: dict[str, tuple[float, float]]
    source_sha256: str
    graph: str
    calibration: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RANGES_FORMAT,
            "source_sha256": self.source_sha256,
            "graph": self.graph,
            "calibration": self.calibration,
            "ranges": {name: [lo, hi] for name, (lo, hi) in sorted(self.ranges.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any, where: str = "activation ranges") -> ActivationRanges:
        try:
            if data["format"] != RANGES_FORMAT:
                raise ModelFormatError(f"{where}: not a {RANGES_FORMAT} file")
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in data["ranges"].items()}
            return cls(ranges, str(data["source_sha256"]), str(data["graph"]), dict(data["calibration"]))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ModelFormatError(f"{where}: bad activation ranges: {err!r}") from err

    @classmethod
    def load(cls, path: Path) -> ActivationRanges:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelFormatError(f"{path}: unreadable activation ranges: {err}") from err
        return cls.from_dict(data, str(path))

    def check_applies(self, section: dict[str, Any]) -> None:
        """Refuse ranges measured for another detector file or graph arrangement than ``section``'s."""
        source, graph = section["source"]["sha256"], section["output"].get("graph", "")
        if (self.source_sha256, self.graph) != (source, graph):
            raise ModelFormatError(
                f"the activation ranges were measured for detector {self.source_sha256[:12]}... ({self.graph!r}), "
                f"this one is {source[:12]}... ({graph!r}): measure them with --detector-calibration DIR"
            )


# --- calibration photos ------------------------------------------------------------------------


def photo_files(root: Path) -> list[Path]:
    """Every photo under ``root`` (by suffix), sorted by path."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())


def choose_photos(root: Path, count: int, seed: int, exclude: Collection[str] = ()) -> list[Path]:
    """``count`` photos under ``root`` drawn with ``seed`` (all when fewer), sorted; ``exclude``
    holds paths relative to ``root`` (``Person/Person_0001.jpg``) never to draw."""
    root = Path(root)
    pool = [p for p in photo_files(root) if p.relative_to(root).as_posix() not in exclude]
    if not pool:
        raise InvalidInputError(f"no calibration photos ({', '.join(PHOTO_SUFFIXES)}) under {root}")
    if len(pool) <= count:
        return pool
    picked = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
    return [pool[i] for i in sorted(picked)]


def _photos_record(root: Path, photos: Sequence[Path], seed: int, rule: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    for p in photos:
        digest.update(bytes.fromhex(sha256_file(p)))
    return {
        "photos": [p.relative_to(root).as_posix() for p in photos],
        "count": len(photos),
        "seed": seed,
        "upsample": list(CALIBRATION_UPSAMPLE),
        "photos_sha256": digest.hexdigest(),
        "rule": rule,
    }


class _PyramidTensors(CalibrationDataReader):
    """The detector's input tensors for each photo at each calibration upsampling, one at a time."""

    def __init__(self, detector: FaceDetector, photos: Sequence[Path], input_name: str) -> None:
        self._items: Iterator[tuple[Path, int]] = iter([(p, u) for p in photos for u in CALIBRATION_UPSAMPLE])
        self._detector, self._input = detector, input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._items, None)
        if item is None:
            return None
        image = load_image(item[0])
        return {self._input: self._detector.prepare([image], upsample=item[1]).tensor}


# --- the graph ---------------------------------------------------------------------------------


def _preprocess(float_path: Path, out: Path) -> onnx.ModelProto:
    """onnxruntime's pre-quantisation pass: shapes inferred, each affine layer folded into its conv."""
    quant_pre_process(str(float_path), str(out))
    return onnx.load(str(out))


def float_nodes(graph: onnx.GraphProto) -> list[str]:
    """The nodes kept float: the first Conv and the Relu after it, and the last Conv (the taps)."""
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if len(convs) < 3:
        raise ModelFormatError(f"expected the MMOD network's convolutions, found {len(convs)}")
    first_relu = [n for n in graph.node if n.op_type == "Relu" and convs[0].output[0] in n.input]
    return [convs[0].name, *(n.name for n in first_relu), convs[-1].name]


def quantised_tensors(graph: onnx.GraphProto) -> list[str]:
    """The activation tensors that get a uint8 scale: inputs and outputs of the quantised nodes."""
    keep_float = set(float_nodes(graph))
    weights = {t.name for t in graph.initializer}
    names: set[str] = set()
    for node in graph.node:
        if node.op_type in QUANTISED_OPS and node.name not in keep_float:
            names.update(t for t in (*node.input, *node.output) if t and t not in weights)
    return sorted(names)


def measure_ranges(
    float_path: Path, section: dict[str, Any], root: Path, photos: Sequence[Path], *, seed: int, rule: str
) -> ActivationRanges:
    """MinMax ranges of the float detector's activations over ``photos`` (files under ``root``)."""
    if not photos:
        raise InvalidInputError("measuring activation ranges needs at least one photo")
    detector = FaceDetector.from_onnx(float_path, section)
    with tempfile.TemporaryDirectory(prefix="facesearch-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        needed = quantised_tensors(_preprocess(float_path, pre).graph)
        calibrator = create_calibrator(
            pre,
            list(QUANTISED_OPS),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,  # the session reduces each tensor to its min and max
        )
        calibrator.collect_data(_PyramidTensors(detector, photos, detector.config.input_name))
        data = calibrator.compute_data()
    ranges = {}
    for name in needed:
        lo, hi = data[name].range_value
        ranges[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return ActivationRanges(
        ranges,
        str(section["source"]["sha256"]),
        str(section["output"].get("graph", "")),
        _photos_record(Path(root), photos, seed, rule),
    )


def shipped_ranges() -> ActivationRanges:
    return ActivationRanges.load(SHIPPED_RANGES)


# --- quantising --------------------------------------------------------------------------------


def _score_diff(float_path: Path, int8_bytes: bytes, tensors: Sequence[np.ndarray], input_name: str) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = [
        ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"]) for src in (str(float_path), int8_bytes)
    ]
    worst = 0.0
    for x in tensors:
        ref, got = (s.run(None, {input_name: x})[0] for s in sessions)
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def quantize_detector(
    float_path: Path,
    section: dict[str, Any],
    ranges: ActivationRanges,
    out_path: Path,
    verification_inputs: Sequence[np.ndarray] = (),
) -> dict[str, Any]:
    """Write the int8 form of the float detector at ``float_path`` (manifest ``section``) to ``out_path``.

    Returns the int8 detector's manifest section: the float section's conventions, ``variant``
    ``int8``, its ``onnx`` file and sha256, the ``quantization`` (recipe, float nodes, ranges and
    their calibration) and the ``float_model`` it was made from. The output is byte-reproducible
    for the same float model and ranges. Raises :class:`ModelFormatError` when the ranges were
    made for another network or miss a tensor, or when the int8 scores of
    ``verification_inputs`` differ from the float ones by more than :data:`MAX_SCORE_DIFF`.
    """
    float_path, out_path = Path(float_path), Path(out_path)
    ranges.check_applies(section)
    with tempfile.TemporaryDirectory(prefix="facesearch-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        graph = _preprocess(float_path, pre).graph
        keep_float = float_nodes(graph)
        missing = [t for t in quantised_tensors(graph) if t not in ranges.ranges]
        if missing:
            raise ModelFormatError(f"the activation ranges miss {missing}: measure them with --detector-calibration")
        cache = Path(tmp) / "ranges.json"
        table = {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, table), cache)
        quantize_static(
            pre,
            Path(tmp) / "int8.onnx",
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTISED_OPS),
            nodes_to_exclude=keep_float,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=cache,
        )
        model = onnx.load(str(Path(tmp) / "int8.onnx"))
    model.producer_name, model.producer_version = "facesearch-export", "1"
    metadata = {p.key: p.value for p in onnx.load(str(float_path)).metadata_props}
    metadata["facesearch.detector.variant"] = DetectorVariant.INT8.value
    metadata["facesearch.detector.quantization"] = json.dumps({**RECIPE, "ranges_sha256": ranges.sha256})
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, metadata[key]
    onnx.checker.check_model(model)
    data = model.SerializeToString(deterministic=True)
    diff = _score_diff(float_path, data, verification_inputs, str(section["input"]["name"]))
    if not diff <= MAX_SCORE_DIFF:
        raise ModelFormatError(f"the int8 detector's scores differ from the float ones by {diff:.3g}")
    write_atomic(out_path, data)
    float_model = {"file": section["onnx"]["file"], "onnx": section["onnx"]}
    rest = {k: v for k, v in section.items() if k not in ("file", "onnx", "variant")}
    return {
        **rest,
        "variant": DetectorVariant.INT8.value,
        "onnx": {
            "file": out_path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "max_abs_score_diff_vs_float": diff,
        },
        "quantization": {
            **RECIPE,
            "float_nodes": keep_float,
            "ranges": {"sha256": ranges.sha256, "calibration": ranges.calibration},
        },
        "float_model": float_model,
    }


# --- python -m export.quantize: regenerate the shipped ranges --------------------------------


def lfw_pairs_photos(pairs_txt: Path) -> set[str]:
    """The photos an LFW ``pairs.txt`` scores (``Person/Person_0001.jpg``)."""
    return {name for pair in read_pairs(pairs_txt) for name in (pair.a, pair.b)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.quantize", description="Measure the int8 detector's activation ranges on photos."
    )
    parser.add_argument("--images", type=Path, required=True, help="folder of photos (e.g. lfw-dev/images)")
    parser.add_argument("--exclude-pairs", type=Path, help="pairs.txt whose photos are never drawn")
    parser.add_argument("--exclude-photos", type=Path, help="folder whose photos (same relative paths) are never drawn")
    parser.add_argument("--count", type=int, default=DEFAULT_PHOTOS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--models-dir", type=Path, default=None, help="folder of dlib's .dat files")
    parser.add_argument("--out", type=Path, default=SHIPPED_RANGES)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        exclude: set[str] = set()
        rule = f"{args.count} photos under the images folder drawn with numpy default_rng(seed)"
        if args.exclude_pairs:
            exclude |= lfw_pairs_photos(args.exclude_pairs)
            rule += f", none that {args.exclude_pairs.name} scores"
        if args.exclude_photos:
            exclude |= {p.relative_to(args.exclude_photos).as_posix() for p in photo_files(args.exclude_photos)}
            rule += ", none that the tests' fixtures hold"
        photos = choose_photos(args.images, args.count, args.seed, exclude)
        dat = (args.models_dir or default_models_dir()) / DLIB_FILES["detector"]
        with tempfile.TemporaryDirectory(prefix="facesearch-quant-") as tmp:
            float_path = Path(tmp) / "detector.onnx"
            section = export_detector(dat, float_path)
            ranges = measure_ranges(float_path, section, args.images, photos, seed=args.seed, rule=rule)
        command = " ".join(["python -m export.quantize", *(argv if argv is not None else sys.argv[1:])])
        ranges = ActivationRanges(
            ranges.ranges, ranges.source_sha256, ranges.graph, {**ranges.calibration, "command": command}
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, ranges.to_json())
        print(f"wrote {args.out}: {len(ranges.ranges)} tensors from {len(photos)} photos")
        return ExitCode.OK
    except FaceSearchError as err:
        print(f"python -m export.quantize: error: {err}", file=sys.stderr)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
