"""``facesearch models promote``: install a candidate bundle only if it is no worse than the current one.

Both bundles are measured on the same evaluation set (:mod:`facesearch.evaluation.model_eval`: 10-fold
pairs accuracy and open-set FNIR at FPIR 1% of the normalised decision score). The candidate
is refused when its accuracy is lower by more than ``tolerance_accuracy`` or its FNIR higher
by more than ``tolerance_fnir`` (absolute rates: 0.005 = half a point). A refusal names the
measure and both numbers; the JSON report is written either way.

Install: the candidate is copied (temp folder, checked, ``os.replace``) to
``MODELS_DIR/<contract id, ':' -> '-'>/`` and ``MODELS_DIR/CURRENT`` is switched to it
(:func:`facesearch.util.fs.switch_pointer`, as an index root's ``CURRENT`` is). Commands and the server find it through
:mod:`facesearch.bundle.location` when no bundle is given. An index is tied to its model
contract: the server refuses the old index with the new bundle (NOT_SERVING, naming both
contract ids) until an index built with the new bundle is published.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facesearch.bundle.location import CURRENT_POINTER, current_bundle
from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import InvalidInputError, PreconditionError, Reason
from facesearch.evaluation.model_eval import BundleScores, EvalSet, evaluate_bundles
from facesearch.util.fs import replace_dir, switch_pointer, write_atomic

REPORT_FILE = "promotion.json"


@dataclass(frozen=True, slots=True)
class Tolerances:
    accuracy: float = 0.005  # pairs accuracy may drop by at most this (absolute)
    fnir: float = 0.01  # FNIR at FPIR 1% may rise by at most this (absolute)

    def __post_init__(self) -> None:
        for name in ("accuracy", "fnir"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise InvalidInputError(f"--tolerance-{name} must be in [0, 1), got {value}", reason=Reason.BAD_CONFIG)


@dataclass(frozen=True, slots=True)
class PromotionConfig:
    candidate: Path
    current: Path
    eval_set: EvalSet
    models_dir: Path
    report: Path
    tolerances: Tolerances = field(default_factory=Tolerances)
    progress: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    promote: bool
    reasons: tuple[str, ...]  # why refused (empty when promoted)
    rows: tuple[tuple[str, float | None, float | None, str], ...]  # measure, current, candidate, rule


def judge(current: BundleScores, candidate: BundleScores, tol: Tolerances) -> Verdict:
    """Compare the headline measures; the candidate must be no worse beyond the tolerances."""
    reasons = []
    rows: list[tuple[str, float | None, float | None, str]] = [
        (
            "pairs accuracy (10-fold)",
            current.pairs_accuracy,
            candidate.pairs_accuracy,
            f"higher is better; may drop <= {tol.accuracy:g}",
        ),
        (
            "FNIR at FPIR 1%",
            current.fnir_at_fpir_1pct,
            candidate.fnir_at_fpir_1pct,
            f"lower is better; may rise <= {tol.fnir:g}",
        ),
        ("rank-1", current.rank1, candidate.rank1, "reported"),
    ]
    if candidate.pairs_accuracy < current.pairs_accuracy - tol.accuracy:
        reasons.append(
            f"pairs accuracy {candidate.pairs_accuracy:.4f} is below the current "
            f"{current.pairs_accuracy:.4f} by more than --tolerance-accuracy {tol.accuracy:g}"
        )
    if current.fnir_at_fpir_1pct is None or candidate.fnir_at_fpir_1pct is None:
        raise InvalidInputError(
            "the evaluation set is too small for the identification split (it needs more "
            "people with two or more photos): FNIR at FPIR 1% cannot be compared",
            reason=Reason.BAD_FACE_SET,
        )
    if candidate.fnir_at_fpir_1pct > current.fnir_at_fpir_1pct + tol.fnir:
        reasons.append(
            f"FNIR at FPIR 1% {candidate.fnir_at_fpir_1pct:.4f} is above the current "
            f"{current.fnir_at_fpir_1pct:.4f} by more than --tolerance-fnir {tol.fnir:g}"
        )
    return Verdict(promote=not reasons, reasons=tuple(reasons), rows=tuple(rows))


def format_table(verdict: Verdict) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v * 100:.2f}%"

    lines = [f"{'measure':<26} {'current':>9} {'candidate':>9} {'change':>8}  rule"]
    for name, cur, cand, rule in verdict.rows:
        change = "n/a" if cur is None or cand is None else f"{(cand - cur) * 100:+.2f}"
        lines.append(f"{name:<26} {pct(cur):>9} {pct(cand):>9} {change:>8}  {rule}")
    return "\n".join(lines)


def install_name(bundle: ModelBundle) -> str:
    return bundle.contract_id.replace(":", "-").replace("/", "-")


def install(candidate: Path, models_dir: Path) -> Path:
    """Copy ``candidate`` to ``models_dir/<contract>/`` (checked) and point ``models_dir/CURRENT`` at it."""
    bundle = ModelBundle.load(candidate)
    name = install_name(bundle)
    target = models_dir / name
    models_dir.mkdir(parents=True, exist_ok=True)
    if target.resolve() != candidate.resolve():
        tmp = models_dir / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(candidate, tmp)
        ModelBundle.load(tmp)  # re-hash the copy before anything points at it
        replace_dir(tmp, target)  # the same contract installed before is replaced (same embedder bytes)
    switch_pointer(models_dir / CURRENT_POINTER, name)
    return target


@dataclass(frozen=True, slots=True)
class PromotionResult:
    verdict: Verdict
    report: dict[str, Any]
    installed: Path | None
    previous: Path | None


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n")


def require_calibration(candidate: Path) -> None:
    """A bundle is only served with thresholds measured for its own embedder: a fine-tuned model's
    scores sit elsewhere (dlib's 0.82 tolerance can be far off), so an uncalibrated one is refused."""
    bundle = ModelBundle.load(candidate)
    if bundle.calibration is None:
        raise PreconditionError(
            f"{candidate} has no calibration.json: thresholds do not carry over between models; run "
            f"`facesearch eval calibrate --bundle {candidate} --images TREE` on labelled photos first",
            reason=Reason.NO_CALIBRATION,
        )


def run(config: PromotionConfig) -> PromotionResult:
    """Evaluate both, judge, write the report; install only when the verdict promotes."""
    require_calibration(config.candidate)
    current, candidate = evaluate_bundles([config.current, config.candidate], config.eval_set, progress=config.progress)
    verdict = judge(current, candidate, config.tolerances)
    report: dict[str, Any] = {
        "decision": "promoted" if verdict.promote else "refused",
        "reasons": list(verdict.reasons),
        "tolerances": {"accuracy": config.tolerances.accuracy, "fnir": config.tolerances.fnir},
        "eval_set": config.eval_set.describe(),
        "current": current.as_dict(),
        "candidate": candidate.as_dict(),
        "installed": None,
    }
    if not verdict.promote:
        write_report(report, config.report)
        return PromotionResult(verdict, report, None, None)
    previous = current_bundle(config.models_dir)
    installed = install(config.candidate, config.models_dir)
    report["installed"] = {
        "path": str(installed),
        "pointer": str(config.models_dir / CURRENT_POINTER),
        "previous": str(previous) if previous else None,
    }
    write_report(report, config.report)
    write_report(report, installed / REPORT_FILE)  # beside the models, not in the sha256 list
    return PromotionResult(verdict, report, installed, previous)
