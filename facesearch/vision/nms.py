"""dlib's greedy non-maximum suppression for MMOD detections.

``loss_mmod_::to_label`` keeps a detection (taken in descending score order) unless it
overlaps an already kept one according to ``test_box_overlap(iou, percent_covered)``
(``image_processing/box_overlap_testing.h``), on integer inclusive rectangles:

* ``inner`` = area of the intersection (``width = right - left + 1``, 0 when empty);
  no overlap at all when ``inner == 0``;
* overlap when ``inner / outer > iou`` where ``outer`` is the area of the smallest
  rectangle *enclosing both* (dlib's ``(a + b).area()``, not the area of the union),
* or when ``inner / area(a) > percent_covered`` or ``inner / area(b) > percent_covered``
  (with the detector's 1.0 this never fires: nothing covers more than all of a box).
"""

from __future__ import annotations

import numpy as np


def _area(left: np.ndarray, top: np.ndarray, right: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    w = right - left + 1
    h = bottom - top + 1
    return np.where((w > 0) & (h > 0), w * h, 0).astype(np.float64)


def box_overlaps(box: np.ndarray, others: np.ndarray, iou: float, percent_covered: float) -> np.ndarray:
    """``test_box_overlap(iou, percent_covered)(box, other)`` for each row of ``others``.

    ``box`` is ``(4,)`` and ``others`` ``(n, 4)``, integer inclusive ``(left, top, right, bottom)``.
    """
    others = np.asarray(others, dtype=np.int64).reshape(-1, 4)
    left, top, right, bottom = (int(v) for v in box)
    ol, ot, orr, ob = others[:, 0], others[:, 1], others[:, 2], others[:, 3]
    inner = _area(np.maximum(ol, left), np.maximum(ot, top), np.minimum(orr, right), np.minimum(ob, bottom))
    outer = _area(np.minimum(ol, left), np.minimum(ot, top), np.maximum(orr, right), np.maximum(ob, bottom))
    area_a = float(_area(np.array(left), np.array(top), np.array(right), np.array(bottom)))
    area_b = _area(ol, ot, orr, ob)
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = (inner / outer > iou) | (inner / area_a > percent_covered) | (inner / area_b > percent_covered)
    return (inner != 0) & hit


def greedy_nms(rects: np.ndarray, iou: float, percent_covered: float) -> np.ndarray:
    """Indices of the rectangles dlib keeps; ``rects`` ``(n, 4)`` must be in descending score order.

    A box is kept iff it overlaps no box kept before it. Each kept box suppresses every later box
    it overlaps, so the loop runs once per kept box, vectorised over the rest.
    """
    rects = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    alive = np.ones(len(rects), dtype=bool)
    keep: list[int] = []
    for i in range(len(rects)):
        if not alive[i]:
            continue
        keep.append(i)
        later = np.arange(i + 1, len(rects))
        later = later[alive[later]]
        if later.size:
            alive[later[box_overlaps(rects[i], rects[later], iou, percent_covered)]] = False
    return np.asarray(keep, dtype=np.int64)
