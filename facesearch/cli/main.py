"""``facesearch``: the command line for embedding, evaluation and (later) client calls."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facesearch.cli import client_commands, eval_ident, models
from facesearch.errors import ExitCode, FaceSearchError, exit_code

#: ``facesearch embed --face`` values -> facesearch.vision.selection.Policy values.
EMBED_FACES = {"centre": "nearest_centre", "dominant": "dominant", "largest": "largest"}


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embeddings for many images (npz or Parquet)")
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    p.add_argument(
        "--list",
        type=Path,
        required=True,
        dest="source",
        help="file with one image path per line, or a folder of images",
    )
    p.add_argument("--out", type=Path, required=True, help="OUT.npz, or OUT.parquet for Parquet")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--face",
        choices=tuple(EMBED_FACES),
        default="centre",
        help="the face of each image: nearest the centre (default), the dominant one (the largest when "
        "clearly larger than the next, else none: found=False), or the largest",
    )
    which.add_argument("--all-faces", action="store_true", help="a row for every face, not only one")
    p.add_argument("--min-face", type=int, default=40, help="smallest face to find, px across (default 40)")
    p.add_argument(
        "--detector",
        default="budget",
        help="how faces are found: budget (MMOD within the detection budget, default) or cascade "
        "(BlazeFace proposals confirmed by MMOD: faster; needs a bundle with proposals.onnx)",
    )
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: one per core)")
    p.add_argument(
        "--shard-size", type=int, default=64, help="images per resumable shard under OUT.parts/ (default 64)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy evaluations")
    esub = p.add_subparsers(dest="eval_command", required=True)
    pairs = esub.add_parser("pairs", help="LFW View-2 pair verification (10-fold)")
    pairs.add_argument("--images", type=Path, required=True, help="folder of <Person>/<Person>_NNNN.jpg")
    pairs.add_argument("--pairs", type=Path, required=True, help="pairs.txt in LFW View-2 format")
    pairs.add_argument("--bundle", type=Path, default=None, help="model bundle (default: $FACESEARCH_BUNDLE)")
    pairs.add_argument("--min-face", type=int, default=40)
    pairs.add_argument("--workers", type=int, default=0)
    pairs.add_argument("--json", action="store_true", help="print the report as JSON")
    pairs.add_argument("--quiet", action="store_true")
    _add_calibrate(esub)
    eval_ident.register(esub)


def _add_calibrate(esub: argparse._SubParsersAction) -> None:
    cal = esub.add_parser("calibrate", help="measure impostor scores and store the decision calibration in a bundle")
    cal.add_argument(
        "--images",
        type=Path,
        required=True,
        help="identity tree: one folder per person (<Person>/<photo>), e.g. lfw-dev/images",
    )
    cal.add_argument("--bundle", type=Path, default=None, help="model bundle (default: $FACESEARCH_BUNDLE)")
    cal.add_argument(
        "--default-fmr",
        type=float,
        default=1e-4,
        help="false-match rate per comparison behind the bundle's default min_similarity (default 1e-4)",
    )
    cal.add_argument("--out", type=Path, default=None, help="write here instead of BUNDLE/calibration.json")
    cal.add_argument("--workers", type=int, default=0)
    cal.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesearch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_embed(sub)
    _add_eval(sub)
    client_commands.register(sub)
    models.register(sub)
    return parser


def _cmd_embed(args: argparse.Namespace) -> int:
    from facesearch.jobs.embed import EmbedConfig, run  # noqa: PLC0415 - keep CLI start fast
    from facesearch.jobs.image_list import read_image_list  # noqa: PLC0415
    from facesearch.vision.pipeline import detector_mode  # noqa: PLC0415
    from facesearch.vision.selection import Policy  # noqa: PLC0415

    paths = tuple(read_image_list(args.source))
    summary = run(
        EmbedConfig(
            bundle=args.bundle,
            paths=paths,
            out=args.out,
            all_faces=args.all_faces,
            min_face=args.min_face,
            workers=args.workers,
            shard_size=args.shard_size,
            progress=not args.quiet,
            face=Policy(EMBED_FACES[args.face]),
            detector=detector_mode(args.detector, "--detector"),
        )
    )
    print(
        f"embedded {summary.images} images: {summary.found} with a face, {summary.faces} faces, "
        f"{summary.errors} unreadable -> {summary.out}"
    )
    if summary.errors:
        print(
            f"facesearch embed: {summary.errors} of {summary.images} images failed (their rows have found=False "
            f"and the reason in 'errors'); the others were written to {summary.out}",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    return ExitCode.OK


def _cmd_eval_pairs(args: argparse.Namespace) -> int:
    from facesearch.bundle.location import resolve_bundle  # noqa: PLC0415
    from facesearch.evaluation.pairs import embed_pair_images, evaluate_pairs, pair_scores, read_pairs  # noqa: PLC0415

    pairs = read_pairs(args.pairs)
    embeddings, missing = embed_pair_images(
        args.images,
        pairs,
        resolve_bundle(args.bundle),
        min_face=args.min_face,
        workers=args.workers,
        progress=not args.quiet,
    )
    report = evaluate_pairs(pairs, pair_scores(pairs, embeddings), missing, len(embeddings))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"pairs: {report.pairs} over {report.images} images, no face found in {report.images_without_face}")
        print(f"accuracy (10-fold): {report.accuracy_mean * 100:.2f}% +/- {report.accuracy_std * 100:.2f}")
        print(f"ROC AUC: {report.roc_auc:.4f}   TAR at FAR 1e-3: {report.tar_at_far_1e3 * 100:.2f}%")
        print(f"thresholds (cosine) per fold: {', '.join(f'{t:.3f}' for t in report.thresholds)}")
    return ExitCode.OK


def _cmd_eval_calibrate(args: argparse.Namespace) -> int:
    import numpy as np  # noqa: PLC0415

    from facesearch.bundle.location import resolve_bundle  # noqa: PLC0415
    from facesearch.bundle.manifest import CALIBRATION_FILE  # noqa: PLC0415
    from facesearch.evaluation.calibrate import calibrate, calibrate_open_set  # noqa: PLC0415
    from facesearch.jobs.embed import embed_paths  # noqa: PLC0415
    from facesearch.jobs.image_list import read_image_list  # noqa: PLC0415
    from facesearch.scoring.open_set_calibration import OPEN_SET_CALIBRATION_FILE  # noqa: PLC0415

    bundle = resolve_bundle(args.bundle)
    paths = read_image_list(args.images)
    rows = embed_paths(bundle, paths, workers=args.workers, progress=not args.quiet)
    found = rows["found"]
    labels = np.array([p.parent.name for p in paths])[rows["image_index"][found]]
    result = calibrate(
        rows["embeddings"][found],
        labels,
        source=f"{args.images} ({int(found.sum())} faces)",
        default_fmr=args.default_fmr,
    )
    out = args.out or bundle / CALIBRATION_FILE
    result.write(out)
    calibrate_open_set(rows["embeddings"][found], labels, source=result.source).write(
        out.parent / OPEN_SET_CALIBRATION_FILE
    )
    print(
        f"{result.impostor_pairs} impostor and {result.genuine_pairs} genuine pairs from {result.identities} "
        f"identities -> {out}"
    )
    for point in result.points:
        print(f"  FMR {point.fmr:.0e}: min_similarity {point.threshold:.4f} (TAR {point.tar * 100:.1f}%)")
    print(f"default min_similarity {result.min_similarity:.4f} at FMR {result.default_fmr:.0e}")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = client_commands.dispatch(args)
        if status is not None:
            return status
        if args.command == "embed":
            return _cmd_embed(args)
        if args.command == "eval" and args.eval_command == "pairs":
            return _cmd_eval_pairs(args)
        if args.command == "eval" and args.eval_command == "calibrate":
            return _cmd_eval_calibrate(args)
        if args.command == "eval" and args.eval_command in ("ident", "ident-split"):
            return eval_ident.run(args)
        if args.command == "models" and args.models_command == "promote":
            return models.run(args)
    except FaceSearchError as err:
        print(f"facesearch: error: {err}", file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        print("facesearch: interrupted (rerun the same command to resume)", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.ERROR  # argparse requires a command, so only a subcommand without a runner gets here


if __name__ == "__main__":
    sys.exit(main())
