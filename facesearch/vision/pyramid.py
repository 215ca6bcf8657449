"""dlib's image pyramids, reproduced bit for bit in numpy.

Two pieces of dlib run before the MMOD network sees an image:

* ``pyramid_up(img, pyramid_down<2>)`` (``image_transforms/interpolation.h``), which the
  Python binding applies ``upsample_num_times`` times to the uint8 RGB image;
* ``input_rgb_image_pyramid<pyramid_down<6>>::to_tensor`` (``dnn/input.h``): a zeroed
  float tensor, the image normalised as ``(pixel - avg) / 256`` copied into the first tile,
  then every smaller level resized *in the normalised float domain* from the previous one
  (``tt::resize_bilinear``), tiled as ``compute_tiled_image_pyramid_details`` lays it out
  (``image_transforms/image_pyramid.h``). Padding pixels stay 0, i.e. the mean colour.

Both resizes are dlib's ``resize_image`` with ``interpolate_bilinear``: "align corners"
sampling, ``x_src = c * (in - 1) / (out - 1)``. dlib computes it with 4-wide float32 SIMD
(positions accumulated in float32, weights ``(1-ty)(1-tx)`` etc. multiplied in float32,
the four products summed left to right; RGB output truncated, not rounded) and finishes
each row's last few columns with a scalar loop in double precision. OpenCV's resize and
remap use half-pixel centres and 1/32-pixel fixed-point weights, so neither matches; the
gathers below replay dlib's arithmetic exactly instead (verified equal to
``dlib.resize_image`` for uint8 RGB and float32 images; see tests/unit/test_detector.py).

A large photo's scaled copy (:mod:`facesearch.vision.detection_plan`) is no dlib scan to begin with,
so its pyramid may be built the fast way (``build_pyramid_tensor(..., exact=False)``): the same
align-corners geometry, interpolated by OpenCV's ``warpAffine`` (1/32-pixel fixed-point weights,
levels within ~0.005 of dlib's, i.e. about one grey level), several times faster than the exact
gathers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from facesearch.util.cancel import Checkpoint, checkpoint

_F32 = np.float32


@dataclass(frozen=True, slots=True)
class Rect:
    """An inclusive dlib ``rectangle``: ``right = left + width - 1``."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1


@dataclass(frozen=True, slots=True)
class _AxisSamples:
    """Where each output row (or column) of a dlib bilinear resize samples its source.

    The first ``n_simd`` entries follow the float32 SIMD path, the rest the double tail.
    """

    lo: np.ndarray  # int64 source index below
    hi: np.ndarray  # int64 source index above
    frac: np.ndarray  # float64: exact double fraction (tail / rows) or float32 value widened
    n_simd: int

    def __post_init__(self) -> None:  # instances are cached and shared: keep them read-only
        for arr in (self.lo, self.hi, self.frac):
            arr.setflags(write=False)


@functools.lru_cache(maxsize=1024)
def _row_samples(n_in: int, n_out: int) -> _AxisSamples:
    """Rows: ``y`` accumulates ``y_scale`` in double; ``top = floor(y)``, ``bottom`` clamped."""
    scale = (n_in - 1) / float(max(n_out - 1, 1))
    steps = np.full(n_out + 1, scale, dtype=np.float64)
    steps[0] = -scale
    y = np.add.accumulate(steps)[1:]  # sequential, like the C++ loop
    top = np.floor(y).astype(np.int64)
    return _AxisSamples(top, np.minimum(top + 1, n_in - 1), y - top, n_out)


@functools.lru_cache(maxsize=1024)
def _column_samples(n_in: int, n_out: int) -> _AxisSamples:
    """Columns: float32 SIMD groups of 4 until a group's last ``right`` index leaves the image.

    ``_x`` starts at ``float(-4s + j*s)`` (j = 0..3) and adds ``float(4s)`` once per group;
    ``left`` truncates, ``right = left + 1`` (unclamped), ``frac = _x - left`` in float32. The
    remaining columns use ``x = -s + c*s`` then ``x += s`` in double, ``floor``, clamped right.
    """
    scale = (n_in - 1) / float(max(n_out - 1, 1))
    groups = n_out // 4 + 2
    start = np.array(
        [-4 * scale, -4 * scale + scale, -4 * scale + 2 * scale, -4 * scale + 3 * scale], dtype=np.float64
    ).astype(_F32)
    steps = np.empty((groups + 1, 4), dtype=_F32)
    steps[0] = start
    steps[1:] = _F32(4 * scale)
    xs = np.add.accumulate(steps, axis=0, dtype=_F32)[1:]  # (groups, 4) float32, sequential
    left = xs.astype(np.int32).astype(np.int64)  # _mm_cvttps_epi32: truncation
    right = left + 1
    bad = np.nonzero(right[:, 3] >= n_in)[0]
    n_groups = int(bad[0]) if bad.size else groups
    n_simd = min(4 * n_groups, n_out)
    x32 = xs.reshape(-1)[:n_simd]
    lo_simd = left.reshape(-1)[:n_simd]
    frac_simd = (x32 - lo_simd.astype(_F32)).astype(np.float64)
    c0 = 4 * n_groups
    n_tail = n_out - min(c0, n_out)
    if n_tail:
        tail_steps = np.full(n_tail + 1, scale, dtype=np.float64)
        tail_steps[0] = -scale + c0 * scale
        x = np.add.accumulate(tail_steps)[1:]
        lo_tail = np.floor(x).astype(np.int64)
        frac_tail = x - lo_tail
        lo = np.concatenate([lo_simd, lo_tail])
        hi = np.concatenate([lo_simd + 1, np.minimum(lo_tail + 1, n_in - 1)])
        frac = np.concatenate([frac_simd, frac_tail])
    else:
        lo, hi, frac = lo_simd, lo_simd + 1, frac_simd
    return _AxisSamples(lo, hi, frac, n_simd)


#: Output values (times planes) per block of rows: the gathers, products and sums of a block stay
#: in the CPU's cache instead of streaming whole-level temporaries through memory.
_BLOCK_VALUES = 1 << 16
#: A float resize of at most this many output values (times planes) is done in one piece
#: (:func:`_resize_small_float`; LFW's levels: blocks were slower there, bench/results/pyramid_speed.md).
_SMALL_FLOAT_VALUES = 1 << 20


def _simd_part(
    corners: tuple[np.ndarray, ...],
    *,
    tb: np.ndarray,
    inv_tb: np.ndarray,
    cols: _AxisSamples,
    acc: np.ndarray,
    term: np.ndarray,
) -> None:
    """``((tlf*tl + trf*tr) + blf*bl) + brf*br`` in float32 into ``acc``, weights ``(1-ty)(1-tx)``...
    also float32 (``corners``: the samples of the SIMD columns; ``tb``/``inv_tb``: the rows' float32
    fractions, ``(m, 1)``; ``term``: scratch)."""
    n = cols.n_simd
    lr = cols.frac[:n].astype(_F32)[None, :]
    inv_lr = _F32(1.0) - lr
    tl, tr, bl, br = corners
    np.multiply(tl, inv_tb * inv_lr, out=acc, dtype=_F32)
    np.multiply(tr, inv_tb * lr, out=term, dtype=_F32)
    acc += term
    np.multiply(bl, tb * inv_lr, out=term, dtype=_F32)
    acc += term
    np.multiply(br, tb * lr, out=term, dtype=_F32)
    acc += term


def _tail_part(
    corners: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    frac: np.ndarray,
    cols: _AxisSamples,
    out_dtype: type,
) -> np.ndarray:
    """The scalar (double) columns after the SIMD groups, for rows with fractions ``frac`` (``(m, 1)``)."""
    n = cols.n_simd
    tl, tr, bl, br = corners
    if out_dtype is _F32:  # float lr_frac and pixels, double tb_frac; rounded once to float
        lr = cols.frac[n:].astype(_F32)[None, :]
        inv_lr = _F32(1.0) - lr
        upper = (inv_lr * tl + lr * tr).astype(np.float64)
        lower = (inv_lr * bl + lr * br).astype(np.float64)
        return (1.0 - frac) * upper + frac * lower
    # all double, static_cast<unsigned char>: truncation
    tl, tr, bl, br = (c.astype(np.float64) for c in (tl, tr, bl, br))
    lr64 = cols.frac[n:][None, :]
    return (1.0 - frac) * ((1.0 - lr64) * tl + lr64 * tr) + frac * ((1.0 - lr64) * bl + lr64 * br)


def _resize(src: np.ndarray, out_h: int, out_w: int, out_dtype: type, out: np.ndarray | None = None) -> np.ndarray:
    """dlib's bilinear resize of planes ``(..., H, W)``, a block of output rows at a time, into
    ``out`` (a new array when None; may be a view, e.g. a level's place in the pyramid tensor).

    Same arithmetic as dlib, gathered in another order: a block's source rows are gathered at the
    output columns' left and right samples once (each source row serves about two output rows),
    then the corners are whole-row copies of those."""
    rows = _row_samples(src.shape[-2], out_h)
    cols = _column_samples(src.shape[-1], out_w)
    if out is None:
        out = np.empty((*src.shape[:-2], out_h, out_w), dtype=out_dtype)
    n = cols.n_simd
    tb_all = rows.frac.astype(_F32)[:, None]
    inv_tb_all = (1.0 - rows.frac).astype(_F32)[:, None]
    frac_all = rows.frac[:, None]
    planes = int(np.prod(src.shape[:-2], dtype=np.int64))
    if out_dtype is _F32 and planes * out_h * out_w <= _SMALL_FLOAT_VALUES:
        return _resize_small_float(src, rows, cols, out)
    block = max(1, _BLOCK_VALUES // max(1, planes * out_w))
    acc = np.empty((*src.shape[:-2], min(block, out_h), n), dtype=_F32)
    term = np.empty_like(acc)
    direct = out_dtype is _F32  # float output: the sums land in place; uint8: truncated on copy
    for r0 in range(0, out_h, block):
        r1 = min(out_h, r0 + block)
        m = r1 - r0
        s0, s1 = int(rows.lo[r0]), int(rows.hi[r1 - 1]) + 1  # the block's source rows (monotonic)
        source = src[..., s0:s1, :]
        left, right = np.take(source, cols.lo, axis=-1), np.take(source, cols.hi, axis=-1)
        lo, hi = rows.lo[r0:r1] - s0, rows.hi[r0:r1] - s0
        tl, tr = np.take(left, lo, axis=-2), np.take(right, lo, axis=-2)
        bl, br = np.take(left, hi, axis=-2), np.take(right, hi, axis=-2)
        if n:
            target = out[..., r0:r1, :n] if direct else acc[..., :m, :]
            simd = (tl[..., :n], tr[..., :n], bl[..., :n], br[..., :n])
            _simd_part(simd, tb=tb_all[r0:r1], inv_tb=inv_tb_all[r0:r1], cols=cols, acc=target, term=term[..., :m, :])
            if not direct:
                # simd4i(float) truncates (the values are >= 0, so the cast's truncation matches)
                out[..., r0:r1, :n] = target
        if n < out_w:
            tail = (tl[..., n:], tr[..., n:], bl[..., n:], br[..., n:])
            out[..., r0:r1, n:] = _tail_part(tail, frac_all[r0:r1], cols, out_dtype)
    return out


def _resize_small_float(src: np.ndarray, rows: _AxisSamples, cols: _AxisSamples, out: np.ndarray | None) -> np.ndarray:
    """:func:`_resize` of a small float level in one piece: the output rows gathered, then their four
    corners (at this size the blocks' bookkeeping costs more than the cache saves)."""
    out_h, out_w, n = rows.lo.shape[0], cols.lo.shape[0], cols.n_simd
    top, bottom = np.take(src, rows.lo, axis=-2), np.take(src, rows.hi, axis=-2)
    lr = cols.frac[:n].astype(_F32)[None, :]
    inv_lr = _F32(1.0) - lr
    tb, inv_tb = rows.frac.astype(_F32)[:, None], (1.0 - rows.frac).astype(_F32)[:, None]
    acc = np.multiply(np.take(top, cols.lo[:n], axis=-1), inv_tb * inv_lr, dtype=_F32)
    term = np.multiply(np.take(top, cols.hi[:n], axis=-1), inv_tb * lr, dtype=_F32)
    acc += term
    np.multiply(np.take(bottom, cols.lo[:n], axis=-1), tb * inv_lr, out=term, dtype=_F32)
    acc += term
    np.multiply(np.take(bottom, cols.hi[:n], axis=-1), tb * lr, out=term, dtype=_F32)
    acc += term
    if n == out_w and out is None:
        return acc
    if out is None:
        out = np.empty((*src.shape[:-2], out_h, out_w), dtype=_F32)
    out[..., :n] = acc
    if n < out_w:
        lo, hi = cols.lo[n:], cols.hi[n:]
        corners = (
            np.take(top, lo, axis=-1),
            np.take(top, hi, axis=-1),
            np.take(bottom, lo, axis=-1),
            np.take(bottom, hi, axis=-1),
        )
        out[..., n:] = _tail_part(corners, rows.frac[:, None], cols, _F32)
    return out


def resize_float_planes(src: np.ndarray, out_h: int, out_w: int, out: np.ndarray | None = None) -> np.ndarray:
    """dlib ``resize_image`` of float32 planes ``(..., H, W)`` to ``(..., out_h, out_w)`` (into ``out``
    when given: a float32 array or view of that shape, not overlapping ``src``)."""
    return _resize(src, out_h, out_w, _F32, out)


def resize_u8_planes(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """dlib ``resize_image`` of uint8 RGB, as planes ``(..., H, W)`` (float32 SIMD, truncating)."""
    return _resize(src, out_h, out_w, np.uint8)


def resize_rgb_u8(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """dlib ``resize_image`` of a uint8 RGB ``(H, W, 3)`` image."""
    return np.moveaxis(resize_u8_planes(np.moveaxis(image, -1, 0), out_h, out_w), 0, -1)


# --- pyramid_down<2>: upsampling before detection, and mapping boxes back -------------------


def lround(x: np.ndarray) -> np.ndarray:
    """C ``std::lround`` elementwise: nearest integer, halves away from zero (int64)."""
    whole = np.trunc(x)
    return (whole + np.sign(x) * (np.abs(x - whole) >= 0.5)).astype(np.int64)


def pyramid_up_size(h: int, w: int) -> tuple[int, int]:
    """Rows and columns after dlib ``pyramid_up(img, pyramid_down<2>)``: ``(2h + 1, 2w + 2)``.

    The size is ``rect_up(get_rect(img))`` rounded, with ``point_up(p) = (p + (1.25, 0.75)) * 2``:
    ``W' = lround(2W + 0.5) + 1`` and ``H' = lround(2H - 0.5) + 1`` (not exactly 2x; dlib's choice).
    """
    out_w = int(lround(np.array((w - 1 + 1.25) * 2))) + 1
    out_h = int(lround(np.array((h - 1 + 0.75) * 2))) + 1
    return out_h, out_w


def pyramid_up_planes(planes: np.ndarray) -> np.ndarray:
    """dlib ``pyramid_up`` of uint8 RGB planes ``(..., H, W)``: bilinear to :func:`pyramid_up_size`."""
    return resize_u8_planes(planes, *pyramid_up_size(planes.shape[-2], planes.shape[-1]))


def pyramid_up(image: np.ndarray) -> np.ndarray:
    """dlib ``pyramid_up(img, pyramid_down<2>)`` of a uint8 RGB ``(H, W, 3)`` image."""
    return np.moveaxis(pyramid_up_planes(np.moveaxis(image, -1, 0)), 0, -1)


def pyramid_up_planes_fast(planes: np.ndarray) -> np.ndarray:
    """:func:`pyramid_up_planes` of RGB planes ``(..., 3, H, W)``: the same size and align-corners
    sampling, interpolated by OpenCV (1/32-pixel weights, rounded: within one grey level of dlib's),
    for scans that are no dlib scan (``exact=False``)."""
    out_h, out_w = pyramid_up_size(planes.shape[-2], planes.shape[-1])
    flat = planes.reshape(-1, 3, planes.shape[-2], planes.shape[-1])
    rect = Rect(0, 0, out_w - 1, out_h - 1)
    up = [_warp_level(np.ascontiguousarray(im.transpose(1, 2, 0)), rect).transpose(2, 0, 1) for im in flat]
    return np.stack(up).reshape(*planes.shape[:-2], out_h, out_w)


def pyramid2_rect_down(boxes: np.ndarray, levels: int) -> np.ndarray:
    """``pyramid_down<2>::rect_down(rect, levels)``: ``p / 2 - (1.25, 0.75)`` per level, in double.

    ``boxes`` is ``(n, 4)`` float64 ``(left, top, right, bottom)`` (inclusive dlib corners).
    """
    out = boxes.astype(np.float64, copy=True)
    for _ in range(levels):
        out = out / 2.0 - np.array([1.25, 0.75, 1.25, 0.75])
    return out


# --- input_rgb_image_pyramid<pyramid_down<N>>: the tiled pyramid tensor -----------------------


@dataclass(frozen=True, slots=True)
class TiledPyramid:
    """Where each pyramid level lies inside the tiled input tensor (level 0 = the image)."""

    rects: tuple[Rect, ...]
    rows: int
    cols: int
    rate_down: int  # N of pyramid_down<N>: each level is (N-1)/N of the previous one


def tiled_pyramid_layout(nr: int, nc: int, rate_down: int, padding: int, outer_padding: int) -> TiledPyramid:
    """``impl::compute_tiled_image_pyramid_details``: levels down to 5 rows, packed in two columns.

    Levels go top to bottom on the left, separated by ``padding`` rows, until the next level fits
    to the right of the previous one; the rest climb back up the right edge, bottom first,
    stopping before one would touch the first image. ``outer_padding`` surrounds it all.
    """
    if nr * nc == 0:
        return TiledPyramid((), 0, 0, rate_down)
    rate = (rate_down - 1.0) / rate_down
    sizes = [(nr, nc)]
    while True:
        nr, nc = math.floor(rate * nr), math.floor(rate * nc)
        if nr * nc == 0 or nr < 5:
            break
        sizes.append((nr, nc))
    h0, w0 = sizes[0]
    total_height = sum(h + padding for h, _ in sizes) - 2 * padding
    height, prev_width = 0, 0
    for h, w in sizes:
        if w <= w0 - prev_width - padding and (height - h0) * 2 >= total_height - h0:
            break
        height += h + padding
        prev_width = w
    height -= padding
    rects: list[Rect] = []
    y = outer_padding
    while y < height + outer_padding and len(rects) < len(sizes):
        h, w = sizes[len(rects)]
        rects.append(Rect(outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
    y -= padding
    first = rects[0]
    while len(rects) < len(sizes):
        h, w = sizes[len(rects)]
        right, bottom = outer_padding + w0 - 1, y - 1
        rect = Rect(right - w + 1, bottom - h + 1, right, bottom)
        if max(first.left, rect.left) <= min(first.right, rect.right) and max(first.top, rect.top) <= min(
            first.bottom, rect.bottom
        ):
            break  # would overlap the full-size image
        rects.append(rect)
        y -= h + padding
    return TiledPyramid(tuple(rects), height + 2 * outer_padding, w0 + 2 * outer_padding, rate_down)


def build_pyramid_tensor(
    planes: np.ndarray,
    avg_rgb: tuple[float, float, float],
    layout: TiledPyramid,
    *,
    exact: bool = True,
    cancel: Checkpoint | None = None,
) -> np.ndarray:
    """``input_rgb_image_pyramid::to_tensor``: uint8 RGB planes ``(n, 3, H, W)`` -> ``(n, 3, R, C)`` float32.

    Level 0 is ``float32(pixel - avg) / 256``; each further level is dlib's bilinear resize of the
    previous level's float planes (``exact=False``: the fast resize of the module docstring).
    Everything outside the level rectangles is 0. ``cancel`` is checked before each level.
    """
    out = np.zeros((planes.shape[0], 3, layout.rows, layout.cols), dtype=_F32)
    if not layout.rects:
        return out
    mean = np.asarray(avg_rgb, dtype=_F32).reshape(1, 3, 1, 1)
    if not exact:
        level = np.subtract(planes, mean, dtype=_F32)
        level *= _F32(1.0 / 256.0)  # exact: a power of two
        for n in range(planes.shape[0]):
            _fast_levels(level[n], layout, out[n], cancel)
        return out
    # each level is resized from the previous one kept contiguous (faster than reading and writing
    # the levels in place in the wide tensor, measured), then copied to its place
    level = np.subtract(planes, mean, dtype=_F32)
    level *= _F32(1.0 / 256.0)  # exact: a power of two
    for i, r in enumerate(layout.rects):
        if i:
            checkpoint(cancel, "a pyramid level")
            level = resize_float_planes(level, r.height, r.width)
        out[:, :, r.top : r.bottom + 1, r.left : r.right + 1] = level
    return out


def _fast_levels(first: np.ndarray, layout: TiledPyramid, out: np.ndarray, cancel: Checkpoint | None = None) -> None:
    """Fill one image's ``(3, R, C)`` tensor from its ``(3, H, W)`` first level, resizing with OpenCV."""
    level = np.ascontiguousarray(first.transpose(1, 2, 0))  # (H, W, 3), as OpenCV wants it
    for i, r in enumerate(layout.rects):
        if i:
            checkpoint(cancel, "a pyramid level")
            level = _warp_level(level, r)
        out[:, r.top : r.bottom + 1, r.left : r.right + 1] = level.transpose(2, 0, 1)


def _warp_level(level: np.ndarray, rect: Rect) -> np.ndarray:
    """An ``(H, W, 3)`` float level resized to ``rect`` with dlib's align-corners geometry, by OpenCV."""
    h, w = level.shape[:2]
    sx, sy = (w - 1) / max(rect.width - 1, 1), (h - 1) / max(rect.height - 1, 1)
    to_source = np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(level, to_source, (rect.width, rect.height), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def tiled_pyramid_to_image(layout: TiledPyramid, boxes: np.ndarray) -> np.ndarray:
    """``tiled_pyramid_to_image<pyramid_down<N>>`` for ``(n, 4)`` float64 tensor-space boxes.

    A box belongs to the level whose rectangle holds its centre (the first such one), else to the
    nearest level (Euclidean distance to the rectangle, first wins ties). Its corners are made
    relative to that level and mapped up ``level`` times with ``point_up(p) = p * N/(N-1) + 0.3``.
    """
    if boxes.shape[0] == 0:
        return boxes.astype(np.float64)
    r = np.array([[x.left, x.top, x.right, x.bottom] for x in layout.rects], dtype=np.float64)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    cy = (boxes[:, 1] + boxes[:, 3]) / 2.0
    cx, cy = np.floor(cx + 0.5)[:, None], np.floor(cy + 0.5)[:, None]  # dpoint -> point
    inside = (cx >= r[:, 0]) & (cx <= r[:, 2]) & (cy >= r[:, 1]) & (cy <= r[:, 3])
    dx = np.clip(cx, r[:, 0], r[:, 2]) - cx
    dy = np.clip(cy, r[:, 1], r[:, 3]) - cy
    dist = np.sqrt(dx * dx + dy * dy)
    level = np.where(inside.any(axis=1), inside.argmax(axis=1), dist.argmin(axis=1))
    origin = r[level][:, [0, 1, 0, 1]]
    out = boxes.astype(np.float64) - origin
    ratio = layout.rate_down / (layout.rate_down - 1.0)
    for step in range(int(level.max())):
        up = level > step
        out[up] = out[up] * ratio + 0.3
    return out
