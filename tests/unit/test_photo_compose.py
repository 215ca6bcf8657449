"""The benchmark's photo composer (``bench/photo_compose.py``): photos are the same for the same seed,
every planted face lies inside the photo where the truth says, faces never cover one another, and
detections pair with planted faces by IoU."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.photo_compose import (
    LFW_FACE_BOX,
    PHOTO_KINDS,
    FaceSource,
    Layout,
    PhotoKind,
    compose,
    iou,
    match_boxes,
    read_photo_set,
    write_photo_set,
)

# Small kinds of every layout, so the test runs in a second; the shipped ones differ only in size.
SMALL = [
    PhotoKind("scatter", 640, 480, (3, 8), (24, 90), Layout.SCATTER, "small scatter"),
    PhotoKind("rows", 900, 600, (5, 9), (40, 60), Layout.ROWS, "small group"),
    PhotoKind("portrait", 270, 480, (1, 1), (120, 180), Layout.PORTRAIT, "small selfie"),
]


@pytest.fixture(scope="module")
def pool(lfw_dir: Path) -> list[FaceSource]:
    return [FaceSource(p.parent.name, p) for p in sorted((lfw_dir / "images").glob("*/*.jpg"))]


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)


@pytest.mark.parametrize("kind", SMALL, ids=lambda k: k.name)
def test_same_seed_same_photo_other_index_other_photo(kind: PhotoKind, pool: list[FaceSource]) -> None:
    first, again, other = compose(kind, 0, pool, 7), compose(kind, 0, pool, 7), compose(kind, 1, pool, 7)
    assert first == again
    assert first[0] != other[0]
    assert first[0] != compose(kind, 0, pool, 8)[0]


@pytest.mark.parametrize("kind", SMALL, ids=lambda k: k.name)
@pytest.mark.parametrize("index", range(4))
def test_faces_inside_apart_and_of_the_asked_size(kind: PhotoKind, index: int, pool: list[FaceSource]) -> None:
    data, faces = compose(kind, index, pool, 3)
    assert Image.open(io.BytesIO(data)).size == (kind.width, kind.height)
    assert 1 <= len(faces) <= kind.faces[1]
    for face in faces:
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= kind.width and 0 <= y1 < y2 <= kind.height
        assert kind.face_px[0] - 0.01 <= face.height <= kind.face_px[1] + 0.01
        assert face.source.split("/")[0] == face.identity
    for i, a in enumerate(faces):
        assert all(iou(a.box, b.box) == 0 for b in faces[i + 1 :])
    assert len({f.source for f in faces}) == len(faces)


def test_planted_face_is_where_the_truth_says(pool: list[FaceSource]) -> None:
    """The pixels in each planted box are that source photo's face, scaled: closer to it than to
    another person's face, and close in absolute terms (noise, JPEG and resampling aside)."""
    kind = SMALL[0]
    data, faces = compose(kind, 2, pool, 5)
    photo = _decode(data)
    by_name = {f"{s.path.parent.name}/{s.path.name}": s.path for s in pool}

    def face_pixels(name: str, size: tuple[int, int]) -> np.ndarray:
        source = Image.open(by_name[name]).convert("RGB").crop(LFW_FACE_BOX)
        return np.asarray(source.resize(size, Image.Resampling.BILINEAR), np.float32)

    assert len(faces) >= 2
    for face, other in zip(faces, [*faces[1:], faces[0]], strict=True):
        x1, y1, x2, y2 = (round(v) for v in face.box)
        here = photo[y1:y2, x1:x2]
        own = np.abs(here - face_pixels(face.source, (x2 - x1, y2 - y1))).mean()
        assert own < 20
        assert own < np.abs(here - face_pixels(other.source, (x2 - x1, y2 - y1))).mean()


def test_original_is_the_lfw_photo_itself(pool: list[FaceSource]) -> None:
    data, faces = compose(PHOTO_KINDS["lfw"], 0, pool, 1)
    (face,) = faces
    source = next(s for s in pool if f"{s.path.parent.name}/{s.path.name}" == face.source)
    assert data == source.path.read_bytes()
    assert face.box == LFW_FACE_BOX and face.identity == source.identity


def test_written_set_reads_back(pool: list[FaceSource], tmp_path: Path) -> None:
    written = write_photo_set(tmp_path / "set", [(SMALL[0], 2), (PHOTO_KINDS["lfw"], 1)], pool, 11)
    read = read_photo_set(tmp_path / "set")
    assert read == written
    assert [p.file for p in read.of_kind("scatter")] == ["scatter/000.jpg", "scatter/001.jpg"]
    assert read.path(read.photos[0]).read_bytes() == compose(SMALL[0], 0, pool, 11)[0]


def test_match_boxes_pairs_by_iou_once_each() -> None:
    planted = [(0.0, 0.0, 10.0, 10.0), (20.0, 0.0, 30.0, 10.0), (50.0, 50.0, 60.0, 60.0)]
    found = [(21.0, 1.0, 31.0, 11.0), (1.0, 0.0, 11.0, 10.0), (0.0, 0.0, 9.0, 9.0), (52.0, 58.0, 62.0, 68.0)]
    # box 1 (IoU .82) beats box 2 (IoU .81) for the first face; the last found box overlaps too little
    assert match_boxes(planted, found) == [1, 0, None]
    assert match_boxes(planted, []) == [None, None, None]
    assert match_boxes(planted[2:], found[3:], min_iou=0.05) == [0]
