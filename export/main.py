"""``facesearch-export``: convert models into a facesearch model bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facesearch.errors import FaceSearchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesearch-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dlib = sub.add_parser("dlib", help="convert dlib's public-domain face models (face_recognition_models)")
    dlib.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    dlib.add_argument("--models-dir", type=Path, default=None,
                      help="folder holding the three dlib .dat files (default: the installed "
                      "face_recognition_models package)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "dlib":
            from export.bundle_writer import DlibExportConfig, write_dlib_bundle  # noqa: PLC0415

            manifest = write_dlib_bundle(DlibExportConfig(out=args.out, models_dir=args.models_dir))
            print(f"wrote {args.out} (contract {manifest['contract_id']})")
            return 0
    except FaceSearchError as err:
        print(f"facesearch-export: error: {err}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
