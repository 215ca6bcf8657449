"""Five-point face landmarks, computed exactly as dlib's ``shape_predictor`` does.

The model (exported by ``export/shape_predictor.py`` as ``landmarks5.npz``) is a cascade
of regression-tree forests. Each cascade level samples ``F`` grey pixels around the
current shape estimate, walks every tree of that level on pixel-pair differences, and
adds the reached leaves' shape increments. We replay dlib's arithmetic step by step,
with the same float32/float64 split, because the downstream face chip (and so the
embedding) is computed from dlib's *integer* landmark positions: an off-by-one-pixel
landmark moves the chip. Three details carry that exactness:

* feature positions are ``tform * delta + anchor`` in float32 (dlib's
  ``matrix<float,2,2>``), then mapped to pixels in float64 and rounded half up
  (``floor(x + 0.5)``, dlib's ``point`` conversion); pixels outside the image read 0;
* a pixel's intensity is dlib's ``get_pixel_intensity(rgb_pixel)``: ``(r + g + b) // 3``
  in integers, not a weighted luma;
* the leaves of a level are added to the shape one tree at a time in float32, in tree
  order (:func:`sum_in_order`; numpy's pairwise ``np.sum`` would differ in the last bits).

All faces of one image are predicted together (``predict_many``): every step is one
numpy operation over (faces x features) or (faces x trees), 15 levels deep, so the cost
per face falls as the batch grows.

Boxes: our boxes are pixel ``(x1, y1, x2, y2)`` with ``x2, y2`` exclusive. dlib's
rectangles are inclusive (``right = left + width - 1``), so dlib's ``rectangle(l, t, r,
b)`` is our ``(l, t, r + 1, b + 1)`` and we hand dlib's code ``r = x2 - 1, b = y2 - 1``.
Integer boxes therefore give dlib's results bit for bit; fractional boxes are used as
they are (dlib could not represent them; no rounding is applied).

The shape-alignment transform (dlib's ``find_similarity_transform``, an SVD in dlib) is
computed in closed form: for 2-D points Umeyama's scaled rotation is
``[[a, -b], [b, a]] / var(from)`` with ``a = cov00 + cov11`` and ``b = cov10 - cov01``.
It equals dlib's to float64 rounding and is then rounded to float32 as dlib does.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from facesearch.errors import InvalidInputError, ModelFormatError

Box = tuple[float, float, float, float]

_MAX_BATCH = 64
_MAX_COORD = 1 << 30  # far beyond any image, and safe from integer overflow in pixel arithmetic

_REQUIRED = ("initial_shape", "split_idx1", "split_idx2", "split_thresh", "leaf_values", "anchor_idx", "deltas")
_FORMAT_VERSION = 1


def check_rgb_image(image: np.ndarray) -> None:
    """Refuse anything but an HxWx3 uint8 array (our decoded-image convention, RGB order)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InvalidInputError(f"expected an HxWx3 uint8 RGB image, got shape {shape} dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError(f"image is empty (shape {image.shape})")


def _boxes_array(boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InvalidInputError(f"boxes must be (x1, y1, x2, y2) rows, got an array of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError("a box has a non-finite coordinate")
    if np.abs(arr).max(initial=0) > _MAX_COORD:
        raise InvalidInputError(f"a box coordinate exceeds {_MAX_COORD} pixels")
    bad = (arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"box {i} {tuple(arr[i].tolist())} is empty: need x2 > x1 and y2 > y1")
    return arr


class LandmarkPredictor:
    """dlib's 5-point shape predictor over numpy arrays. Load with :meth:`from_file`."""

    __slots__ = (
        "_anchor",
        "_deltas",
        "_depth",
        "_idx1",
        "_idx2",
        "_initial",
        "_leaves",
        "_num_leaves",
        "_tform_weights",
        "_thresh",
    )

    def __init__(self, arrays: Mapping[str, np.ndarray], name: str = "<arrays>") -> None:
        """Validate and adopt the arrays written by ``export.shape_predictor`` (see there for shapes)."""
        a = {k: np.asarray(arrays[k]) for k in _REQUIRED if k in arrays}
        missing = [k for k in _REQUIRED if k not in a]
        if missing:
            raise ModelFormatError(f"{name}: not a landmarks model, missing arrays {missing}")
        if "format_version" in arrays:
            version = np.asarray(arrays["format_version"]).ravel()
            if version.size != 1 or int(version[0]) != _FORMAT_VERSION:
                raise ModelFormatError(f"{name}: landmarks format version {version.tolist()}, expected 1")

        def fail(what: str) -> ModelFormatError:
            return ModelFormatError(f"{name}: {what}")

        initial = a["initial_shape"]
        if initial.ndim != 2 or initial.shape[1] != 2 or initial.shape[0] < 2:
            raise fail(f"initial_shape must be (P>=2, 2), found {initial.shape}")
        p = initial.shape[0]
        idx1, idx2, thresh = a["split_idx1"], a["split_idx2"], a["split_thresh"]
        if idx1.ndim != 3 or idx1.shape != idx2.shape or idx1.shape != thresh.shape:
            raise fail(f"split arrays must share one (C, T, S) shape, found {idx1.shape}, {idx2.shape}, {thresh.shape}")
        c, t, s = idx1.shape
        depth = (s + 1).bit_length() - 1
        if c == 0 or t == 0 or s == 0 or (1 << depth) != s + 1:
            raise fail(f"split arrays (C={c}, T={t}, S={s}) must describe complete trees (S = 2**depth - 1)")
        leaves = a["leaf_values"]
        if leaves.shape != (c, t, s + 1, p, 2):
            raise fail(f"leaf_values must be {(c, t, s + 1, p, 2)}, found {leaves.shape}")
        anchor, deltas = a["anchor_idx"], a["deltas"]
        if anchor.ndim != 2 or anchor.shape[0] != c or deltas.shape != (*anchor.shape, 2):
            raise fail(f"anchor_idx (C, F) and deltas (C, F, 2) disagree: {anchor.shape}, {deltas.shape}")
        f = anchor.shape[1]
        for key, arr in (("split_idx1", idx1), ("split_idx2", idx2), ("anchor_idx", anchor)):
            if arr.dtype.kind not in "iu":
                raise fail(f"{key} must be integers, found {arr.dtype}")
        if idx1.min() < 0 or idx2.min() < 0 or max(idx1.max(), idx2.max()) >= f:
            raise fail(f"split indices must lie in [0, {f}) (the feature pool)")
        if anchor.min() < 0 or anchor.max() >= p:
            raise fail(f"anchor_idx must lie in [0, {p}) (the landmarks)")
        for key, arr in (
            ("initial_shape", initial),
            ("split_thresh", thresh),
            ("leaf_values", leaves),
            ("deltas", deltas),
        ):
            if arr.dtype.kind != "f" or not np.isfinite(arr).all():
                raise fail(f"{key} must be finite floats")

        self._initial = initial.astype(np.float32)
        self._depth = depth
        self._num_leaves = s + 1
        # Split tests as (C, T*S) so one gather evaluates every split of a level. Pixel values
        # are integers (0..255), so ``diff > thresh`` equals ``diff > floor(thresh)`` and the
        # tests run in int16; clipping to [-256, 255] keeps the always/never-true cases.
        self._idx1 = idx1.astype(np.intp).reshape(c, t * s)
        self._idx2 = idx2.astype(np.intp).reshape(c, t * s)
        self._thresh = np.clip(np.floor(thresh.astype(np.float64)), -256, 255).astype(np.int16).reshape(c, t * s)
        self._leaves = np.ascontiguousarray(leaves.astype(np.float32).reshape(c, t * (s + 1), p * 2))
        # Where each feature's anchor landmark sits in a shape laid out x0, y0, x1, y1, ...: (C, 2, F).
        self._anchor = np.stack([2 * anchor, 2 * anchor + 1], axis=1).astype(np.intp)
        self._deltas = np.ascontiguousarray(deltas.astype(np.float32).transpose(0, 2, 1))  # (C, 2, F)
        ref = self._initial.astype(np.float64)
        centered = ref - ref.mean(axis=0)
        spread = float((centered**2).sum())
        if not spread > 0:
            raise fail("initial_shape is degenerate (all points equal)")
        # Closed-form similarity (see _shape_tform) as weights on a shape laid out x0, y0, x1, y1, ...
        fx, fy = centered[:, 0], centered[:, 1]
        weight_a = np.stack([fx, fy], axis=1).ravel() / spread
        weight_b = np.stack([-fy, fx], axis=1).ravel() / spread
        self._tform_weights = np.stack([weight_a, weight_b, -weight_b, weight_a], axis=1)  # (2P, 4)

    @classmethod
    def from_file(cls, path: str | Path) -> LandmarkPredictor:
        """Load ``landmarks5.npz``; :class:`ModelFormatError` if it is unreadable or malformed."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError as err:
            raise ModelFormatError(f"landmarks model {path} does not exist") from err
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ModelFormatError(f"{path}: not a readable landmarks .npz file: {err}") from err
        return cls(arrays, name=str(path))

    @property
    def num_landmarks(self) -> int:
        return int(self._initial.shape[0])

    @property
    def cascade_depth(self) -> int:
        return int(self._idx1.shape[0])

    def predict(self, image: np.ndarray, box: Box, *, subpixel: bool = False) -> np.ndarray:
        """Landmarks (P, 2) float32 ``(x, y)`` for one face box ``(x1, y1, x2, y2)``.

        By default the points are rounded to whole pixels as dlib's ``full_object_detection``
        holds them (and as dlib's face chip consumes them); ``subpixel=True`` returns the
        unrounded regression output instead.
        """
        return self.predict_many(image, [box], subpixel=subpixel)[0]

    def predict_many(
        self, image: np.ndarray, boxes: Sequence[Box] | np.ndarray, *, subpixel: bool = False
    ) -> np.ndarray:
        """Landmarks (N, P, 2) float32 for N boxes in one image, computed together (vectorised)."""
        check_rgb_image(image)
        rects = _boxes_array(boxes)
        n = rects.shape[0]
        p = self.num_landmarks
        if n == 0:
            return np.zeros((0, p, 2), dtype=np.float32)
        if n > _MAX_BATCH:  # bound the working memory (a few MB per chunk)
            parts = [
                self.predict_many(image, rects[i : i + _MAX_BATCH], subpixel=subpixel) for i in range(0, n, _MAX_BATCH)
            ]
            return np.concatenate(parts)
        height, width = image.shape[:2]
        # Grey levels are read only at the sampled pixels, never for the whole image.
        rgb = np.ascontiguousarray(image).reshape(-1)
        # dlib's unnormalizing_tform maps the unit square onto the inclusive rect (l, t, r, b):
        # pixel = (r - l, b - t) * unit + (l, t), in float64; r = x2 - 1 and b = y2 - 1.
        origin = rects[:, 0:2, None]  # (n, 2, 1)
        scale = (rects[:, 2:4] - 1.0 - rects[:, 0:2])[:, :, None]

        s = self._num_leaves - 1
        t_all = self._idx1.shape[1] // s
        # Flat indices: split j of tree t for face i is i*T*S + t*S + j; leaf l of tree t is row t*L + l.
        split_base = (np.arange(n) * (t_all * s))[:, None] + (np.arange(t_all) * s)[None, :]
        leaf_base = (np.arange(t_all) * self._num_leaves)[:, None]
        shape = np.tile(self._initial.reshape(1, 2 * p), (n, 1))  # (n, 2P) float32: x0, y0, x1, y1, ...
        for level in range(self.cascade_depth):
            coef = self._shape_tform(shape)  # (n, 4): m00, m10, m01, m11 as float32
            anchors = np.take(shape, self._anchor[level], axis=1)  # (n, 2, F): x row, y row
            dx, dy = self._deltas[level]
            # dlib: tform * delta + anchor in float32, products summed left to right.
            feat = (coef[:, 0:2, None] * dx + coef[:, 2:4, None] * dy) + anchors
            pix = np.floor(scale * feat.astype(np.float64) + origin + 0.5).astype(np.intp)
            # Unsigned view: negative coordinates wrap to huge values, so one compare per axis.
            upix = pix.view(np.uintp)
            inside = (upix[:, 0] < width) & (upix[:, 1] < height)
            at = np.where(inside, pix[:, 1] * width + pix[:, 0], 0) * 3
            total = rgb[at].astype(np.int16) + rgb[at + 1] + rgb[at + 2]
            values = np.where(inside, total // 3, 0)  # (n, F) dlib grey; outside the image reads 0

            leaf = self._walk_trees(level, values, split_base)  # (n, T)
            increments = np.take(self._leaves[level], leaf.T + leaf_base, axis=0)  # (T, n, 2P)
            shape = sum_in_order(shape, increments)

        out = scale.transpose(0, 2, 1) * shape.reshape(n, p, 2).astype(np.float64) + origin.transpose(0, 2, 1)
        if not subpixel:
            out = np.floor(out + 0.5)
        return out.astype(np.float32)

    def _walk_trees(self, level: int, values: np.ndarray, base: np.ndarray) -> np.ndarray:
        """The leaf (n, T) each tree of ``level`` reaches on feature pixel values (n, F).

        dlib walks node -> 2*node + 1 when ``value[idx1] - value[idx2] > thresh``, else
        2*node + 2. Every split test of the level is computed up front in one gather, then
        all trees walk at once on flat indices k = base + node, where that step reads
        k -> 2*k + (2 - base) - test. (Measured: testing only the splits on each path, or
        packing the tests into a lookup-table index, were both slower in numpy.)
        """
        tests = np.take(values, self._idx1[level], axis=1) - np.take(values, self._idx2[level], axis=1)
        go_left = (tests > self._thresh[level]).ravel()
        step = 2 - base
        k = base
        for _ in range(self._depth):
            k = 2 * k + step - go_left[k]
        return k - base - (self._num_leaves - 1)

    def _shape_tform(self, shape: np.ndarray) -> np.ndarray:
        """dlib's ``find_tform_between_shapes(initial, current)`` 2x2 part, float32, as (n, 4).

        Columns are (m00, m10, m01, m11) = (a, b, -b, a) of the scaled rotation. The closed
        form needs two dot products per face; dlib reaches the same float64 numbers (to the
        last bits) through an SVD, and the float32 rounding dlib applies next hides those bits.
        """
        return (shape.astype(np.float64) @ self._tform_weights).astype(np.float32)


def sum_in_order(start: np.ndarray, increments: np.ndarray) -> np.ndarray:
    """``start + increments[0] + increments[1] + ...`` in float32, strictly left to right.

    dlib adds each tree's leaf to the shape in turn, and float addition is not associative,
    so the order is part of the result. A reduction over the outermost axis of a C-ordered
    array is evaluated by numpy as one running row sum, i.e. in exactly this order (pairwise
    summation applies only along the contiguous axis); a unit test pins that behaviour.
    """
    terms = increments.copy()
    terms[0] += start
    return np.add.reduce(terms, axis=0)
