"""Make the committed test fixture set in ``tests/data`` from the shared LFW dev data.

    .venv/bin/python tests/data/make_fixtures.py [--source ../shared/data] [--out tests/data] [--bundle DIR]

Every choice is a rule on the sorted source tree, so a rerun on the same source writes the same
files (``SHA256SUMS`` lists them; ``sha256sum -c SHA256SUMS`` in ``tests/data`` checks them):

``lfw-dev/images/<Person>/<Person>_NNNN.jpg``
    Byte copies. Each rule in :data:`RULES` mirrors a test fixture that picks "the first N people
    (by name) with so many photos"; the people every rule picks on the full tree are copied, each
    with as many of its first photos as keep every rule's choice the same on the small tree (this
    is checked before anything is written). Plus :data:`GROUP_PHOTOS` group photos.
``group_photos.txt``
    The group photos, relative to ``lfw-dev/images``: scanning the photos from the end of the
    sorted list (people no rule picks), the first ones in which the face pipeline finds two or more
    faces at ``min_face`` 80, so the server (tests run it at 80) and the indexer (40) both see
    several faces. Each is copied alone into its person's folder.
``face_embedding_model.npz``
    Copied: the synthetic-gallery statistics (see the shared data README).
``server_embeddings.npz``
    Embeddings of lfw-dev photos by the default exported bundle (``facesearch-export dlib``), for
    the server's open-set fixtures (``tests/integration/server_fixtures.py``), which need hundreds
    of people: far more photos than belong in the repository. ``gallery_*``: the first photo of
    each of the first :data:`GALLERY_CANDIDATES` people (not among the server people), embedded
    as ``facesearch-index`` does at ``min_face`` 80 (the photos with a face, in order).
    ``calibration_*``: the first :data:`CALIBRATION_PER_PERSON` photos of the last
    :data:`CALIBRATION_PEOPLE` people (not among the server people), embedded as
    ``facesearch eval calibrate`` does. ``contract_id``: the bundle's; the fixtures refuse the file
    when the exported bundle's contract differs (rerun this script).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MANY = 10**9

GROUP_PHOTOS = 4
GROUP_MIN_FACE = 80
GALLERY_CANDIDATES = 150  # the server fixtures publish 140 of those with a face
CALIBRATION_PEOPLE = 330  # the open-set calibration measures galleries up to half of them (165)
CALIBRATION_PER_PERSON = 2
DATA_FILES = ("group_photos.txt", "face_embedding_model.npz", "server_embeddings.npz")


@dataclass(frozen=True, slots=True)
class Rule:
    """The first ``count`` people (sorted by name) with ``least`` to ``most`` photos; the test uses
    their first ``use`` photos."""

    fixture: str
    least: int
    most: int
    count: int
    use: int

    def pick(self, tree: Mapping[str, list[Path]]) -> list[str]:
        return [name for name in sorted(tree) if self.least <= len(tree[name]) <= self.most][: self.count]


SERVER_PEOPLE = Rule("tests/integration/server_fixtures.py: people", 6, MANY, 8, 6)
RULES = (
    SERVER_PEOPLE,
    Rule("tests/integration/test_pipeline_embed.py: same person closer", 2, MANY, 3, 2),
    Rule("tests/integration/test_indexer_images.py: people", 3, MANY, 6, 3),
    Rule("tests/integration/test_ident_eval_cli.py: enrolled", 2, 3, 10, 3),
    Rule("tests/integration/test_ident_eval_cli.py: strangers", 1, 1, 6, 1),
    Rule("tests/integration/test_training_tiny_run.py: tiny_tree", 4, MANY, 12, 4),
    Rule("tests/integration/test_training_export.py: people", 3, MANY, 8, 4),
    Rule("tests/integration/checkpoint_fixtures.py: eval_tree, 2+ photos", 2, MANY, 24, 4),
    Rule("tests/integration/checkpoint_fixtures.py: eval_tree, singles", 1, 1, 8, 1),
)


def read_tree(images: Path) -> dict[str, list[Path]]:
    """Person name -> sorted photo paths."""
    return {p.name: sorted(p.glob("*.jpg")) for p in sorted(images.iterdir()) if p.is_dir()}


def photos_to_copy(tree: Mapping[str, list[Path]]) -> dict[str, int]:
    """Person -> how many of their first photos to copy so that every rule picks the same people.

    A person keeps their photo count's class (1, 2, 3, 4-5, 6+) wherever a rule could tell: 6+
    needs 6 photos only up to the server rule's last pick (no other rule asks for 6)."""
    used: dict[str, int] = {}
    for rule in RULES:
        for name in rule.pick(tree):
            used[name] = max(used.get(name, 0), rule.use)
    last_server = SERVER_PEOPLE.pick(tree)[-1]
    out = {}
    for name, use in used.items():
        have = len(tree[name])
        if have >= 6 and name <= last_server:
            out[name] = 6
        elif have >= 4:
            out[name] = min(have, max(use, 4))
        else:
            out[name] = have
    return out


def check_rules(full: Mapping[str, list[Path]], small: Mapping[str, list[Path]]) -> None:
    for rule in RULES:
        if rule.pick(full) != rule.pick(small):
            raise SystemExit(f"make_fixtures: {rule.fixture} would pick other people on the small tree")


def group_photos(tree: Mapping[str, list[Path]], bundle: Path, skip: Iterable[str]) -> list[Path]:
    from facesearch.bundle.manifest import ModelBundle
    from facesearch.vision.decode import load_image
    from facesearch.vision.pipeline import FacePipeline, PipelineConfig

    pipeline = FacePipeline(ModelBundle.load(bundle), PipelineConfig(min_face=GROUP_MIN_FACE, threads=1))
    taken = set(skip)
    found: list[Path] = []
    for photo in sorted((p for name, ps in tree.items() if name not in taken for p in ps), reverse=True):
        if len(pipeline.detect(load_image(photo))) >= 2:
            found.append(photo)
            if len(found) == GROUP_PHOTOS:
                break
    return found


def server_embeddings(tree: Mapping[str, list[Path]], bundle: Path, workers: int) -> dict[str, Any]:
    from facesearch.bundle.manifest import ModelBundle
    from facesearch.jobs.embed import embed_paths

    server = set(SERVER_PEOPLE.pick(tree))
    others = [name for name in sorted(tree) if name not in server]
    gallery = [tree[name][0] for name in others[:GALLERY_CANDIDATES]]
    rows = embed_paths(bundle, gallery, min_face=80, workers=workers, progress=False)
    g = rows["image_index"][rows["found"]]
    calibration = sorted(p for name in others[::-1][:CALIBRATION_PEOPLE] for p in tree[name][:CALIBRATION_PER_PERSON])
    cal = embed_paths(bundle, calibration, workers=workers, progress=False)
    c = cal["image_index"][cal["found"]]
    return {
        "contract_id": np.asarray(ModelBundle.load(bundle).contract_id),
        "gallery_embeddings": rows["embeddings"][rows["found"]].astype(np.float32),
        "gallery_names": np.asarray([gallery[i].parent.name for i in g]),
        "gallery_photos": np.asarray([gallery[i].name for i in g]),
        "calibration_embeddings": cal["embeddings"][cal["found"]].astype(np.float32),
        "calibration_labels": np.asarray([calibration[i].parent.name for i in c]),
        "calibration_photos": np.asarray([calibration[i].name for i in c]),
    }


def sha256_lines(root: Path) -> list[str]:
    data = [*(root / "lfw-dev").rglob("*.jpg"), *(root / name for name in DATA_FILES)]
    files = sorted(p for p in data if p.is_file())
    return [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}" for p in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--bundle", type=Path, default=None, help="default: export the dlib bundle to a temp folder")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    full = read_tree(args.source / "lfw-dev" / "images")
    counts = photos_to_copy(full)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            from export.bundle_writer import DlibExportConfig, write_dlib_bundle

            bundle = Path(tmp) / "dlib"
            write_dlib_bundle(DlibExportConfig(out=bundle))
        groups = group_photos(full, bundle, counts)
        embeddings = server_embeddings(full, bundle, args.workers)
    small = {name: full[name][:n] for name, n in counts.items()} | {p.parent.name: [p] for p in groups}
    check_rules(full, small)

    images = args.out / "lfw-dev" / "images"
    if images.exists():
        shutil.rmtree(images)
    chosen = [p for photos in small.values() for p in photos]
    for photo in chosen:
        (images / photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, images / photo.parent.name / photo.name)
    (args.out / "group_photos.txt").write_text("".join(f"{p.parent.name}/{p.name}\n" for p in groups))
    shutil.copyfile(args.source / "face_embedding_model.npz", args.out / "face_embedding_model.npz")
    np.savez(args.out / "server_embeddings.npz", **embeddings)
    (args.out / "SHA256SUMS").write_text("".join(f"{line}\n" for line in sha256_lines(args.out)))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{len(chosen)} photos of {len({p.parent.name for p in chosen})} people, {size / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
