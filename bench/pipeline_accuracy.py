"""Pair-verification accuracy of facesearch next to dlib's own pipeline, same run.

LFW View-2 protocol on ../shared/data/lfw-dev/pairs.txt (threshold chosen on 9 folds,
tested on the 10th; a face not found makes the pair a non-match). dlib's pipeline is
face_recognition with the HOG detector (all folds) and the CNN detector (the first
``--cnn-folds`` folds: it takes ~2 s per photo on this machine), 5-point landmarks,
one descriptor per photo: the face nearest the image centre, the same rule as ours.

    bash bench/setup.sh && .venv/bin/python -m bench.pipeline_accuracy --cnn-folds 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.common import REPO, data_dir, machine, table
from facesearch.evaluation.pairs import Pair, PairsReport, embed_pair_images, evaluate_pairs, pair_scores, read_pairs


def _dlib_embed(task: tuple[str, str]) -> tuple[str, np.ndarray | None]:
    path, model = task
    import face_recognition

    image = face_recognition.load_image_file(path)
    locations = face_recognition.face_locations(image, 1, model)
    if not locations:
        return path, None
    cy, cx = image.shape[0] / 2, image.shape[1] / 2
    nearest = min(locations, key=lambda b: ((b[0] + b[2]) / 2 - cy) ** 2 + ((b[1] + b[3]) / 2 - cx) ** 2)
    encoding = face_recognition.face_encodings(image, [nearest], 1, "small")[0]
    return path, encoding / np.linalg.norm(encoding)


def _dlib_embeddings(images: Path, pairs: list[Pair], model: str, workers: int) -> tuple[dict, int]:
    names = sorted({p.a for p in pairs} | {p.b for p in pairs})
    tasks = [(str(images / n), model) for n in names]
    out: dict[str, np.ndarray | None] = {}
    with mp.get_context("spawn").Pool(workers) as pool:
        for path, emb in tqdm(pool.imap_unordered(_dlib_embed, tasks), total=len(tasks), desc=f"dlib {model}"):
            out[str(Path(path).relative_to(images))] = emb
    return out, sum(v is None for v in out.values())


def _row(name: str, r: PairsReport) -> list[str]:
    # With one fold there are no other folds to choose a threshold on: accuracy is undefined.
    accuracy = (
        f"{r.accuracy_mean * 100:.2f} +/- {r.accuracy_std * 100:.2f}"
        if len(r.fold_accuracies) > 1
        else "n/a (one fold)"
    )
    return [
        name,
        accuracy,
        f"{r.roc_auc:.4f}",
        f"{r.tar_at_far_1e3 * 100:.1f}%",
        f"{r.images_without_face} / {r.images}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cnn-folds", type=int, default=2, help="folds to run dlib's slow CNN detector on (0: none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bundle", type=Path, default=REPO / ".facesearch" / "models" / "dlib")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pipeline_accuracy.md")
    args = parser.parse_args(argv)
    lfw = data_dir() / "lfw-dev"
    pairs = read_pairs(lfw / "pairs.txt")
    images = lfw / "images"

    results: list[list[str]] = []
    ours, ours_missing = embed_pair_images(images, pairs, args.bundle, min_face=40, workers=args.workers)
    results.append(
        _row("facesearch (min_face 40)", evaluate_pairs(pairs, pair_scores(pairs, ours), ours_missing, len(ours)))
    )
    hog, hog_missing = _dlib_embeddings(images, pairs, "hog", args.workers)
    results.append(
        _row("dlib face_recognition HOG", evaluate_pairs(pairs, pair_scores(pairs, hog), hog_missing, len(hog)))
    )
    sub_rows: list[list[str]] = []
    if args.cnn_folds:
        subset = [p for p in pairs if p.fold < args.cnn_folds]
        # evaluate a subset as its own k-fold protocol (threshold from the other subset folds)
        cnn, cnn_missing = _dlib_embeddings(images, subset, "cnn", args.workers)
        for name, emb in (
            ("facesearch (min_face 40)", ours),
            ("dlib face_recognition HOG", hog),
            ("dlib face_recognition CNN", cnn),
        ):
            used = {n: emb[n] for n in {p.a for p in subset} | {p.b for p in subset}}
            missing = sum(v is None for v in used.values())
            sub_rows.append(_row(name, evaluate_pairs(subset, pair_scores(subset, used), missing, len(used))))
        del cnn_missing
    header = ["pipeline", "accuracy % (mean +/- std over folds)", "ROC AUC", "TAR @ FAR 1e-3", "no face / images"]
    text = [
        "# Pair verification on lfw-dev: facesearch vs dlib's pipeline, same run",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python -m bench.pipeline_accuracy --cnn-folds {args.cnn_folds}`.",
        f"Protocol: LFW View-2 on {lfw}/pairs.txt ({len(pairs)} pairs, 10 folds).",
        "",
        table(results, header),
    ]
    if sub_rows:
        text += [
            "",
            f"Folds 1-{args.cnn_folds} only ({2 * args.cnn_folds * 100} pairs; each fold's threshold from the "
            "other folds of this subset), where dlib's CNN pipeline also ran:",
            "",
            table(sub_rows, header),
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
