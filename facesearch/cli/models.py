"""``facesearch models promote``: install a candidate bundle only if it measures no worse than the current one.

    facesearch models promote CANDIDATE_BUNDLE --eval TREE [--current BUNDLE] [--pairs PAIRS_TXT]
                              [--tolerance-accuracy 0.005] [--tolerance-fnir 0.01] [--to MODELS_DIR]
                              [--report FILE] [--min-face PX] [--quiet]

Exit 0: promoted (installed under MODELS_DIR, ``MODELS_DIR/CURRENT`` switched); 1: refused
(the message names the measure and both numbers); 2: an error (bad bundle, bad evaluation set).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facesearch.errors import ExitCode

DEFAULT_REPORT = Path("promotion-report.json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model bundles: promote a candidate")
    msub = p.add_subparsers(dest="models_command", required=True)
    pr = msub.add_parser("promote", help="compare a candidate bundle with the current one and install it if no worse")
    pr.add_argument("candidate", type=Path, metavar="CANDIDATE_BUNDLE", help="the bundle to promote")
    pr.add_argument(
        "--current",
        type=Path,
        default=None,
        help="the bundle in use (default: $FACESEARCH_BUNDLE, else $FACESEARCH_HOME/models)",
    )
    pr.add_argument(
        "--eval",
        type=Path,
        required=True,
        dest="eval_tree",
        metavar="TREE",
        help="evaluation identity tree <Person>/<photo> (people the candidate was not trained on)",
    )
    pr.add_argument(
        "--pairs",
        type=Path,
        default=None,
        help="pairs.txt (LFW View-2 format, names relative to TREE; default: 10-fold pairs drawn from TREE, seeded)",
    )
    pr.add_argument(
        "--tolerance-accuracy",
        type=float,
        default=0.005,
        help="largest allowed drop in pairs accuracy, absolute (default 0.005)",
    )
    pr.add_argument(
        "--tolerance-fnir",
        type=float,
        default=0.01,
        help="largest allowed rise in FNIR at FPIR 1%%, absolute (default 0.01)",
    )
    pr.add_argument(
        "--to",
        type=Path,
        default=None,
        dest="models_dir",
        metavar="MODELS_DIR",
        help="where promoted bundles are installed (default: $FACESEARCH_HOME/models)",
    )
    pr.add_argument("--report", type=Path, default=DEFAULT_REPORT, help=f"JSON report (default ./{DEFAULT_REPORT})")
    pr.add_argument("--min-face", type=int, default=40, help="smallest face to find, px across (default 40)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from facesearch.bundle.location import DEFAULT_DATA_DIR, resolve_bundle  # noqa: PLC0415
    from facesearch.evaluation.model_eval import EvalSet  # noqa: PLC0415
    from facesearch.evaluation.promotion import PromotionConfig, Tolerances, format_table  # noqa: PLC0415
    from facesearch.evaluation.promotion import run as promote  # noqa: PLC0415

    config = PromotionConfig(
        candidate=args.candidate,
        current=resolve_bundle(args.current),
        eval_set=EvalSet(tree=args.eval_tree, pairs_file=args.pairs, min_face=args.min_face),
        models_dir=args.models_dir or DEFAULT_DATA_DIR / "models",
        report=args.report,
        tolerances=Tolerances(accuracy=args.tolerance_accuracy, fnir=args.tolerance_fnir),
        progress=not args.quiet,
    )
    result = promote(config)
    cur, cand = result.report["current"], result.report["candidate"]
    print(f"current   {cur['contract_id']}  ({cur['bundle']})")
    print(f"candidate {cand['contract_id']}  ({cand['bundle']})")
    print(
        f"evaluation: {cand['photos']} photos, faces found {cur['faces_found']} / {cand['faces_found']}, "
        f"{cand['pairs']['pairs']} pairs"
    )
    print(format_table(result.verdict))
    print(f"report -> {config.report}")
    if result.installed is None:
        for reason in result.verdict.reasons:
            print(f"facesearch: refused: {reason}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"promoted: installed {result.installed}; {config.models_dir / 'CURRENT'} -> {result.installed.name}")
    print(
        "next: rebuild the index with the new model (a full rebuild: the server refuses the old index with the new "
        "model until a new one is published), then restart the server on it:"
    )
    print(f"  facesearch-index build --bundle {result.installed} --images TREE --out INDEX_ROOT")
    print(
        "  (live enrollments made with the old model stay in its journal under INDEX_ROOT/live and are not "
        "searched by the new one: re-enroll those people)"
    )
    return ExitCode.OK
