"""Measure model bundles on a labelled face set: 10-fold pair verification and open-set identification.

The two measures of the promotion gate and of a training run's model card:

- *pairs*: the LFW View-2 protocol of :mod:`facesearch.evaluation.pairs` (10 folds, the threshold
  chosen on 9 applied to the 10th), on a ``pairs.txt`` when given, else on pairs drawn from
  the set itself (:func:`draw_pairs`: seeded, each fold its own people);
- *ident*: the open-set split of :mod:`facesearch.evaluation.ident_split` (gallery = first photo of
  each person with two or more, probes = their other photos, non-mated = the one-photo
  people), scored as the server decides (:mod:`facesearch.evaluation.ident_scoring`, normalised
  score, default ``k`` and template): rank-1 and FNIR at FPIR 1%.

A face set is cut once into aligned chips (the most central face of each photo, as
``facesearch embed`` picks it). Bundles that share the detector and landmark files (a
fine-tuned bundle copies its base's) see the very same chips, so a before/after comparison
differs only by the embedder. Pure onnxruntime and numpy: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import FaceSearchError, InvalidInputError, Reason
from facesearch.evaluation.ident import evaluate as evaluate_searches
from facesearch.evaluation.ident_scoring import score_split
from facesearch.evaluation.ident_split import identity_photos, open_set_split
from facesearch.evaluation.pairs import Pair, evaluate_pairs, pair_scores, read_pairs
from facesearch.scoring.normalise import DEFAULT_K
from facesearch.scoring.templates import DEFAULT_TEMPLATE

FOLDS = 10
FPIR = 0.01
FPIR_KEY = f"{FPIR:g}"
#: Matched pairs drawn per person at most (people with many photos would dominate otherwise).
MAX_MATCHED_PER_PERSON = 5


@dataclass(frozen=True, slots=True)
class FaceSet:
    """Photos of labelled people, cut into chips once. ``chips[i]`` is zeros where ``found[i]`` is False."""

    names: tuple[str, ...]  # <Person>/<photo>, unique
    labels: np.ndarray  # (n,) str: the person of each photo
    chips: np.ndarray  # (n, size, size, 3) uint8
    found: np.ndarray  # (n,) bool
    source: str

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.labels) != n or len(self.chips) != n or len(self.found) != n:
            raise InvalidInputError("face set arrays must be parallel", reason=Reason.BAD_FACE_SET)
        if len(set(self.names)) != n:
            raise InvalidInputError("face set names must be unique", reason=Reason.BAD_FACE_SET)

    @classmethod
    def from_chips(
        cls, chips: np.ndarray, labels: Sequence[str], names: Sequence[str] | None = None, *, source: str = "chips"
    ) -> FaceSet:
        """A face set of already aligned chips (e.g. a training run's validation cache): every face found."""
        labels_arr = np.asarray([str(v) for v in labels], dtype=str)
        if names is None:
            names = [f"{label}/{i:06d}" for i, label in enumerate(labels_arr)]
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[3] != 3 or chips.dtype != np.uint8:
            raise InvalidInputError(
                f"chips must be uint8 (N, size, size, 3), got {chips.dtype} {chips.shape}", reason=Reason.BAD_FACE_SET
            )
        return cls(tuple(str(n) for n in names), labels_arr, chips, np.ones(len(chips), bool), source)

    @property
    def identities(self) -> int:
        return len(np.unique(self.labels))


def tree_names(tree: Path, pairs: Sequence[Pair] = ()) -> list[str]:
    """Every ``<Person>/<photo>`` under ``tree``; pair images must be among them."""
    people = identity_photos(tree)
    names = [f"{person}/{photo.name}" for person, photos in people.items() for photo in photos]
    known = set(names)
    missing = sorted({n for p in pairs for n in (p.a, p.b)} - known)
    if missing:
        raise InvalidInputError(
            f"{len(missing)} pair images are not under {tree}, e.g. {missing[0]}", reason=Reason.BAD_PAIRS
        )
    return names


def cut_chips(
    bundle: ModelBundle,
    tree: Path,
    names: Sequence[str],
    *,
    min_face: int = 40,
    threads: int | None = None,
    progress: bool = False,
) -> FaceSet:
    """Detect, align and cut the most central face of each photo with ``bundle``'s detector and landmarks."""
    from tqdm import tqdm  # noqa: PLC0415

    from facesearch.vision.decode import load_image  # noqa: PLC0415
    from facesearch.vision.pipeline import FacePipeline, PipelineConfig  # noqa: PLC0415

    pipeline = FacePipeline(bundle, PipelineConfig(min_face=min_face, threads=threads))
    size = bundle.chip_size
    chips = np.zeros((len(names), size, size, 3), np.uint8)
    found = np.zeros(len(names), bool)
    for i, name in enumerate(tqdm(names, desc="faces", unit="img", disable=not progress, dynamic_ncols=True)):
        try:
            image = load_image(tree / name)
        except FaceSearchError as err:
            raise InvalidInputError(
                f"{tree / name}: unreadable evaluation photo: {err}", reason=Reason.BAD_IMAGES
            ) from err
        dets = pipeline.detect(image)
        if not dets:
            continue
        cy, cx = image.shape[0] / 2.0, image.shape[1] / 2.0
        det = min(dets, key=lambda d: ((d.box[0] + d.box[2]) / 2 - cx) ** 2 + ((d.box[1] + d.box[3]) / 2 - cy) ** 2)
        chips[i] = pipeline.align(image, [det.box])[1][0]
        found[i] = True
    labels = np.asarray([n.split("/", 1)[0] for n in names], dtype=str)
    return FaceSet(tuple(names), labels, chips, found, f"{tree} ({len(names)} photos, min_face {min_face})")


def shares_chips(a: ModelBundle, b: ModelBundle) -> bool:
    """True when both bundles cut identical chips (same detector, landmarks, chip geometry, preprocessing)."""

    def key(m: ModelBundle) -> Any:
        files = m.manifest["files"]
        return (
            files.get(str(m.section("detector")["file"])),
            files.get(str(m.section("landmarks")["file"])),
            m.manifest.get("chip"),
            m.manifest.get("preprocessing_version"),
        )

    return bool(key(a) == key(b))


def embed_faces(bundle: ModelBundle, faces: FaceSet, *, threads: int | None = None) -> np.ndarray:
    """L2-normalised embeddings of the found chips (zero rows elsewhere), as the runtime pipeline embeds."""
    from facesearch.vision.pipeline import FacePipeline, PipelineConfig  # noqa: PLC0415

    if faces.chips.shape[1] != bundle.chip_size:
        raise InvalidInputError(
            f"chips are {faces.chips.shape[1]} px, bundle {bundle.root} wants {bundle.chip_size}",
            reason=Reason.BAD_FACE_SET,
        )
    pipeline = FacePipeline(bundle, PipelineConfig(threads=threads))
    out = np.zeros((len(faces.names), pipeline.embedder.dim), np.float32)
    rows = np.flatnonzero(faces.found)
    if len(rows):
        out[rows] = pipeline.embed_chips(faces.chips[rows])
    return out


def draw_pairs(faces: FaceSet, *, folds: int = FOLDS, seed: int = 0) -> list[Pair]:
    """Seeded 10-fold pairs from the set: people split into folds; per fold, matched pairs (at most
    :data:`MAX_MATCHED_PER_PERSON` per person) and as many mismatched pairs between its people."""
    rng = np.random.default_rng(seed)
    by_person: dict[str, list[str]] = {}
    for name, label in zip(faces.names, faces.labels.tolist(), strict=True):
        by_person.setdefault(label, []).append(name)
    people = sorted(by_person)
    order = rng.permutation(len(people))
    pairs: list[Pair] = []
    for fold in range(folds):
        members = [people[i] for i in order[fold::folds]]
        matched = []
        for person in members:
            photos = by_person[person]
            combos = [(a, b) for i, a in enumerate(photos) for b in photos[i + 1 :]]
            if len(combos) > MAX_MATCHED_PER_PERSON:
                combos = [combos[j] for j in sorted(rng.choice(len(combos), MAX_MATCHED_PER_PERSON, replace=False))]
            matched += combos
        if not matched or len(members) < 2:
            raise InvalidInputError(
                f"fold {fold} of {folds} has no matched pair or fewer than two people: the set needs at least "
                f"{2 * folds} people, several with two or more photos ({len(people)} people given)",
                reason=Reason.BAD_FACE_SET,
            )
        mismatched: set[tuple[str, str]] = set()
        for _ in range(50 * len(matched)):
            if len(mismatched) == len(matched):
                break
            i, j = rng.choice(len(members), 2, replace=False)
            a = by_person[members[i]][int(rng.integers(len(by_person[members[i]])))]
            b = by_person[members[j]][int(rng.integers(len(by_person[members[j]])))]
            mismatched.add((a, b))
        pairs += [Pair(fold, a, b, True) for a, b in matched]
        pairs += [Pair(fold, a, b, False) for a, b in sorted(mismatched)]
    return pairs


@dataclass(frozen=True, slots=True)
class BundleScores:
    """The headline numbers of one bundle on one face set (plus the full reports)."""

    bundle: str
    model_id: str
    contract_id: str
    pairs_accuracy: float
    pairs_accuracy_std: float
    rank1: float | None
    fnir_at_fpir_1pct: float | None  # normalised (server decision) score
    faces_found: int
    photos: int
    pairs_report: dict[str, Any]
    ident_report: dict[str, Any] | None

    def headline(self) -> dict[str, Any]:
        return {
            "pairs_accuracy": self.pairs_accuracy,
            "pairs_accuracy_std": self.pairs_accuracy_std,
            "rank1": self.rank1,
            "fnir_at_fpir_1pct": self.fnir_at_fpir_1pct,
            "faces_found": self.faces_found,
            "photos": self.photos,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "model_id": self.model_id,
            "contract_id": self.contract_id,
            **self.headline(),
            "pairs": self.pairs_report,
            "ident": self.ident_report,
        }


def score_embeddings(
    faces: FaceSet,
    embeddings: np.ndarray,
    pairs: Sequence[Pair],
    *,
    k: int = DEFAULT_K,
    template: str = DEFAULT_TEMPLATE,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(pairs report, ident report or None when the split has too few people for ``k``)."""
    by_name = {n: (embeddings[i] if faces.found[i] else None) for i, n in enumerate(faces.names)}
    pair_list = list(pairs)
    used = {n for p in pair_list for n in (p.a, p.b)}
    report = evaluate_pairs(
        pair_list, pair_scores(pair_list, by_name), sum(1 for n in used if by_name.get(n) is None), len(used)
    )
    people: dict[str, list[str]] = {}
    for name, label in zip(faces.names, faces.labels.tolist(), strict=True):
        people.setdefault(label, []).append(name)
    split = open_set_split({p: sorted(v) for p, v in people.items()})  # type: ignore[arg-type]
    row = {n: i for i, n in enumerate(faces.names)}
    gal = np.array([row[str(n)] for n in split.gallery], np.int64)
    gal = gal[faces.found[gal]]
    if len(gal) < k + 2:
        return report.as_dict(), None
    prb = np.array([row[str(n)] for n in (*split.probes, *split.nonmated)], np.int64)
    scored = score_split(
        embeddings[gal], faces.labels[gal], embeddings[prb], faces.labels[prb], faces.found[prb], k=k, template=template
    )
    norm = evaluate_searches(
        scored.normalised,
        scoring=f"facesearch normalised k={k}, template {template}",
        gallery_size=scored.gallery_size,
        fpir_levels=(FPIR,),
    )
    raw = evaluate_searches(
        scored.raw, scoring="raw cosine (best face)", gallery_size=scored.gallery_size, fpir_levels=(FPIR,)
    )
    ident = {
        "gallery_size": scored.gallery_size,
        "nonmated_source": scored.nonmated_source,
        "k": k,
        "template": template,
        "facesearch": _without_det(norm.as_dict()),
        "raw": _without_det(raw.as_dict()),
    }
    return report.as_dict(), ident


def _without_det(report: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in report.items() if key != "det"}


def score_bundle(
    bundle: ModelBundle, faces: FaceSet, pairs: Sequence[Pair], *, threads: int | None = None
) -> BundleScores:
    embeddings = embed_faces(bundle, faces, threads=threads)
    pairs_report, ident = score_embeddings(faces, embeddings, pairs)
    norm = ident["facesearch"] if ident else None
    return BundleScores(
        bundle=str(bundle.root),
        model_id=bundle.model_id,
        contract_id=bundle.contract_id,
        pairs_accuracy=float(pairs_report["accuracy_mean"]),
        pairs_accuracy_std=float(pairs_report["accuracy_std"]),
        rank1=float(norm["rank1"]) if norm else None,
        fnir_at_fpir_1pct=float(norm["fnir_at_fpir"][FPIR_KEY]) if norm else None,
        faces_found=int(faces.found.sum()),
        photos=len(faces.names),
        pairs_report=pairs_report,
        ident_report=ident,
    )


@dataclass(frozen=True, slots=True)
class EvalSet:
    """Where the faces come from: an identity tree, and optionally a pairs.txt relative to it."""

    tree: Path
    pairs_file: Path | None = None
    min_face: int = 40
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "tree": str(self.tree),
            "pairs": str(self.pairs_file) if self.pairs_file else "drawn from the tree",
            "min_face": self.min_face,
            "seed": self.seed,
        }


def evaluate_bundles(
    roots: Sequence[Path], eval_set: EvalSet, *, threads: int | None = None, progress: bool = False
) -> list[BundleScores]:
    """Score each bundle on the same faces and pairs; chips are cut once per distinct detector + landmarks."""
    bundles = [ModelBundle.load(root) for root in roots]
    pairs = read_pairs(eval_set.pairs_file) if eval_set.pairs_file else []
    names = tree_names(eval_set.tree, pairs)
    cut: list[tuple[ModelBundle, FaceSet]] = []
    out = []
    for bundle in bundles:
        faces = next((f for b, f in cut if shares_chips(b, bundle)), None)
        if faces is None:
            faces = cut_chips(
                bundle, eval_set.tree, names, min_face=eval_set.min_face, threads=threads, progress=progress
            )
            cut.append((bundle, faces))
        bundle_pairs = pairs or draw_pairs(faces, seed=eval_set.seed)
        out.append(score_bundle(bundle, faces, bundle_pairs, threads=threads))
    return out
