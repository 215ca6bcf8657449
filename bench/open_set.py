"""Open-set identification on lfw-dev: raw cosine (dlib-equivalent) vs facesearch's decision, same run.

Protocol (issue #5): gallery = the first photo of each person with >= 2 photos, probes =
their other photos, non-mated = every photo of the people with one photo. Every photo is
embedded once (facesearch pipeline, face nearest the centre, plus its horizontally flipped
chip) and cached; every number below comes from those embeddings.

    .venv/bin/python -m bench.open_set [--cache /tmp/open_set_faces.npz] [--splits 20]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import REPO, data_dir, machine, table
from bench.open_set_faces import face_cache
from facesearch.evaluation.calibrate import calibrate, calibrate_open_set
from facesearch.evaluation.det_plot import Curve, draw_det
from facesearch.evaluation.ident import Searches, fnir_at, fpir_at, rank_rate, threshold_at_fpir, wilson_interval
from facesearch.evaluation.ident_scoring import ScoredSplit, score_split
from facesearch.scoring.normalise import DEFAULT_K, probe_topk_mean
from facesearch.scoring.open_set_calibration import resolve_threshold
from facesearch.scoring.templates import (
    DEFAULT_TEMPLATE,
    build_gallery,
    gallery_scores,
    identity_scores,
    quality_weights,
)


@dataclass(frozen=True, slots=True)
class Faces:
    paths: list[Path]
    person: np.ndarray
    found: np.ndarray
    plain: np.ndarray
    flip: np.ndarray  # normalise(plain + flipped-chip embedding)
    weight: np.ndarray  # quality weight per face


def load_faces(cache: Path, workers: int) -> Faces:
    tree = data_dir() / "lfw-dev" / "images"
    paths = sorted(tree.glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no LFW images under {tree} (set FACESEARCH_DATA)")
    rows = face_cache(paths, REPO / ".facesearch" / "models" / "dlib", cache, workers)
    both = rows["embedding"] + rows["embedding_flip"]
    both /= np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    return Faces(
        paths,
        np.array([p.parent.name for p in paths]),
        rows["found"].astype(bool),
        rows["embedding"],
        both.astype(np.float32),
        quality_weights(rows["face_size"], rows["blur"]),
    )


def split_people(faces: Faces, people: set[str] | None = None, enrol: int = 1) -> tuple[np.ndarray, ...]:
    """(gallery, probes, non-mated) row indices: first ``enrol`` photos of people with > ``enrol`` photos."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(faces.person):
        if people is None or name in people:
            by[name].append(i)
    gallery, probes, nonmated = [], [], []
    for name in sorted(by):
        rows = sorted(by[name], key=lambda i: faces.paths[i].name)
        if len(rows) > enrol:
            gallery += rows[:enrol]
            probes += rows[enrol:]
        else:
            nonmated += rows
    return np.array(gallery), np.array(probes), np.array(nonmated)


def run_split(
    faces: Faces,
    emb: np.ndarray,
    split: tuple[np.ndarray, ...],
    *,
    k: int,
    template: str = DEFAULT_TEMPLATE,
    weighted: bool = False,
    loo: bool = False,
) -> ScoredSplit:
    gallery, probes, nonmated = split
    gallery = gallery[faces.found[gallery]]
    rows = np.r_[probes, nonmated]
    return score_split(
        emb[gallery],
        faces.person[gallery],
        emb[rows],
        faces.person[rows],
        faces.found[rows],
        k=k,
        template=template,
        weights=faces.weight[gallery] if weighted else None,
        leave_one_out=loo,
    )


def summary(s: Searches) -> dict[str, float]:
    nonmated = s.top_score[~s.mated]
    return {
        "rank1": rank_rate(s, 1),
        "rank5": rank_rate(s, 5),
        "fnir@1%": fnir_at(s, threshold_at_fpir(nonmated, 0.01)),
        "fnir@0.1%": fnir_at(s, threshold_at_fpir(nonmated, 0.001)),
    }


def pct(x: float, digits: int = 1) -> str:
    return f"{x * 100:.{digits}f}%"


def row(name: str, s: dict[str, float]) -> list[str]:
    return [name, pct(s["rank1"]), pct(s["rank5"]), pct(s["fnir@1%"]), pct(s["fnir@0.1%"])]


# -- comparisons --------------------------------------------------------------------------
def classic_as_norm(faces: Faces, emb: np.ndarray, split: tuple[np.ndarray, ...], k: int) -> Searches:
    """Textbook AS-norm (top-k mean and standard deviation on both sides), for reference."""
    from facesearch.evaluation.ident import searches_from_scores

    gallery, probes, nonmated = split
    g = build_gallery(emb[gallery], faces.person[gallery])
    rows = np.r_[probes, nonmated]
    s = identity_scores(emb[rows], g).astype(np.float64)
    gs = -np.sort(-gallery_scores(g).astype(np.float64), axis=1)[:, :k]
    part = -np.sort(-s, axis=1)[:, : k + 1]
    mate = np.array([{n: i for i, n in enumerate(g.identities)}.get(p, -1) for p in faces.person[rows]])
    pm = probe_topk_mean(s, k)
    ps = np.sqrt(
        np.maximum((part[:, :k] ** 2).mean(axis=1, keepdims=True) - part[:, :k].mean(1, keepdims=True) ** 2, 1e-6)
    )
    z = 0.5 * ((s - pm) / ps + (s - gs.mean(1)) / np.maximum(gs.std(1), 1e-3))
    return searches_from_scores(z, mate, faces.found[rows])


def bootstrap_ratio(a: Searches, b: Searches, rng: np.random.Generator, reps: int = 500) -> tuple[float, float]:
    """95% interval of FNIR@FPIR1%(b) / FNIR@FPIR1%(a), resampling searches (paired)."""
    mated, nonmated = np.flatnonzero(a.mated), np.flatnonzero(~a.mated)
    ratios = []
    for _ in range(reps):
        ix = np.r_[rng.choice(mated, len(mated)), rng.choice(nonmated, len(nonmated))]
        sa = Searches(a.mated[ix], a.mate_rank[ix], a.top_score[ix])
        sb = Searches(b.mated[ix], b.mate_rank[ix], b.top_score[ix])
        fa = fnir_at(sa, threshold_at_fpir(sa.top_score[~sa.mated], 0.01))
        fb = fnir_at(sb, threshold_at_fpir(sb.top_score[~sb.mated], 0.01))
        ratios.append(fb / fa)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return float(lo), float(hi)


def flip_cost(faces: Faces, count: int = 24) -> dict[str, float]:
    """ms per face: the whole pipeline (detect, landmarks, align, embed) vs one extra flipped embedding."""
    from facesearch.bundle.manifest import ModelBundle
    from facesearch.vision.decode import load_image
    from facesearch.vision.pipeline import FacePipeline, PipelineConfig

    pipe = FacePipeline(
        ModelBundle.load(REPO / ".facesearch" / "models" / "dlib"), PipelineConfig(threads=1, keep_chips=True)
    )
    images = [load_image(p) for p in faces.paths[:: max(1, len(faces.paths) // count)][:count]]
    pipe.analyze(images[0])  # warm up
    start = time.perf_counter()
    found = [f for img in images for f in pipe.analyze(img)]
    pipeline_s = time.perf_counter() - start
    chips = np.stack([f.chip for f in found if f.chip is not None])
    start = time.perf_counter()
    for chip in chips:  # one at a time, as the pipeline embeds a photo's faces
        pipe.embedder.embed(np.ascontiguousarray(chip[None, :, ::-1]))
    flip_s = time.perf_counter() - start
    return {
        "faces": len(chips),
        "pipeline_ms_per_face": 1000 * pipeline_s / len(chips),
        "flip_ms_per_face": 1000 * flip_s / len(chips),
    }


def by_gallery_size(faces: Faces, split: tuple[np.ndarray, ...], k: int, repeats: int = 8) -> list[list[str]]:
    """FNIR at FPIR 1% (its own threshold, + leave-one-out searches) of raw vs normalised, smaller galleries.

    A gallery of N is N random enrolled people of the protocol; the probes of the others
    become non-mated searches.
    """
    gallery, probes, nonmated = split
    rng = np.random.default_rng(7)
    out = []
    for size in (25, 50, 100, 150, 200, 300, len(gallery)):
        acc: dict[str, list[float]] = defaultdict(list)
        for _ in range(repeats if size < len(gallery) else 1):
            keep = rng.permutation(len(gallery))[:size]
            gone = set(faces.person[np.setdiff1d(gallery, gallery[keep])].tolist())
            moved = np.array([i for i in probes if faces.person[i] in gone], np.int64)
            kept = np.array([i for i in probes if faces.person[i] not in gone], np.int64)
            dropped = np.setdiff1d(gallery, gallery[keep])
            sub = (gallery[keep], kept, np.r_[nonmated, moved, dropped].astype(np.int64))
            for name, emb in (("plain", faces.plain), ("flip", faces.flip)):
                scored = run_split(faces, emb, sub, k=k, loo=True)
                acc[f"raw {name}"].append(summary(scored.raw)["fnir@1%"])
                acc[f"norm {name}"].append(summary(scored.normalised)["fnir@1%"])
        out.append(
            [str(size)]
            + [pct(float(np.mean(acc[key]))) for key in ("raw plain", "norm plain", "raw flip", "norm flip")]
        )
    return out


# -- calibration honesty ------------------------------------------------------------------
def honesty(faces: Faces, emb: np.ndarray, splits: int, k: int) -> dict[str, object]:
    """Calibrate on a random half of the identities, check achieved FPIR on the other half."""
    names = np.unique(faces.person)
    events: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    sizes: dict[str, list[int]] = defaultdict(list)
    reasons = []
    for seed in range(splits):
        rng = np.random.default_rng(1000 + seed)
        half_a = set(rng.choice(names, len(names) // 2, replace=False).tolist())
        in_a = np.array([p in half_a for p in faces.person]) & faces.found
        order = np.flatnonzero(in_a)[np.argsort([faces.paths[i].name for i in np.flatnonzero(in_a)], kind="stable")]
        # normalise_from=8: check the normalised table at every size, also below where the decision uses it
        cal = calibrate_open_set(
            emb[order], faces.person[order], source=f"half A seed {seed}", k=k, seed=seed, normalise_from=8
        )
        raw_cal = calibrate(emb[order], faces.person[order], source=f"half A seed {seed}")
        half_b = set(names.tolist()) - half_a
        split = split_people(faces, half_b)
        for label, sub in (("full", 1.0), ("half", 0.5), ("quarter", 0.25)):
            gallery, probes, nonmated = split
            keep = rng.permutation(len(gallery))[: max(k + 2, int(len(gallery) * sub))]
            dropped = np.setdiff1d(np.arange(len(gallery)), keep)
            dropped_people = set(faces.person[gallery[dropped]].tolist())
            moved = np.array([i for i in probes if faces.person[i] in dropped_people], np.int64)
            kept_probes = np.array([i for i in probes if faces.person[i] not in dropped_people], np.int64)
            scored = run_split(
                faces, emb, (gallery[keep], kept_probes, np.r_[nonmated, moved, gallery[dropped]]), k=k, loo=True
            )
            sizes[label].append(scored.gallery_size)
            for fpir in (0.01, 0.001):
                for kind, searches, th in (
                    (
                        "facesearch",
                        scored.normalised,
                        resolve_threshold(cal, None, gallery_size=scored.gallery_size, max_fpir=fpir),
                    ),
                    (
                        "raw",
                        scored.raw,
                        resolve_threshold(None, raw_cal, gallery_size=scored.gallery_size, max_fpir=fpir),
                    ),
                ):
                    n = int((~searches.mated).sum())
                    hits = round(fpir_at(searches, th.score) * n)
                    events[f"{kind}|{label}|{fpir:g}"].append((hits, n, fnir_at(searches, th.score)))
                    if kind == "facesearch" and label == "full" and seed == 0:
                        reasons.append(th.reason)
        del cal
    out: dict[str, object] = {
        "reasons_seed0": reasons,
        "gallery_sizes": {label: [min(v), max(v)] for label, v in sizes.items()},
    }
    for key, vals in events.items():
        hits, n = sum(v[0] for v in vals), sum(v[1] for v in vals)
        lo, hi = wilson_interval(hits, n)
        out[key] = {
            "achieved": hits / n,
            "ci95": [lo, hi],
            "events": hits,
            "searches": n,
            "fnir_mean": float(np.mean([v[2] for v in vals])),
            "per_split_min": min(v[0] / v[1] for v in vals),
            "per_split_max": max(v[0] / v[1] for v in vals),
        }
    return out


def timed(label: str, fn: Callable[[], object], log: dict[str, float]) -> object:
    start = time.perf_counter()
    out = fn()
    log[label] = round(time.perf_counter() - start, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/open_set_faces.npz"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--splits", type=int, default=20, help="identity halves for the calibration check")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "open_set.md")
    args = parser.parse_args(argv)
    secs: dict[str, float] = {}
    faces = timed("embed (or read cache)", lambda: load_faces(args.cache, args.workers), secs)
    assert isinstance(faces, Faces)
    spec = split_people(faces)
    res: dict[str, object] = {
        "machine": machine(),
        "k": DEFAULT_K,
        "split": {
            "gallery": len(spec[0]),
            "probes": len(spec[1]),
            "nonmated": len(spec[2]),
            "photos_without_face": int((~faces.found).sum()),
        },
    }
    # 1. the protocol, same embeddings
    main_rows, det = [], []
    raw_plain = run_split(faces, faces.plain, spec, k=DEFAULT_K)
    ours_plain = raw_plain.normalised
    raw_flip = run_split(faces, faces.flip, spec, k=DEFAULT_K)
    table1 = {
        "raw cosine (dlib-equivalent)": summary(raw_plain.raw),
        "raw cosine + flip": summary(raw_flip.raw),
        "classic AS-norm k=50 (mean+std)": summary(classic_as_norm(faces, faces.plain, spec, 50)),
        f"facesearch normalised k={DEFAULT_K}": summary(ours_plain),
        f"facesearch normalised k={DEFAULT_K} + flip": summary(raw_flip.normalised),
    }
    main_rows = [row(name, s) for name, s in table1.items()]
    det = [
        Curve("raw cosine (dlib-equivalent)", *_det(raw_plain.raw)),
        Curve(f"facesearch k={DEFAULT_K}", *_det(ours_plain)),
        Curve(f"facesearch k={DEFAULT_K} + flip", *_det(raw_flip.normalised)),
    ]
    rng = np.random.default_rng(0)
    res["protocol"] = table1
    res["ratio_ci95_plain"] = bootstrap_ratio(raw_plain.raw, ours_plain, rng)
    res["ratio_ci95_flip"] = bootstrap_ratio(raw_plain.raw, raw_flip.normalised, rng)
    draw_det(det, args.out.with_name("open_set_det.png"), title="lfw-dev open-set: DET (non-mated = 1-photo people)")
    # 2. k, with the leave-one-out searches added (more non-mated searches: steadier FNIR)
    k_rows = []
    for k in (1, 2, 3, 4, 5, 8, 10, 20, 50):
        a = summary(run_split(faces, faces.plain, spec, k=k).normalised)
        b = summary(run_split(faces, faces.plain, spec, k=k, loo=True).normalised)
        k_rows.append(
            [str(k), pct(a["rank1"]), pct(a["fnir@1%"]), pct(a["fnir@0.1%"]), pct(b["fnir@1%"]), pct(b["fnir@0.1%"])]
        )
    raw_loo = summary(run_split(faces, faces.plain, spec, k=DEFAULT_K, loo=True).raw)
    k_rows.append(
        [
            "raw",
            pct(table1["raw cosine (dlib-equivalent)"]["rank1"]),
            pct(table1["raw cosine (dlib-equivalent)"]["fnir@1%"]),
            pct(table1["raw cosine (dlib-equivalent)"]["fnir@0.1%"]),
            pct(raw_loo["fnir@1%"]),
            pct(raw_loo["fnir@0.1%"]),
        ]
    )
    # 3. templates: two enrolled photos per person
    two = split_people(faces, enrol=2)
    t_rows = [row("raw cosine, best face", summary(run_split(faces, faces.plain, two, k=DEFAULT_K).raw))]
    one = (np.array([g for g in two[0] if g not in set(two[0][1::2])]), two[1], two[2])
    t_rows.append(
        row("normalised, first photo only", summary(run_split(faces, faces.plain, one, k=DEFAULT_K).normalised))
    )
    for name, mode, weighted in (
        ("best", "best", False),
        ("mean", "mean", False),
        ("both", "both", False),
        ("mean, quality-weighted", "mean", True),
        ("both, quality-weighted", "both", True),
    ):
        t_rows.append(
            row(
                f"normalised, {name}",
                summary(run_split(faces, faces.plain, two, k=DEFAULT_K, template=mode, weighted=weighted).normalised),
            )
        )
    res["templates_split"] = {"gallery": len(two[0]), "probes": len(two[1]), "nonmated": len(two[2])}
    n_rows = timed("gallery sizes", lambda: by_gallery_size(faces, spec, DEFAULT_K), secs)
    # 4. flip cost, 5. calibration honesty
    res["flip_cost"] = timed("flip cost", lambda: flip_cost(faces), secs)
    res["honesty"] = timed("calibration honesty", lambda: honesty(faces, faces.plain, args.splits, DEFAULT_K), secs)
    res["seconds"] = secs
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(report(res, main_rows, k_rows, t_rows))
    print()
    print(table(n_rows, ["gallery N", "raw", "normalised", "raw + flip", "normalised + flip"]))  # type: ignore[arg-type]
    return 0


def _det(s: Searches) -> tuple[list[float], list[float]]:
    from facesearch.evaluation.ident import det_curve

    _, fpir, fnir = det_curve(s)
    return fpir.tolist(), fnir.tolist()


def report(res: dict, main_rows: list[list[str]], k_rows: list[list[str]], t_rows: list[list[str]]) -> str:
    head = ["scoring", "rank-1", "rank-5", "FNIR @ FPIR 1%", "FNIR @ FPIR 0.1%"]
    lines = [
        table(main_rows, head),
        "",
        table(k_rows, ["k", "rank-1", "FNIR@1%", "FNIR@0.1%", "+LOO FNIR@1%", "+LOO FNIR@0.1%"]),
        "",
        table(t_rows, head),
        "",
    ]
    lines.append(
        json.dumps({k: res[k] for k in ("ratio_ci95_plain", "ratio_ci95_flip", "flip_cost", "seconds")}, default=float)
    )
    honest = res["honesty"]
    h_rows = []
    for key, val in honest.items():
        if key.count("|") != 2:
            continue
        kind, label, fpir = key.split("|")
        lo_n, hi_n = honest["gallery_sizes"][label]
        h_rows.append(
            [
                kind,
                f"{label} ({lo_n}-{hi_n})",
                pct(float(fpir), 2),
                pct(val["achieved"], 3),
                f"{val['events']}/{val['searches']}",
                f"{pct(val['ci95'][0], 3)}-{pct(val['ci95'][1], 3)}",
                f"{pct(val['per_split_min'], 2)}-{pct(val['per_split_max'], 2)}",
                pct(val["fnir_mean"]),
            ]
        )
    lines += [
        "",
        table(h_rows, ["table", "gallery (N)", "requested FPIR", "achieved", "events", "95% CI", "per split", "FNIR"]),
        "",
        "\n".join(honest["reasons_seed0"]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
