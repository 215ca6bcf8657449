"""Realistic test photos composed from LFW faces at known positions and sizes.

A *photo kind* (:class:`PhotoKind`, the shipped ones in :data:`PHOTO_KINDS`) says how large the
photo is, how many faces it holds, how tall they are and how they are laid out: 12 MP and 8 MP
phone photos with a few faces of at least 5% of the short side, 1080p video frames with many
small faces, group photos in rows, portrait selfies with one face filling much of the frame, and
the LFW originals themselves (250 x 250, sent byte for byte).

How a photo is made (:func:`compose`), deterministically from ``(seed, kind, index)``:

- Background: a scene colour field (a 16 x 12 thumbnail of an LFW photo's corner, so no face
  survives in it) blended with a vertical gradient and low-frequency texture, upscaled smoothly.
- Faces: the head-and-shoulders region of an LFW photo (:data:`CROP_BOX`), scaled so that its
  face box (:data:`LFW_FACE_BOX`) is the chosen height, pasted through a feathered elliptical
  mask so it is no square cut-out. Heights are drawn log-uniformly from the kind's range; a face
  is placed only where its paste region covers no face placed before (so every planted face is
  visible whole) and its face box lies inside the photo; a face that finds no place after
  :data:`PLACEMENT_TRIES` tries is left out, so a photo may hold fewer faces than drawn.
- Finish: Gaussian sensor noise (sigma :data:`NOISE_SIGMA`) and JPEG at quality
  :data:`JPEG_QUALITY` with 4:2:0 chroma, as a phone writes it.

The ground truth of each photo (:class:`ComposedPhoto`) holds every planted face's box in the
photo's pixels ``(x1, y1, x2, y2)``, its identity and its source photo. :func:`write_photo_set`
writes a set of photos and ``truth.json``; :func:`read_photo_set` reads them back;
:func:`match_boxes` pairs a detector's boxes with the planted faces (greedy by IoU, at least
:data:`MIN_IOU`: lenient, since detectors draw their boxes differently).

The face box of an LFW photo: LFW's 250 x 250 images are centred on a face detection enlarged
2.2 times, so the face sits at a fixed place. :data:`LFW_FACE_BOX` is the median of the boxes
dlib's HOG detector and our MMOD detector give on 60 lfw-dev photos (HOG ``(67, 80, 175, 187)``,
MMOD ``(66, 82, 166, 171)``), so "face height" means what a detector's box height means.
Used by ``bench/real_photos.py``; tested by ``tests/unit/test_photo_compose.py``.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Box = tuple[float, float, float, float]

#: The face in a 250 x 250 LFW photo, ``(x1, y1, x2, y2)`` (see the module docstring).
LFW_FACE_BOX = (68, 78, 172, 182)
#: What is pasted: head, hair and shoulders around :data:`LFW_FACE_BOX`.
CROP_BOX = (25, 15, 215, 245)
LFW_SIZE = 250
PLACEMENT_TRIES = 200
NOISE_SIGMA = 2.0
JPEG_QUALITY = 90
TRUTH_FILE = "truth.json"
MIN_IOU = 0.3


class Layout(StrEnum):
    ORIGINAL = "original"  # the LFW photo as it is
    SCATTER = "scatter"  # anywhere in the frame
    ROWS = "rows"  # a group photo: one size, in up to three rows
    PORTRAIT = "portrait"  # one face near the centre, filling much of the frame


@dataclass(frozen=True, slots=True)
class PhotoKind:
    name: str
    width: int
    height: int
    faces: tuple[int, int]  # how many faces are drawn, inclusive range
    face_px: tuple[float, float]  # planted face height in px, inclusive range (log-uniform)
    layout: Layout
    description: str

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


def _kinds() -> dict[str, PhotoKind]:
    kinds = [
        PhotoKind("lfw", LFW_SIZE, LFW_SIZE, (1, 1), (104, 104), Layout.ORIGINAL, "LFW original, 250x250, as is"),
        PhotoKind(
            "selfie", 1080, 1920, (1, 1), (0.45 * 1080, 0.70 * 1080), Layout.PORTRAIT, "portrait selfie, 1080x1920"
        ),
        PhotoKind("group", 2000, 1500, (5, 15), (60, 160), Layout.ROWS, "group photo, 2000x1500, 5-15 faces in rows"),
        PhotoKind("frame1080", 1920, 1080, (8, 20), (24, 120), Layout.SCATTER, "1080p video frame, 8-20 small faces"),
        PhotoKind(
            "phone8", 3264, 2448, (2, 12), (0.05 * 2448, 0.20 * 2448), Layout.SCATTER, "8 MP phone photo, 2-12 faces"
        ),
        PhotoKind(
            "phone12", 4032, 3024, (2, 12), (0.05 * 3024, 0.20 * 3024), Layout.SCATTER, "12 MP phone photo, 2-12 faces"
        ),
    ]
    return {k.name: k for k in kinds}


#: The shipped photo kinds, cheapest first.
PHOTO_KINDS: dict[str, PhotoKind] = _kinds()


@dataclass(frozen=True, slots=True)
class FaceSource:
    """An LFW photo to plant: whose face it is, and where the file is."""

    identity: str
    path: Path


@dataclass(frozen=True, slots=True)
class PlantedFace:
    identity: str
    source: str  # the LFW photo's file name, ``Person/Person_NNNN.jpg``
    box: Box  # in the composed photo's pixels

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


@dataclass(frozen=True, slots=True)
class ComposedPhoto:
    kind: str
    file: str  # relative to the set's folder
    width: int
    height: int
    faces: tuple[PlantedFace, ...]

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


@dataclass(frozen=True, slots=True)
class PhotoSet:
    root: Path
    seed: int
    photos: tuple[ComposedPhoto, ...]

    def path(self, photo: ComposedPhoto) -> Path:
        return self.root / photo.file

    def of_kind(self, kind: str) -> list[ComposedPhoto]:
        return [p for p in self.photos if p.kind == kind]


# -- composition ---------------------------------------------------------------------------------
def photo_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The generator of photo ``index`` of ``kind``: independent of which other kinds are made."""
    return np.random.default_rng([seed, zlib.crc32(kind.encode()), index])


def compose(
    kind: PhotoKind, index: int, pool: Sequence[FaceSource], seed: int
) -> tuple[bytes, tuple[PlantedFace, ...]]:
    """Photo ``index`` of ``kind`` as JPEG bytes (the LFW original's bytes for ``Layout.ORIGINAL``)
    and its planted faces. Faces are drawn from ``pool`` (distinct within a photo), backgrounds
    from the pool's photos too."""
    if not pool:
        raise ValueError("compose needs at least one face source")
    rng = photo_rng(seed, kind.name, index)
    if kind.layout is Layout.ORIGINAL:
        source = pool[int(rng.integers(len(pool)))]
        return source.path.read_bytes(), (PlantedFace(source.identity, _source_name(source), LFW_FACE_BOX),)
    count = int(rng.integers(kind.faces[0], kind.faces[1] + 1))
    chosen = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    heights = _face_heights(kind, len(chosen), rng)
    canvas = _background(kind.width, kind.height, pool[int(rng.integers(len(pool)))].path, rng)
    placed: list[PlantedFace] = []
    covered: list[Box] = []  # face boxes already on the canvas: nothing may be pasted over them
    rows = _row_centres(kind, heights[0], len(chosen), rng) if kind.layout is Layout.ROWS else []
    for n, (i, h) in enumerate(zip(chosen, heights, strict=True)):
        spot = _place(kind, h, covered, rng, rows[n % len(rows)] if rows else None)
        if spot is None:
            continue
        source = pool[int(i)]
        box = _paste(canvas, source.path, spot, h)
        covered.append(box)
        placed.append(PlantedFace(source.identity, _source_name(source), box))
    return _finish(canvas, rng), tuple(placed)


def _source_name(source: FaceSource) -> str:
    return f"{source.path.parent.name}/{source.path.name}"


def _face_heights(kind: PhotoKind, count: int, rng: np.random.Generator) -> list[float]:
    lo, hi = kind.face_px
    if kind.layout is Layout.ROWS:  # one size for the group, +-10% per person
        base = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return [float(np.clip(base * rng.uniform(0.9, 1.1), lo, hi)) for _ in range(count)]
    return [math.exp(rng.uniform(math.log(lo), math.log(hi))) for _ in range(count)]


def _scale(h: float) -> float:
    return h / (LFW_FACE_BOX[3] - LFW_FACE_BOX[1])


def _paste_region(face_x: float, face_y: float, h: float) -> Box:
    """Where the pasted crop lands when its face box's top-left is ``(face_x, face_y)``."""
    s = _scale(h)
    x0 = face_x - (LFW_FACE_BOX[0] - CROP_BOX[0]) * s
    y0 = face_y - (LFW_FACE_BOX[1] - CROP_BOX[1]) * s
    return (x0, y0, x0 + (CROP_BOX[2] - CROP_BOX[0]) * s, y0 + (CROP_BOX[3] - CROP_BOX[1]) * s)


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _row_centres(kind: PhotoKind, h: float, count: int, rng: np.random.Generator) -> list[float]:
    """Vertical centres of a group photo's rows (up to three), front row lowest."""
    n_rows = min(3, max(1, math.ceil(count * 1.9 * h / (0.9 * kind.width))))
    top = kind.height * rng.uniform(0.35, 0.5) - (n_rows - 1) * 1.75 * h / 2
    return [top + r * 1.75 * h for r in range(n_rows)]


def _place(
    kind: PhotoKind, h: float, covered: list[Box], rng: np.random.Generator, row_y: float | None
) -> tuple[float, float] | None:
    """Top-left of the face box, or None when no free spot was found."""
    w = h  # face boxes are square
    for _ in range(PLACEMENT_TRIES):
        if kind.layout is Layout.PORTRAIT:
            x = (kind.width - w) / 2 + rng.uniform(-0.08, 0.08) * kind.width
            y = kind.height * rng.uniform(0.28, 0.42) - h / 2
        elif row_y is not None:
            x = rng.uniform(0, kind.width - w)
            y = row_y - h / 2 + rng.uniform(-0.1, 0.1) * h
        else:
            x, y = rng.uniform(0, kind.width - w), rng.uniform(0, kind.height - h)
        x, y = float(np.clip(x, 0, kind.width - w)), float(np.clip(y, 0, kind.height - h))
        if not any(_overlaps(_paste_region(x, y, h), box) for box in covered):
            return x, y
    return None


@cache
def _base_mask() -> Image.Image:
    """Feathered ellipse over the crop: opaque on the face, fading out over hair and shoulders."""
    w, h = CROP_BOX[2] - CROP_BOX[0], CROP_BOX[3] - CROP_BOX[1]
    cx, cy = 120 - CROP_BOX[0], 132 - CROP_BOX[1]
    rx, ry = 0.85 * w / 2, 0.85 * h / 2
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(9))


def _paste(canvas: Image.Image, source: Path, spot: tuple[float, float], h: float) -> Box:
    s = _scale(h)
    x0, y0, x1, y1 = _paste_region(spot[0], spot[1], h)
    size = (max(1, round(x1 - x0)), max(1, round(y1 - y0)))
    with Image.open(source) as img:
        rgb = img.convert("RGB")
    if rgb.size != (LFW_SIZE, LFW_SIZE):
        rgb = rgb.resize((LFW_SIZE, LFW_SIZE), Image.Resampling.BICUBIC)
    patch = rgb.crop(CROP_BOX).resize(size, Image.Resampling.LANCZOS)
    mask = _base_mask().resize(size, Image.Resampling.BILINEAR)
    origin = (round(x0), round(y0))
    canvas.paste(patch, origin, mask)
    fx = origin[0] + (LFW_FACE_BOX[0] - CROP_BOX[0]) * s
    fy = origin[1] + (LFW_FACE_BOX[1] - CROP_BOX[1]) * s
    return (fx, fy, fx + h, fy + h)


def _background(width: int, height: int, scene: Path, rng: np.random.Generator) -> Image.Image:
    with Image.open(scene) as img:
        rgb = img.convert("RGB")
    corners = [(0, 0, 64, 48), (rgb.width - 64, 0, rgb.width, 48), (0, rgb.height - 48, 64, rgb.height)]
    thumb = rgb.crop(corners[int(rng.integers(len(corners)))]).resize((16, 12), Image.Resampling.BOX)
    field = np.asarray(thumb, np.float32)
    top, bottom = rng.uniform(30, 230, 3), rng.uniform(20, 200, 3)
    t = np.linspace(0.0, 1.0, 12, dtype=np.float32)[:, None, None]
    texture = rng.normal(0.0, 18.0, (12, 16, 1)).astype(np.float32)
    small = 0.55 * field + 0.45 * (top * (1 - t) + bottom * t) + texture
    thumb = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8))
    return thumb.resize((width, height), Image.Resampling.BICUBIC)


def _finish(canvas: Image.Image, rng: np.random.Generator) -> bytes:
    pixels = np.asarray(canvas, np.float32)
    pixels += rng.normal(0.0, NOISE_SIGMA, pixels.shape).astype(np.float32)
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling="4:2:0")
    return buf.getvalue()


# -- sets on disk --------------------------------------------------------------------------------
def write_photo_set(
    root: Path, plan: Sequence[tuple[PhotoKind, int]], pool: Sequence[FaceSource], seed: int
) -> PhotoSet:
    """Compose ``count`` photos of each ``(kind, count)`` of ``plan`` into ``root/<kind>/NNN.jpg`` and
    ``root/truth.json`` (the folder is emptied first). Photo ``i`` of a kind is the same whatever
    else the plan holds."""
    shutil.rmtree(root, ignore_errors=True)
    photos = []
    for kind, count in plan:
        (root / kind.name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            data, faces = compose(kind, index, pool, seed)
            file = f"{kind.name}/{index:03d}.jpg"
            (root / file).write_bytes(data)
            photos.append(ComposedPhoto(kind.name, file, kind.width, kind.height, faces))
    result = PhotoSet(root, seed, tuple(photos))
    payload = {"seed": seed, "photos": [asdict(p) for p in photos]}
    (root / TRUTH_FILE).write_text(json.dumps(payload, indent=1) + "\n")
    return result


def read_photo_set(root: Path) -> PhotoSet:
    payload = json.loads((root / TRUTH_FILE).read_text())
    photos = tuple(
        ComposedPhoto(
            p["kind"],
            p["file"],
            p["width"],
            p["height"],
            tuple(PlantedFace(f["identity"], f["source"], tuple(f["box"])) for f in p["faces"]),
        )
        for p in payload["photos"]
    )
    return PhotoSet(root, int(payload["seed"]), photos)


# -- scoring against the truth -------------------------------------------------------------------
def iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match_boxes(planted: Sequence[Box], found: Sequence[Box], min_iou: float = MIN_IOU) -> list[int | None]:
    """For each planted box, the index of the found box paired with it, or None: pairs are taken
    in decreasing IoU, each box in at most one pair, none under ``min_iou``."""
    pairs = sorted(((iou(p, f), i, j) for i, p in enumerate(planted) for j, f in enumerate(found)), key=lambda x: -x[0])
    out: list[int | None] = [None] * len(planted)
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < min_iou:
            break
        if out[i] is None and j not in used:
            out[i] = j
            used.add(j)
    return out
