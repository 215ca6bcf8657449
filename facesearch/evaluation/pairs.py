"""LFW View-2 pair verification: 10-fold accuracy, ROC AUC, TAR at a fixed FAR.

Protocol: for each of the 10 folds, the similarity threshold that maximises
accuracy on the other 9 folds is applied to this fold; we report the mean and
standard deviation over folds. A pair where either image has no face found is
scored -inf (a non-match), so detection failures cost accuracy as they would in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.errors import InvalidInputError, Reason
from facesearch.scoring.decision import just_above, matches


@dataclass(frozen=True, slots=True)
class Pair:
    fold: int
    a: str  # relative image path: Person/Person_0001.jpg
    b: str
    same: bool


def lfw_image(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def read_pairs(path: Path) -> list[Pair]:
    try:
        lines = path.read_text().split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"cannot read pairs file {path}: {err}", reason=Reason.BAD_PAIRS) from err
    header = lines[0].split()
    if len(header) != 2 or not all(h.isdigit() for h in header):
        raise InvalidInputError(
            f"{path}: first line must be '<folds> <pairs per fold>', got {lines[0]!r}", reason=Reason.BAD_PAIRS
        )
    folds, per = int(header[0]), int(header[1])
    body = [ln.split() for ln in lines[1:] if ln.strip()]
    if len(body) != folds * per * 2:
        raise InvalidInputError(
            f"{path}: expected {folds * per * 2} pair lines, found {len(body)}", reason=Reason.BAD_PAIRS
        )
    pairs = []
    for i, parts in enumerate(body):
        fold = i // (2 * per)
        try:
            if len(parts) == 3:
                pairs.append(Pair(fold, lfw_image(parts[0], int(parts[1])), lfw_image(parts[0], int(parts[2])), True))
            elif len(parts) == 4:
                pairs.append(Pair(fold, lfw_image(parts[0], int(parts[1])), lfw_image(parts[2], int(parts[3])), False))
            else:
                raise ValueError(f"{len(parts)} fields")
        except ValueError as err:
            raise InvalidInputError(
                f"{path}: line {i + 2}: bad pair {' '.join(parts)!r}: {err}", reason=Reason.BAD_PAIRS
            ) from err
    return pairs


@dataclass(frozen=True, slots=True)
class PairsReport:
    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]
    roc_auc: float
    tar_at_far_1e3: float
    pairs: int
    images: int
    images_without_face: int

    def as_dict(self) -> dict[str, object]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    finite = np.unique(scores[np.isfinite(scores)])
    candidates = np.concatenate([[-np.inf], (finite[:-1] + finite[1:]) / 2 if len(finite) > 1 else finite, [np.inf]])
    acc = [np.mean(matches(scores, t) == same) for t in candidates]
    return float(candidates[int(np.argmax(acc))])


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Probability that a random matched pair outscores a random mismatched one (ties half)."""
    pos, neg = scores[same], scores[~same]
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    neg = np.sort(scores[~same])[::-1]
    allowed = int(np.floor(far * len(neg)))
    # the lowest threshold that rejects the `allowed + 1` highest non-matches
    threshold = just_above(float(neg[allowed])) if allowed < len(neg) else -np.inf
    return float(np.mean(matches(scores[same], threshold)))


def evaluate_pairs(pairs: list[Pair], scores: np.ndarray, images_without_face: int, images: int) -> PairsReport:
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    accs, thresholds = [], []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        t = _best_threshold(scores[train], same[train])
        thresholds.append(t)
        accs.append(float(np.mean(matches(scores[test], t) == same[test])))
    finite = np.where(np.isfinite(scores), scores, -2.0)
    return PairsReport(
        accuracy_mean=float(np.mean(accs)),
        accuracy_std=float(np.std(accs)),
        fold_accuracies=tuple(accs),
        thresholds=tuple(thresholds),
        roc_auc=roc_auc(finite, same),
        tar_at_far_1e3=tar_at_far(finite, same, 1e-3),
        pairs=len(pairs),
        images=images,
        images_without_face=images_without_face,
    )


def pair_scores(pairs: list[Pair], embeddings: dict[str, np.ndarray | None]) -> np.ndarray:
    """Cosine similarity per pair; -inf where a face is missing in either image."""
    out = np.empty(len(pairs))
    for i, p in enumerate(pairs):
        ea, eb = embeddings.get(p.a), embeddings.get(p.b)
        out[i] = -np.inf if ea is None or eb is None else float(np.dot(ea, eb))
    return out


def embed_pair_images(
    images_dir: Path, pairs: list[Pair], bundle: Path, *, min_face: int = 40, workers: int = 0, progress: bool = True
) -> tuple[dict[str, np.ndarray | None], int]:
    """Embed every image the pairs name (with ``facesearch embed``'s job); None where no face.

    Returns the embeddings by relative image name and the count of images without a face.
    An image that cannot be read at all is an error, not a miss: the protocol would be wrong.
    """
    from facesearch.jobs.embed import embed_paths  # noqa: PLC0415 - pulls in the pipeline

    names = sorted({p.a for p in pairs} | {p.b for p in pairs})
    rows = embed_paths(bundle, [images_dir / n for n in names], min_face=min_face, workers=workers, progress=progress)
    found, emb, errors = rows["found"], rows["embeddings"], rows["errors"]
    bad = [(n, str(e)) for n, e in zip(names, errors, strict=True) if e]
    if bad:
        raise InvalidInputError(
            f"{len(bad)} pair images could not be read, e.g. {bad[0][0]}: {bad[0][1]}", reason=Reason.BAD_PAIRS
        )
    return {n: (emb[i] if found[i] else None) for i, n in enumerate(names)}, int((~found).sum())
