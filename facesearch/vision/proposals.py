"""Face proposals: where a photo's faces probably are, from a much cheaper network than MMOD.

The proposal network is MediaPipe's BlazeFace (short range), converted to ONNX by
``export/blazeface.py`` and shipped in the bundle as ``proposals.onnx`` (manifest section
``proposals``; bundles without it have no proposals). It was trained on 128x128 inputs and finds
faces of roughly 16-112 of its pixels there; it is fully convolutional, so a photo is searched in
one run per scale *level* over the whole scaled copy (sides padded to a multiple of 16) rather than
in tiles:

- level 0 scales the photo so that the smallest face asked for (``min_face`` photo pixels) is
  :data:`FACE_PX` model pixels (never enlarging it beyond :data:`MAX_UPSCALE`; a level-0 copy larger
  than ``max_pixels`` is shrunk to fit, so the smallest face searched grows, as the MMOD budget does);
- each next level is :data:`LEVEL_RATIO` times smaller, until the photo's short side fits in
  :data:`LAST_LEVEL_PX` model pixels (so a face filling the photo is found too).

Anchors are decoded as MediaPipe does (box centre = anchor centre + regressed offset, in input
pixels; fixed-size anchors), faces scoring above :data:`SCORE_LOGIT` are kept, boxes are mapped to
photo pixels and duplicates (across anchors and levels) removed with dlib's greedy NMS
(:mod:`facesearch.vision.nms`). A proposal's box is BlazeFace's, not MMOD's: the detection cascade
(:mod:`facesearch.vision.pipeline`) confirms each one with MMOD, whose boxes the landmark model expects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from facesearch.errors import ModelFormatError
from facesearch.vision.nms import greedy_nms
from facesearch.vision.onnx_session import create_session

#: Model pixels the smallest face asked for gets at level 0 (BlazeFace short range finds 16 px
#: faces and up in its 128 px input; bench/results/cascade.md measures recall by size).
FACE_PX = 20.0
#: Scale ratio between consecutive levels: a level sees faces of FACE_PX to ~4 FACE_PX.
LEVEL_RATIO = 4.0
#: The last level holds the photo's short side in at most this many model pixels.
LAST_LEVEL_PX = 96
#: Level 0 never enlarges the photo more than this.
MAX_UPSCALE = 2.0
#: Default most pixels of the level-0 copy (~1 MP: a 1080p frame at min face 40 is searched whole).
DEFAULT_MAX_PIXELS = 1_100_000
#: sigmoid(logit) > 0.5, MediaPipe's minimum detection score.
SCORE_LOGIT = 0.0
#: dlib-style NMS between proposals (IoU over the enclosing box; a box mostly inside another goes).
NMS_IOU = 0.3
NMS_COVERED = 0.7

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Proposal:
    """A probable face: BlazeFace's box ``(x1, y1, x2, y2)`` in photo pixels and its sigmoid score."""

    box: Box
    score: float

    @property
    def size(self) -> float:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass(frozen=True, slots=True)
class ProposerConfig:
    """What the runtime reads from the bundle's ``proposals`` section (``export/blazeface.py``)."""

    size_multiple: int
    layers: tuple[tuple[int, int], ...]  # (stride, anchors per cell) per feature map, output order
    offset: float

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any]) -> ProposerConfig:
        try:
            inp = section["input"]
            if inp["layout"] != "NHWC" or inp["dtype"] != "uint8" or inp["colour"] != "RGB":
                raise ModelFormatError(f"proposal model input must be NHWC uint8 RGB, manifest says {inp}")
            layers = tuple((int(s), int(k)) for s, k in section["anchors"]["layers"])
            if not layers:
                raise ModelFormatError("proposal model has no anchor layers")
            return cls(int(inp["size_multiple"]), layers, float(section["anchors"]["offset"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFormatError(f"proposals manifest section is missing or has a bad field: {err!r}") from err


def anchor_centres(height: int, width: int, config: ProposerConfig) -> np.ndarray:
    """``(A, 2)`` anchor centres (x, y) in input pixels for an ``height`` x ``width`` input, in the
    network's output order: per feature map, cells row-major, each repeated per anchor."""
    out = []
    for stride, per_cell in config.layers:
        rows, cols = height // stride, width // stride
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = np.stack([(xs + config.offset) * stride, (ys + config.offset) * stride], axis=-1)
        out.append(np.repeat(centres.reshape(-1, 2), per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


def decode(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(n, 4)`` (x1, y1, x2, y2, input pixels) and logits of the anchors scoring above
    :data:`SCORE_LOGIT`, for one image's ``regressors (A, 16)`` and ``logits (A,)``."""
    keep = np.nonzero(logits > SCORE_LOGIT)[0]
    r = regressors[keep]
    cx, cy = r[:, 0] + anchors[keep, 0], r[:, 1] + anchors[keep, 1]
    hw, hh = r[:, 2] / 2, r[:, 3] / 2
    boxes = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)
    valid = (r[:, 2] > 0) & (r[:, 3] > 0)
    return boxes[valid].astype(np.float64), logits[keep][valid].astype(np.float64)


def level_scales(width: int, height: int, min_face: float, max_pixels: int) -> list[float]:
    """Photo -> model scale of each level (see the module docstring)."""
    scale = min(FACE_PX / min_face, MAX_UPSCALE, math.sqrt(max_pixels / (width * height)))
    scales = [scale]
    while min(width, height) * scales[-1] > LAST_LEVEL_PX:
        scales.append(scales[-1] / LEVEL_RATIO)
    return scales


class FaceProposer:
    def __init__(self, session: ort.InferenceSession, config: ProposerConfig) -> None:
        self._session = session
        self.config = config

    @classmethod
    def from_onnx(cls, path: Path, section: Mapping[str, Any], intra_op_threads: int | None = None) -> FaceProposer:
        return cls(create_session(path, intra_op_threads=intra_op_threads), ProposerConfig.from_manifest(section))

    def run_level(self, image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (photo pixels) and logits found in one level: the photo scaled by ``scale``."""
        h, w = image.shape[:2]
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        scaled = image if (sw, sh) == (w, h) else cv2.resize(image, (sw, sh), interpolation=interp)
        m = self.config.size_multiple
        ph, pw = max(m, -(-sh // m) * m), max(m, -(-sw // m) * m)
        padded = np.zeros((1, ph, pw, 3), np.uint8)
        padded[0, :sh, :sw] = scaled
        regressors, logits = self._session.run(None, {"image": padded})
        boxes, scores = decode(regressors[0], logits[0, :, 0], anchor_centres(ph, pw, self.config))
        boxes[:, [0, 2]] *= w / sw
        boxes[:, [1, 3]] *= h / sh
        return boxes, scores

    def propose(self, image: np.ndarray, min_face: float, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Proposal]:
        """Probable faces in an HxWx3 uint8 RGB photo, best first, boxes in its pixels."""
        h, w = image.shape[:2]
        found = [self.run_level(image, s) for s in level_scales(w, h, min_face, max_pixels)]
        boxes = np.concatenate([b for b, _ in found])
        logits = np.concatenate([s for _, s in found])
        if boxes.size == 0:
            return []
        order = np.argsort(-logits, kind="stable")
        boxes, logits = boxes[order], logits[order]
        keep = greedy_nms(np.round(boxes).astype(np.int64), NMS_IOU, NMS_COVERED)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[keep], -80, 80)))
        return [
            Proposal((float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(s))
            for b, s in zip(boxes[keep], scores, strict=True)
        ]
