"""Training data split: identity-disjoint, seeded; validation pairs; class balance."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision", reason="training needs torch and torchvision (the export extra)")

from facesearch.errors import TrainingError
from training.split import class_balance, split_identities, validation_pairs


def _identities(n_people: int = 60) -> list[str]:
    """Chip i's identity: person p has (p % 7) + 1 chips, interleaved as a real folder walk would not be."""
    out = []
    for p in range(n_people):
        out += [f"person{p:03d}"] * ((p % 7) + 1)
    return out[::-1]


def test_split_is_identity_disjoint_and_complete() -> None:
    ids = _identities()
    split = split_identities(ids, val_fraction=0.25, min_images=2, seed=3)
    assert not set(split.train) & set(split.val)
    kept = {k for k in set(ids) if ids.count(k) >= 2}
    assert set(split.train) | set(split.val) == kept
    assert set(split.dropped) == set(ids) - kept and all(v == 1 for v in split.dropped.values())
    for groups in (split.train, split.val):
        for identity, chips in groups.items():
            assert all(ids[i] == identity for i in chips)
    assert len(split.val) == round(len(kept) * 0.25)
    chips, labels = split.train_labels
    assert len(chips) == len(labels) == sum(len(v) for v in split.train.values())
    assert sorted(set(labels)) == list(range(len(split.train)))


def test_split_is_seeded() -> None:
    ids = _identities()
    a = split_identities(ids, val_fraction=0.25, min_images=2, seed=3)
    b = split_identities(ids, val_fraction=0.25, min_images=2, seed=3)
    c = split_identities(ids, val_fraction=0.25, min_images=2, seed=4)
    assert a == b
    assert set(a.val) != set(c.val)


def test_split_min_images_drops_small_identities() -> None:
    ids = _identities()
    split = split_identities(ids, val_fraction=0.25, min_images=4, seed=0)
    assert all(len(v) >= 4 for v in [*split.train.values(), *split.val.values()])
    assert all(n < 4 for n in split.dropped.values())


def test_split_refuses_too_few_identities() -> None:
    with pytest.raises(TrainingError) as err:
        split_identities(["a", "a", "b", "b", "c", "c"], val_fraction=0.5, min_images=2, seed=0)
    assert err.value.reason == "TRAINING_DATA"


def test_validation_pairs_folds_and_labels() -> None:
    ids = _identities()
    split = split_identities(ids, val_fraction=0.5, min_images=2, seed=1)
    pairs = validation_pairs(split.val, pairs_per_fold=20, seed=1)
    assert pairs == validation_pairs(split.val, pairs_per_fold=20, seed=1)
    folds = {p.fold for p in pairs}
    assert folds == set(range(10))
    fold_people: dict[int, set[str]] = {}
    for p in pairs:
        a, b = ids[int(p.a)], ids[int(p.b)]
        assert a in split.val and b in split.val
        assert (a == b) == p.same and p.a != p.b
        fold_people.setdefault(p.fold, set()).update((a, b))
    for f in folds:  # identity-disjoint folds, as LFW View 2
        for g in folds - {f}:
            assert not fold_people[f] & fold_people[g]
    for f in folds:  # balanced: as many matched as mismatched pairs in each fold
        in_fold = [p for p in pairs if p.fold == f]
        assert sum(p.same for p in in_fold) * 2 == len(in_fold) > 0
    assert len({(p.a, p.b) for p in pairs}) == len(pairs)


def test_class_balance_report() -> None:
    ids = _identities()
    split = split_identities(ids, val_fraction=0.25, min_images=2, seed=0)
    pairs = validation_pairs(split.val, pairs_per_fold=20, seed=0)
    rejects = [{"path": "x.jpg", "identity": "p", "reason": "NO_FACE", "detail": ""}]
    report = class_balance(split, len(ids), rejects, 2, pairs)
    assert report["reject_reasons"] == {"NO_FACE": 1}
    assert report["dropped_identities"] == len(split.dropped)
    assert sum(report["train"]["images_per_identity"].values()) == len(split.train)
    assert report["train"]["chips"] + report["val"]["chips"] + report["dropped_chips"] == len(ids)
