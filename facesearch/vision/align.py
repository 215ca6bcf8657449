"""The aligned face chip, cut exactly as dlib's ``get_face_chip(img, shape, 150, 0.25)`` cuts it.

The embedding network was trained on dlib's chips, so the chip is part of the model
contract: we reproduce ``get_face_chip_details`` and ``extract_image_chip``
(``dlib/image_transforms/interpolation.h``) step by step, in float64 like dlib:

1. A similarity transform (least squares, Umeyama) from dlib's mean-face template for
   the 5-point model, scaled into a ``size`` x ``size`` chip with ``padding`` on each
   side, onto the five landmarks. It becomes a rectangle, an angle and the chip size
   (``chip_details``); note ``centered_drect`` shrinks the width by one pixel, as dlib does.
2. If the chip is much smaller than its source rectangle, dlib first halves the image
   with ``pyramid_down<2>`` (a 5x5 [1 4 6 4 1]^2/256 integer filter that keeps columns
   and rows 2, 4, ...) until one more halving would fall below the chip's area, and samples
   that level, with dlib's ``point_down`` offsets (x/2 - 1.25, y/2 - 0.75). We do the same
   on the same sub-image (the chip's rotated bounds grown by 2 pixels per level, clipped
   to the image), so large faces are downscaled as dlib does, not as OpenCV would. For
   LFW-sized faces (source rectangle under ~2x the chip) no level is built.
3. Bilinear interpolation in float64, truncated (not rounded) to uint8, with samples
   whose 2x2 neighbourhood leaves the image set to black. OpenCV's ``warpAffine`` rounds
   and uses fixed-point weights, so it cannot match; the sampling is numpy.

dlib solves two of these small fits by SVD; we use the closed forms (the 2-D Umeyama
similarity, the exact inverse of the 3-point affine), which agree to float64 rounding.
The only pixels that can differ are those where the interpolated value lands within
~1e-12 of an integer, so that truncation goes either way.

Points are pixel coordinates, x right, y down, pixel centres at integers (dlib's
convention). Cost: a few milliseconds per chip in numpy, one per face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facesearch.errors import InvalidInputError
from facesearch.vision.landmarks import check_rgb_image

# dlib's mean face for the 5-point model (get_face_chip_details), in unit chip coordinates,
# in the model's landmark order: outer and inner corner of the eye on the image's right,
# outer and inner corner of the eye on the image's left, then the base of the nose.
MEAN_FACE_5 = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)

Rect = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class ChipDetails:
    """dlib's ``chip_details``: the source rectangle (l, t, r, b; inclusive corners, so
    width is ``r - l + 1``), the rotation about its centre in radians, and the chip size."""

    rect: Rect
    angle: float
    rows: int
    cols: int


def _similarity(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> tuple[float, ...]:
    """dlib's ``find_similarity_transform(src, dst)`` as (m00, m01, m10, m11, t0, t1).

    Sums run in dlib's order; the scaled rotation is Umeyama's closed form for 2-D,
    ``[[a, -b], [b, a]] / var(src)`` with ``a = cov00 + cov11`` and ``b = cov10 - cov01``.
    """
    n = len(src)
    mfx = mfy = mtx = mty = 0.0
    for (fx, fy), (tx, ty) in zip(src, dst, strict=True):
        mfx += fx
        mfy += fy
        mtx += tx
        mty += ty
    mfx, mfy, mtx, mty = mfx / n, mfy / n, mtx / n, mty / n
    sigma = c00 = c01 = c10 = c11 = 0.0
    for (fx, fy), (tx, ty) in zip(src, dst, strict=True):
        dfx, dfy, dtx, dty = fx - mfx, fy - mfy, tx - mtx, ty - mty
        sigma += dfx * dfx + dfy * dfy
        c00 += dtx * dfx
        c01 += dtx * dfy
        c10 += dty * dfx
        c11 += dty * dfy
    sigma, c00, c01, c10, c11 = sigma / n, c00 / n, c01 / n, c10 / n, c11 / n
    if not sigma > 0:
        raise InvalidInputError("cannot fit a similarity to points that coincide")
    a = (c00 + c11) / sigma
    b = (c10 - c01) / sigma
    m00, m01, m10, m11 = a, -b, b, a
    return m00, m01, m10, m11, mtx - (m00 * mfx + m01 * mfy), mty - (m10 * mfx + m11 * mfy)


def _check_landmarks(landmarks5: np.ndarray) -> list[tuple[float, float]]:
    pts = np.asarray(landmarks5, dtype=np.float64)
    if pts.shape != (5, 2):
        raise InvalidInputError(f"expected 5 (x, y) landmarks, got an array of shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise InvalidInputError("landmarks contain a non-finite coordinate")
    return [(float(x), float(y)) for x, y in pts]


def face_chip_details(landmarks5: np.ndarray, size: int = 150, padding: float = 0.25) -> ChipDetails:
    """dlib's ``get_face_chip_details(shape, size, padding)`` for a 5-point shape.

    ``padding`` is rounded to float32 first, because dlib's Python ``get_face_chip``
    takes it as a C++ ``float``.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
        raise InvalidInputError(f"chip size must be a positive integer, got {size!r}")
    pad = float(np.float32(padding))
    if not math.isfinite(pad) or pad < 0:
        raise InvalidInputError(f"chip padding must be >= 0, got {padding!r}")
    size = int(size)
    template = [((pad + x) / (2 * pad + 1) * size, (pad + y) / (2 * pad + 1) * size) for x, y in MEAN_FACE_5]
    m00, m01, m10, m11, t0, t1 = _similarity(template, _check_landmarks(landmarks5))
    angle = math.atan2(m10, m00)
    scale = math.sqrt(m00 * m00 + m10 * m10)
    if not size * scale >= 1:
        # dlib would build an empty source rectangle here (and assert in debug builds).
        raise InvalidInputError("landmarks coincide: the face they describe spans less than one pixel")
    cx, cy = size / 2.0, size / 2.0
    center_x = (m00 * cx + m01 * cy) + t0
    center_y = (m10 * cx + m11 * cy) + t1
    # centered_drect(p, w, h): dlib's inclusive rectangles make the span one less than the width.
    half_w = (size * scale - 1) / 2
    half_h = (size * scale - 1) / 2
    rect = (center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h)
    return ChipDetails(rect=rect, angle=angle, rows=size, cols=size)


def _rotated_corners(rect: Rect, angle: float) -> dict[str, tuple[float, float]]:
    """dlib's ``rotate_point(center(rect), corner, angle)`` for the four corners."""
    left, top, right, bottom = rect
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    sin_a, cos_a = math.sin(angle), math.cos(angle)
    out = {}
    for name, (x, y) in {"tl": (left, top), "tr": (right, top), "bl": (left, bottom), "br": (right, bottom)}.items():
        dx, dy = x - cx, y - cy
        out[name] = (cos_a * dx - sin_a * dy + cx, sin_a * dx + cos_a * dy + cy)
    return out


def chip_transform(landmarks5: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """The 2x3 affine (float64) taking image ``(x, y)`` to chip ``(x, y)``.

    This is dlib's ``get_mapping_to_chip``: the rotated source rectangle's corners go to
    the chip's corner pixels. Map points with ``A[:, :2] @ p + A[:, 2]``; invert with
    ``cv2.invertAffineTransform`` to go from chip back to image.
    """
    details = face_chip_details(landmarks5, size, padding)
    corners = _rotated_corners(details.rect, details.angle)
    src = np.array([corners["tl"], corners["tr"], corners["br"]], dtype=np.float64)
    dst = np.array([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]], dtype=np.float64)
    # Solve [x y 1] @ X = dst for X (3x2): exact for three non-collinear points.
    design = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(design, dst).T


def _lround(x: float) -> int:
    """C's ``std::lround``: halves away from zero (Python's round() goes to even)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def _rect_down(rect: Rect) -> Rect:
    """dlib's ``pyramid_down<2>::rect_down``: each corner p -> p/2 - (1.25, 0.75)."""
    left, top, right, bottom = rect
    return (left / 2.0 - 1.25, top / 2.0 - 0.75, right / 2.0 - 1.25, bottom / 2.0 - 0.75)


def _area(rect: Rect) -> float:
    left, top, right, bottom = rect
    if top > bottom or left > right:
        return 0.0
    return (right - left + 1) * (bottom - top + 1)


def pyramid_down2(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` on an RGB image, in its exact integer arithmetic.

    Output pixel (r, c) is the [1 4 6 4 1] x [1 4 6 4 1] / 256 filter (truncated) centred
    on input (2r + 2, 2c + 2). Images of 8 pixels or fewer on a side give an empty image.
    """
    nr, nc = image.shape[:2]
    if nr <= 8 or nc <= 8:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    out_r, out_c = (nr - 3) // 2, (nc - 3) // 2
    src = image.astype(np.int32)
    span = 2 * out_c - 1
    rows = src[:, 0:span:2] + 4 * src[:, 1 : span + 1 : 2] + 6 * src[:, 2 : span + 2 : 2]
    rows += 4 * src[:, 3 : span + 3 : 2] + src[:, 4 : span + 4 : 2]
    span = 2 * out_r - 1
    cols = rows[0:span:2] + 4 * rows[1 : span + 1 : 2] + 6 * rows[2 : span + 2 : 2]
    cols += 4 * rows[3 : span + 3 : 2] + rows[4 : span + 4 : 2]
    return (cols // 256).astype(np.uint8)


def _bilinear(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """dlib's ``interpolate_bilinear`` at float64 points: weights in float64, result truncated
    to uint8, black where the 2x2 neighbourhood is not wholly inside the image."""
    nr, nc = image.shape[:2]
    if nr < 2 or nc < 2:
        return np.zeros((*xs.shape, 3), dtype=np.uint8)  # no 2x2 neighbourhood anywhere
    left = np.floor(xs)
    top = np.floor(ys)
    valid = (left >= 0) & (top >= 0) & (left + 1 < nc) & (top + 1 < nr)
    lr = xs - left
    tb = ys - top
    one_lr, one_tb = 1 - lr, 1 - tb
    # Flat index of each sample's top-left neighbour (0 for invalid ones, zeroed below); the
    # colour planes go first so every operation below runs over whole planes.
    at = np.where(valid, top * nc + left, 0).astype(np.intp)
    planes = np.ascontiguousarray(image.transpose(2, 0, 1)).reshape(3, -1)
    tl, tr = planes[:, at].astype(np.float64), planes[:, at + 1].astype(np.float64)
    bl, br = planes[:, at + nc].astype(np.float64), planes[:, at + nc + 1].astype(np.float64)
    # dlib's expression, in its evaluation order: the truncation below makes order matter.
    value = one_tb * (one_lr * tl + lr * tr) + tb * (one_lr * bl + lr * br)
    out = np.trunc(value).astype(np.uint8)
    out[:, ~valid] = 0
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def extract_chip(image: np.ndarray, details: ChipDetails) -> np.ndarray:
    """dlib's ``extract_image_chip(img, details, chip)`` with bilinear interpolation."""
    check_rgb_image(image)
    rows, cols = details.rows, details.cols
    rect, angle = details.rect, details.angle
    height, width = image.shape[:2]
    size = rows * cols

    if angle == 0 and rows == rect[3] - rect[1] + 1 and cols == rect[2] - rect[0] + 1:
        return _copy_rect(image, tuple(_lround(v) for v in rect))  # type: ignore[arg-type]

    depth = 0
    grow = 2.0
    down = _rect_down(rect)
    while _area(down) > size:
        down = _rect_down(down)
        depth += 1
        grow = grow * 2 + 2
    corners = _rotated_corners(rect, angle)
    xs = [p[0] for p in corners.values()]
    ys = [p[1] for p in corners.values()]
    # grow_rect(rot_rect, grow).intersect(get_rect(img)), then drectangle -> rectangle (lround).
    bb = (
        _lround(max(min(xs) - grow, 0.0)),
        _lround(max(min(ys) - grow, 0.0)),
        _lround(min(max(xs) + grow, width - 1.0)),
        _lround(min(max(ys) + grow, height - 1.0)),
    )
    if bb[0] > bb[2] or bb[1] > bb[3]:
        return np.zeros((rows, cols, 3), dtype=np.uint8)  # the chip lies wholly outside the image
    source = image[bb[1] : bb[3] + 1, bb[0] : bb[2] + 1]

    level_rect = (rect[0] - bb[0], rect[1] - bb[1], rect[2] - bb[0], rect[3] - bb[1])
    level = -1
    while _area(_rect_down(level_rect)) > size:
        level += 1
        level_rect = _rect_down(level_rect)
    for _ in range(level + 1):
        source = pyramid_down2(source)

    # find_affine_transform(chip tl, tr, bl -> rotated level_rect tl, tr, bl), solved exactly.
    c = _rotated_corners(level_rect, angle)
    (x0, y0), (x1, y1), (x2, y2) = c["tl"], c["tr"], c["bl"]
    m00, m10 = (x1 - x0) / (cols - 1), (y1 - y0) / (cols - 1)
    m01, m11 = (x2 - x0) / (rows - 1), (y2 - y0) / (rows - 1)
    grid_c = np.arange(cols, dtype=np.float64)[None, :]
    grid_r = np.arange(rows, dtype=np.float64)[:, None]
    sample_x = (m00 * grid_c + m01 * grid_r) + x0
    sample_y = (m10 * grid_c + m11 * grid_r) + y0
    return _bilinear(source, sample_x, sample_y)


def _copy_rect(image: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """dlib's unscaled, unrotated chip: a plain crop, zero where it leaves the image."""
    left, top, right, bottom = rect
    out = np.zeros((bottom - top + 1, right - left + 1, 3), dtype=np.uint8)
    height, width = image.shape[:2]
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width - 1), min(bottom, height - 1)
    if x0 <= x1 and y0 <= y1:
        out[y0 - top : y1 - top + 1, x0 - left : x1 - left + 1] = image[y0 : y1 + 1, x0 : x1 + 1]
    return out


def face_chip(image: np.ndarray, landmarks5: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """The aligned ``size`` x ``size`` x 3 uint8 RGB chip, as ``dlib.get_face_chip`` makes it.

    ``landmarks5`` is (5, 2) ``(x, y)`` from :class:`facesearch.vision.landmarks.LandmarkPredictor`
    (dlib's integer points; other points are used as given).
    """
    return extract_chip(image, face_chip_details(landmarks5, size, padding))
