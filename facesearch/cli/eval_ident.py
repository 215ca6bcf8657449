"""``facesearch eval ident``: the 1:N open-set evaluation (rank-k, FNIR at FPIR, DET, per group).

    facesearch eval ident --gallery TREE --probes TREE [--nonmated TREE] [--groups CSV]
                          [--bundle DIR] [--out DIR]

A TREE is a folder of ``<Person>/<photo>`` or a list file of such paths (what
``facesearch eval ident-split`` writes); a photo's identity is its folder name. Probes of
people in the gallery are mated searches, the others non-mated; without ``--nonmated``
and with no unenrolled probes, each probe is also searched without its own identity.
Writes ``report.json`` and ``det.png`` into ``--out`` and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facesearch.errors import InvalidInputError, Reason

if TYPE_CHECKING:
    import numpy as np

DEFAULT_OUT = Path("ident-report")


def register(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add ``ident`` and ``ident-split`` to ``facesearch eval``."""
    p = eval_subparsers.add_parser("ident", help="1:N open-set identification: rank-1/5, FNIR at FPIR, DET, groups")
    p.add_argument("--gallery", type=Path, required=True, help="enrolled photos: <Person>/<photo> folder or list")
    p.add_argument("--probes", type=Path, required=True, help="search photos: folder or list (mated if enrolled)")
    p.add_argument("--nonmated", type=Path, default=None, help="photos of people not enrolled: folder or list")
    p.add_argument(
        "--groups",
        type=Path,
        default=None,
        help="CSV with columns identity,group (identity = folder name) for the per-group table",
    )
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: $FACESEARCH_BUNDLE)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default ./{DEFAULT_OUT})")
    p.add_argument("--workers", type=int, default=0, help="embedding worker processes (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    s = eval_subparsers.add_parser("ident-split", help="write the open-set split (gallery/probes/nonmated lists)")
    s.add_argument("--images", type=Path, required=True, help="identity tree: <Person>/<photo>")
    s.add_argument("--out", type=Path, required=True, help="folder for gallery.txt, probes.txt, nonmated.txt")


def read_groups(path: Path) -> dict[str, str]:
    """identity -> group from a CSV with a header naming ``identity`` and ``group`` columns."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = set(reader.fieldnames or ())
            if not {"identity", "group"} <= fields:
                raise InvalidInputError(
                    f"{path}: the header must name 'identity' and 'group' columns, got {sorted(fields)}",
                    reason=Reason.BAD_GROUPS,
                )
            return {row["identity"].strip(): row["group"].strip() for row in reader if row.get("identity")}
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InvalidInputError(f"cannot read groups CSV {path}: {err}", reason=Reason.BAD_GROUPS) from err


def run(args: argparse.Namespace) -> int:
    if getattr(args, "eval_command", "ident") == "ident-split":
        return _run_split(args)
    return _run_ident(args)


def _run_split(args: argparse.Namespace) -> int:
    from facesearch.evaluation.ident_split import identity_photos, open_set_split, write_split  # noqa: PLC0415

    split = open_set_split(identity_photos(args.images))
    files = write_split(split, args.out)
    print(
        f"gallery {len(split.gallery)}, probes {len(split.probes)}, non-mated {len(split.nonmated)} photos -> "
        + ", ".join(str(f) for f in files)
    )
    return 0


def _run_ident(args: argparse.Namespace) -> int:
    import numpy as np  # noqa: PLC0415 - keep CLI start fast

    from facesearch.bundle.location import resolve_bundle  # noqa: PLC0415
    from facesearch.bundle.manifest import ModelBundle  # noqa: PLC0415
    from facesearch.jobs.embed import embed_paths  # noqa: PLC0415
    from facesearch.jobs.image_list import read_image_list  # noqa: PLC0415
    from facesearch.scoring.normalise import DEFAULT_K  # noqa: PLC0415
    from facesearch.scoring.open_set_calibration import load_open_set_calibration  # noqa: PLC0415
    from facesearch.scoring.templates import DEFAULT_TEMPLATE  # noqa: PLC0415

    bundle_root = resolve_bundle(args.bundle)
    bundle = ModelBundle.load(bundle_root)
    open_cal = load_open_set_calibration(bundle_root)
    k, template = (open_cal.k, open_cal.template) if open_cal else (DEFAULT_K, DEFAULT_TEMPLATE)
    sets = {
        "gallery": read_image_list(args.gallery),
        "probes": read_image_list(args.probes),
        "nonmated": read_image_list(args.nonmated) if args.nonmated else [],
    }
    everything = sorted({p for paths in sets.values() for p in paths})
    rows = embed_paths(bundle_root, everything, workers=args.workers, progress=not args.quiet)
    errors = [(everything[i], str(e)) for i, e in zip(rows["image_index"], rows["errors"], strict=True) if e]
    if errors:
        raise InvalidInputError(
            f"{len(errors)} photos could not be read, e.g. {errors[0][0]}: {errors[0][1]}", reason=Reason.BAD_IMAGES
        )
    where = {p: i for i, p in enumerate(everything)}
    emb, found = rows["embeddings"], rows["found"]
    gal = np.array([where[p] for p in sets["gallery"]], np.int64)
    gal = gal[found[gal]]
    prb = np.array([where[p] for p in sets["probes"] + sets["nonmated"]], np.int64)
    labels = np.array([p.parent.name for p in everything])
    nonmated_labels = {p.parent.name for p in sets["nonmated"]}
    enrolled = set(labels[gal].tolist())
    if overlap := sorted(nonmated_labels & enrolled):
        raise InvalidInputError(
            f"--nonmated people are enrolled in the gallery, e.g. {overlap[0]!r}", reason=Reason.BAD_SPLIT
        )
    if len(enrolled) < k + 2:
        raise InvalidInputError(
            f"the gallery has {len(enrolled)} identities with a face; normalisation with k={k} needs at least {k + 2}",
            reason=Reason.BAD_SPLIT,
        )
    groups = read_groups(args.groups) if args.groups else None
    report = evaluate_split(
        emb[gal],
        labels[gal],
        emb[prb],
        labels[prb],
        found[prb],
        k=k,
        template=template,
        groups=groups,
        calibration=open_cal,
        raw_calibration=bundle.calibration,
    )
    report["inputs"] = {
        "gallery": str(args.gallery),
        "probes": str(args.probes),
        "nonmated": str(args.nonmated) if args.nonmated else None,
        "bundle": str(bundle_root),
        "contract_id": bundle.contract_id,
        "gallery_photos": len(sets["gallery"]),
        "gallery_photos_without_face": len(sets["gallery"]) - len(gal),
    }
    write_report(report, args.out)
    print_summary(report, args.out)
    return 0


def evaluate_split(
    gallery_faces: np.ndarray,
    gallery_labels: np.ndarray,
    probes: np.ndarray,
    probe_labels: np.ndarray,
    probe_found: np.ndarray,
    *,
    k: int,
    template: str,
    groups: dict[str, str] | None,
    calibration: Any,
    raw_calibration: Any,
) -> dict[str, Any]:
    """The report dict: raw and normalised scorings, calibrated thresholds checked, per-group table."""
    from facesearch.evaluation.ident import evaluate, fnir_at, fpir_at  # noqa: PLC0415
    from facesearch.evaluation.ident_scoring import score_split  # noqa: PLC0415
    from facesearch.scoring.decision import ScoreKind  # noqa: PLC0415
    from facesearch.scoring.open_set_calibration import resolve_threshold  # noqa: PLC0415

    probe_groups = [groups.get(str(label), "(none)") for label in probe_labels] if groups is not None else None
    split = score_split(
        gallery_faces, gallery_labels, probes, probe_labels, probe_found, k=k, template=template, groups=probe_groups
    )
    calibrated = []
    group_threshold = None
    for fpir in (0.01, 0.001):
        th = resolve_threshold(calibration, raw_calibration, gallery_size=split.gallery_size, max_fpir=fpir)
        searches = split.normalised if th.score_kind is ScoreKind.NORMALISED else split.raw
        calibrated.append(
            {
                "requested_fpir": fpir,
                "threshold": th.score,
                "kind": th.kind,  # "normalised" or "cosine" (raw): ThresholdScale's names
                "reason": th.reason,
                "capped": th.capped,
                "achieved_fpir": fpir_at(searches, th.score),
                "fnir": fnir_at(searches, th.score),
            }
        )
        if group_threshold is None and th.score_kind is ScoreKind.NORMALISED:
            group_threshold = th.score
    raw = evaluate(split.raw, scoring="raw cosine (best face, dlib-equivalent)", gallery_size=split.gallery_size)
    norm = evaluate(
        split.normalised,
        scoring=f"facesearch normalised k={k}, template {template}",
        gallery_size=split.gallery_size,
        group_threshold=group_threshold,
    )
    return {
        "gallery_size": split.gallery_size,
        "nonmated_source": split.nonmated_source,
        "k": k,
        "template": template,
        "raw": raw.as_dict(),
        "facesearch": norm.as_dict(),
        "calibrated": calibrated,
        "group_threshold_source": "calibrated FPIR 1%"
        if group_threshold is not None
        else "empirical FPIR 1% on these searches",
    }


def write_report(report: dict[str, Any], out: Path) -> None:
    from facesearch.evaluation.det_plot import Curve, draw_det  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out / "report.json")
    curves = [
        Curve(report[key]["scoring"], report[key]["det"]["fpir"], report[key]["det"]["fnir"])
        for key in ("raw", "facesearch")
    ]
    draw_det(curves, out / "det.png", title=f"DET: gallery {report['gallery_size']} identities")


def print_summary(report: dict[str, Any], out: Path) -> None:
    facesearch = report["facesearch"]
    print(
        f"gallery {report['gallery_size']} identities; {facesearch['mated']} mated searches "
        f"({facesearch['mated_without_face']} without a face), {facesearch['nonmated']} non-mated "
        f"({report['nonmated_source']})"
    )
    for key in ("raw", "facesearch"):
        r = report[key]
        fnir = "  ".join(f"FNIR@FPIR {float(f) * 100:g}%: {v * 100:.1f}%" for f, v in r["fnir_at_fpir"].items())
        print(f"{r['scoring']}: rank-1 {r['rank1'] * 100:.1f}%  rank-5 {r['rank5'] * 100:.1f}%  {fnir}")
    for c in report["calibrated"]:
        print(
            f"calibrated FPIR {c['requested_fpir'] * 100:g}%: achieved {c['achieved_fpir'] * 100:.2f}%, "
            f"FNIR {c['fnir'] * 100:.1f}%  [{c['reason']}]"
        )
    for g in facesearch["groups"]:
        print(
            f"  group {g['group']}: FNIR {g['fnir'] * 100:.1f}% ({g['mated']} mated), "
            f"FPIR {g['fpir'] * 100:.2f}% ({g['nonmated']} non-mated)"
        )
    print(f"report -> {out / 'report.json'}, {out / 'det.png'}")
