"""The model card of a training run: ``model_card.json`` (the facts) and ``model_card.md`` (for people).

Written by ``facesearch-export checkpoint`` (the step that knows the checkpoint, the base
bundle and the new bundle): with ``--eval TREE`` it measures the base bundle ("before") and
the exported one ("after") on the same faces and pairs (:mod:`facesearch.evaluation.model_eval`) and
writes the card into the bundle (listed in its manifest) and into the run directory.
``facesearch models promote`` then repeats the comparison against whatever bundle is in use
on the evaluation set of the operator's choosing, and refuses a worse candidate.

Sections: model (ids, architecture, base), data (identities, images, split sizes, rejects,
from the checkpoint and the run's data report when present), training config, curve summary
(per-epoch log when present), evaluation before/after, intended use and limits, licence.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from facesearch.util.fs import write_atomic

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
#: Files of a run directory (written by ``facesearch-train``) the card summarises when present.
DATA_REPORTS = ("class_balance.json", "summary.json")
CURVE_LOGS = ("log.json", "log.csv")

INTENDED_USE = (
    "Face verification and 1:N identification inside facesearch (embeddings compared by cosine similarity) "
    "for the cameras and people the training data represents. Decision thresholds must be recalibrated for "
    "this model (`facesearch eval calibrate --bundle BUNDLE`) before it serves; indices built with another "
    "model must be rebuilt (a new contract id)."
)
LIMITS = (
    "Trained and measured on LFW-like data (frontal-ish press photos of mostly adult, mostly light-skinned "
    "public figures); accuracy on other populations, cameras, ages and poses is not established by these "
    "numbers. The evaluation people are disjoint from the training people, but drawn from the same "
    "collection: in-distribution numbers, optimistic for other data. Small evaluation sets give coarse "
    "rates (one error in 200 pairs is 0.5 points). Not for decisions with legal or similar effect on people "
    "without human review."
)


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def data_summary(ckpt: dict[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """Identities, images, split sizes and rejects: the checkpoint's ``data`` plus the run's reports."""
    out: dict[str, Any] = {"checkpoint": _json_ready(ckpt.get("data"))}
    if run_dir is None:
        return out
    for name in DATA_REPORTS:
        report = _read_json(run_dir / name)
        if isinstance(report, dict):  # counts and summaries, not per-identity tables
            out[name.removesuffix(".json")] = _json_ready(
                {k: v for k, v in report.items() if not isinstance(v, dict | list) or len(v) <= 50}
            )
    balance = _read_json(run_dir / "class_balance.json")
    cache = Path(str(balance["chips_cache"])) if isinstance(balance, dict) and balance.get("chips_cache") else None
    chips = _read_json(cache / "manifest.json") if cache else None
    if isinstance(chips, dict):
        out["chips"] = _json_ready(
            {k: chips.get(k) for k in ("images", "chips", "rejected", "reject_reasons", "config")}
        )
    return out


def curve_summary(ckpt: dict[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """Per-epoch rows of the run's log when present (first, best, last), else the checkpoint's metrics."""
    rows: list[dict[str, Any]] = []
    source = None
    if run_dir is not None:
        for name in CURVE_LOGS:
            path = run_dir / name
            if not path.is_file():
                continue
            try:
                if name.endswith(".csv"):
                    with path.open(newline="") as fh:
                        rows = [dict(r) for r in csv.DictReader(fh)]
                else:
                    data = json.loads(path.read_text())
                    rows = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
            except (OSError, UnicodeDecodeError, csv.Error, json.JSONDecodeError):
                rows = []
            source = name
            break
    return {
        "source": source,
        "rows": len(rows),
        "first": rows[0] if rows else None,
        "last": rows[-1] if rows else None,
        "best": _json_ready(ckpt.get("best")),
        "checkpoint_epoch": int(ckpt.get("epoch", 0)),
        "checkpoint_metrics": _json_ready(ckpt.get("metrics")),
    }


def build_card(
    ckpt: dict[str, Any], manifest: dict[str, Any], *, run_dir: Path | None, evaluation: dict[str, Any] | None
) -> dict[str, Any]:
    """The card as a JSON-ready dict. ``evaluation``: ``{"set", "before", "after"}`` (BundleScores dicts) or None."""
    training = manifest.get("training", {})
    source = manifest.get("source", {})
    base = source.get("base_bundle", {}) if isinstance(source, dict) else {}
    base_licence = (base.get("source") or {}).get("licence") if isinstance(base, dict) else None
    return _json_ready(
        {
            "model": {
                "model_id": manifest.get("model_id"),
                "contract_id": manifest.get("contract_id"),
                "architecture": (ckpt.get("arch") or {}).get("kind"),
                "embedding_dim": (manifest.get("embedding") or {}).get("dim"),
                "base_model_id": base.get("model_id"),
                "base_contract_id": training.get("base_contract_id"),
                "checkpoint_sha256": training.get("checkpoint_sha256"),
                "epoch": training.get("epoch"),
                "fingerprint": training.get("fingerprint"),
                "parity": manifest.get("parity"),
            },
            "data": data_summary(ckpt, run_dir),
            "config": ckpt.get("config"),
            "training_curve": curve_summary(ckpt, run_dir),
            "evaluation": evaluation,
            "intended_use": INTENDED_USE,
            "limits": LIMITS,
            "licence": {
                "base_weights": base_licence or "dlib models by Davis King: public domain",
                "fine_tuned_weights": "derived from the base weights and the training data; the data's "
                "terms (e.g. LFW: research use) apply",
                # the detection cascade's proposal network, when the bundle ships one
                "proposals": (manifest.get("proposals") or {}).get("licence"),
            },
        }
    )


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{float(value) * 100:.2f}%"


def render_markdown(card: dict[str, Any]) -> str:
    model = card["model"]
    lines = [
        f"# Model card: {model['model_id']}",
        "",
        f"- contract id: `{model['contract_id']}`",
        f"- architecture: {model['architecture']}, {model['embedding_dim']}-d embeddings",
        f"- base: {model['base_model_id']} (`{model['base_contract_id']}`)",
        f"- checkpoint: epoch {model['epoch']}, sha256 `{str(model['checkpoint_sha256'])[:16]}...`, "
        f"config fingerprint `{str(model['fingerprint'])[:16]}...`",
    ]
    parity = model.get("parity") or {}
    if parity:
        lines.append(
            f"- export parity (torch vs onnxruntime, {parity.get('chips')} chips): max |diff| "
            f"{parity.get('max_abs_diff'):.2e} ({parity.get('relative'):.2e} of the descriptor norm)"
        )
    lines += ["", "## Evaluation (before = base bundle, after = this bundle; same faces, same pairs)", ""]
    ev = card.get("evaluation")
    if ev:
        s = ev["set"]
        lines += [
            f"Set: {s['tree']} ({s['identities']} people, {s['photos']} photos, {s['faces_found']} faces "
            f"found), pairs: {s['pairs']} ({s['pairs_count']}).",
            "",
            "| measure | before | after |",
            "|---|---|---|",
        ]
        for key, label in (
            ("pairs_accuracy", "pairs accuracy (10-fold)"),
            ("rank1", "rank-1"),
            ("fnir_at_fpir_1pct", "FNIR at FPIR 1%"),
        ):
            lines.append(f"| {label} | {_pct(ev['before'].get(key))} | {_pct(ev['after'].get(key))} |")
    else:
        lines.append(
            "Not measured at export: re-export with `--eval TREE`, or compare with "
            "`facesearch models promote BUNDLE --eval TREE`."
        )
    curve = card["training_curve"]
    lines += [
        "",
        "## Training",
        "",
        f"- best: {curve.get('best')}",
        f"- log: {curve.get('source') or 'none found'} ({curve.get('rows')} rows); last row: {curve.get('last')}",
        f"- config: `{json.dumps(card.get('config'), sort_keys=True)}`",
        "",
        "## Data",
        "",
        f"```json\n{json.dumps(card['data'], indent=2, sort_keys=True)}\n```",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Limits",
        "",
        card["limits"],
        "",
        "## Licence",
        "",
        f"- base weights: {card['licence']['base_weights']}",
        f"- fine-tuned weights: {card['licence']['fine_tuned_weights']}",
        *([f"- face proposals: {card['licence']['proposals']}"] if card["licence"].get("proposals") else []),
        "",
    ]
    return "\n".join(lines)


def write_card(card: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write ``model_card.json`` and ``model_card.md`` into ``directory`` (temp file -> ``os.replace``)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in (
        (CARD_JSON, json.dumps(card, indent=2, sort_keys=True) + "\n"),
        (CARD_MD, render_markdown(card)),
    ):
        write_atomic(directory / name, text)
        out.append(directory / name)
    return out[0], out[1]
