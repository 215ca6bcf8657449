"""Identity-disjoint train/validation split, validation pairs (LFW View-2 style), class balance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facesearch.errors import Reason, TrainingError
from facesearch.evaluation.pairs import Pair

FOLDS = 10


@dataclass(frozen=True, slots=True)
class Split:
    """Chip indices per identity; no identity is in both ``train`` and ``val``."""

    train: dict[str, list[int]]
    val: dict[str, list[int]]
    dropped: dict[str, int]  # identity -> usable chips, for identities under min_images

    @property
    def train_labels(self) -> tuple[list[int], list[int]]:
        """(chip indices, class labels) of the training set; classes are the sorted train identities."""
        chips, labels = [], []
        for label, identity in enumerate(sorted(self.train)):
            chips += self.train[identity]
            labels += [label] * len(self.train[identity])
        return chips, labels

    @property
    def val_chips(self) -> list[int]:
        return sorted(i for idx in self.val.values() for i in idx)


def split_identities(
    identities: Sequence[str], *, val_fraction: float, min_images: int, seed: int, min_val_identities: int = 4
) -> Split:
    """Seeded split of the identities with >= ``min_images`` chips; ``identities[i]`` is chip i's identity."""
    per: dict[str, list[int]] = {}
    for i, identity in enumerate(identities):
        per.setdefault(identity, []).append(i)
    kept = sorted(k for k, v in per.items() if len(v) >= min_images)
    dropped = {k: len(v) for k, v in sorted(per.items()) if len(v) < min_images}
    n_val = round(len(kept) * val_fraction)
    if n_val < min_val_identities or len(kept) - n_val < 2:
        raise TrainingError(
            f"{len(kept)} identities have >= {min_images} usable face photos: too few for a validation split of "
            f"{min_val_identities} identities (folds of 2 identities) and a training set of 2 "
            "(add data, raise --val-fraction or lower --min-images)",
            reason=Reason.TRAINING_DATA,
        )
    order = np.random.default_rng(seed).permutation(len(kept))
    val_ids = {kept[i] for i in order[:n_val]}
    return Split(
        train={k: per[k] for k in kept if k not in val_ids},
        val={k: per[k] for k in kept if k in val_ids},
        dropped=dropped,
    )


def validation_pairs(val: dict[str, list[int]], *, pairs_per_fold: int, seed: int) -> list[Pair]:
    """Identity-disjoint folds (10, or one per 2 identities when fewer than 20) of matched + mismatched
    pairs, as many of each, up to ``pairs_per_fold / 2``. LFW View 2's protocol, on held-out identities.

    A pair names chips by index (``Pair.a`` / ``Pair.b`` are ``str(chip index)``).
    """
    rng = np.random.default_rng(seed + 1)
    ids = sorted(val)
    ids = [ids[i] for i in rng.permutation(len(ids))]
    folds = max(1, min(FOLDS, len(ids) // 2))
    pairs: list[Pair] = []
    for fold in range(folds):
        members = ids[fold::folds]
        matched = [(a, b) for k in members for j, a in enumerate(val[k]) for b in val[k][j + 1 :]]
        sizes = [len(val[k]) for k in members]
        cross = (sum(sizes) ** 2 - sum(n * n for n in sizes)) // 2
        want = min(pairs_per_fold // 2, len(matched), cross)
        for m in rng.choice(len(matched), size=want, replace=False):
            a, b = matched[int(m)]
            pairs.append(Pair(fold, str(a), str(b), True))
        seen: set[tuple[int, int]] = set()
        while len(seen) < want:
            ka, kb = rng.choice(len(members), size=2, replace=False)
            a = int(rng.choice(val[members[int(ka)]]))
            b = int(rng.choice(val[members[int(kb)]]))
            key = (min(a, b), max(a, b))
            if key not in seen:
                seen.add(key)
                pairs.append(Pair(fold, str(a), str(b), False))
    return pairs


def class_balance(
    split: Split, chips_images: int, rejects: Sequence[dict[str, str]], min_images: int, pairs: Sequence[Pair]
) -> dict[str, Any]:
    """The class-balance report written to ``RUN_DIR/class_balance.json``."""

    def histogram(groups: dict[str, list[int]]) -> dict[str, int]:
        hist: dict[int, int] = {}
        for v in groups.values():
            hist[len(v)] = hist.get(len(v), 0) + 1
        return {str(k): hist[k] for k in sorted(hist)}

    reasons: dict[str, int] = {}
    for rej in rejects:
        reasons[rej["reason"]] = reasons.get(rej["reason"], 0) + 1
    train_sizes = [len(v) for v in split.train.values()]
    return {
        "chips": chips_images,
        "rejected_photos": len(rejects),
        "reject_reasons": reasons,
        "min_images": min_images,
        "dropped_identities": len(split.dropped),
        "dropped_chips": sum(split.dropped.values()),
        "train": {
            "identities": len(split.train),
            "chips": sum(train_sizes),
            "images_per_identity": histogram(split.train),
            "min": min(train_sizes),
            "max": max(train_sizes),
            "mean": float(np.mean(train_sizes)),
        },
        "val": {
            "identities": len(split.val),
            "chips": sum(len(v) for v in split.val.values()),
            "images_per_identity": histogram(split.val),
            "pairs": len(pairs),
            "matched_pairs": sum(p.same for p in pairs),
        },
        "dropped": split.dropped,
    }
