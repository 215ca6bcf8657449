"""Face detection with dlib's MMOD CNN detector, exported to ONNX, run by onnxruntime.

:class:`FaceDetector` reproduces ``dlib.cnn_face_detection_model_v1(path)(img, upsample)``:

1. ``upsample`` times ``pyramid_up`` (dlib's pyramid_down<2> upsampler, ~2x per step);
2. the tiled ``pyramid_down<6>`` pyramid tensor (:mod:`facesearch.vision.pyramid`, bit-exact);
3. the network (ONNX) -> one score per 8x8 cell of the tensor;
4. ``loss_mmod_::to_label``: every score ``> adjust_threshold`` is a detection whose centre is
   ``stride * (col, row) + offset`` in the tensor (8, 14 for this network), an 80x80 window
   around it (corners ``centre -/+ 39.5``), mapped back through the pyramid level holding it
   (``point_up(p) = 1.2 p + 0.3`` per level), rounded; sorted by score; greedy NMS
   (:mod:`facesearch.vision.nms`); finally mapped down through the upsampling
   (``point_down(p) = p / 2 - (1.25, 0.75)`` per step) and rounded again.

Boxes: dlib rectangles are inclusive (``right = left + width - 1``); a :class:`Detection` box is
``(left, top, right + 1, bottom + 1)``, i.e. half-open pixel edges, so ``x2 - x1`` is the width.
The score is dlib's ``confidence`` (the raw network score, > 0 means a face at threshold 0).

Smallest faces: the detector window is 80x80 pixels of a pyramid level, and the pyramid only
shrinks, so at ``upsample=0`` faces under ~80 px are missed; each upsample halves that
(``upsample_for_min_face``). How much of a photo is scanned is planned by
:mod:`facesearch.vision.detection_plan`.

Tiles: the network runs on fixed-size tiles of the pyramid tensor (:meth:`FaceDetector.forward`),
so its working memory is bounded whatever the photo's size, and the score map is the one the whole
tensor would give. Each tile computes ``tile_cells`` x ``tile_cells`` output cells from its input
plus ``context_cells`` cells of context on each side (clipped at the tensor's edges): the
network's unpadded stride-2 convolutions start every tile on the output grid (input offsets are
multiples of the stride), and its zero-padded ("same") stride-1 layers reach ``context_cells``
cells (2 + 2 + 2 + 4 for dlib's face detector), so the kept cells see exactly what they would in
the whole tensor. (Skipping tiles that hold only padding, or pyramid levels that hold only faces
larger than half the photo, would save nothing measurable: with 160-cell tiles no tile of a 12 MP,
8 MP or 1080p scan is all padding, and those levels are ~1% of the tensor.)

Memory after a photo: onnxruntime's CPU arena keeps the largest working set it has seen, so the
last network run of each :meth:`FaceDetector.forward` asks it to shrink back
(``memory.enable_memory_arena_shrinkage``): the tiles of one photo reuse the arena, and nothing of
it stays once the photo is done (bench/results/detect_budget.md measures the alternatives). A
session made without the arena needs no shrinking (onnxruntime refuses the option there).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from facesearch.errors import BundleError, ImageTooLargeError, InvalidInputError, ModelFormatError
from facesearch.util.cancel import Checkpoint, checkpoint, interrupt_on_stop
from facesearch.vision.nms import greedy_nms
from facesearch.vision.onnx_session import create_session
from facesearch.vision.pyramid import (
    TiledPyramid,
    build_pyramid_tensor,
    lround,
    pyramid2_rect_down,
    pyramid_up_planes,
    pyramid_up_planes_fast,
    pyramid_up_size,
    tiled_pyramid_layout,
    tiled_pyramid_to_image,
)

DETECTOR_WINDOW_PX = 80
MAX_UPSAMPLE = 4
DEFAULT_MAX_PIXELS = 40_000_000  # of the upsampled image: ~1.6 GB of pyramid tensor
#: Output cells per tile side: a ~1.4k px input tile, ~30 MB of network activations.
DEFAULT_TILE_CELLS = 160
#: Output cells the 'same'-padded layers of dlib's face detector reach (three 5x5, one 9x9, stride 8
#: in input pixels); a manifest's ``output.context_cells`` overrides it for another network.
DLIB_MMOD_CONTEXT_CELLS = 10
_SHRINK_ARENA = ort.RunOptions()
_SHRINK_ARENA.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


def upsample_for_min_face(min_face_px: int, window_px: int = DETECTOR_WINDOW_PX) -> int:
    """How many ``pyramid_up`` steps make faces ``min_face_px`` across detectable.

    The detector scans an ``window_px`` (80) pixel window over a pyramid that only shrinks the
    image, so the smallest face it can report is about ``window_px / 2**upsample`` pixels across:
    80 px at 0, 40 px at 1 (facesearch's default minimum face), 20 px at 2. Returns the smallest
    ``upsample`` with ``window_px / 2**upsample <= min_face_px``.
    """
    if min_face_px < 1:
        raise InvalidInputError(f"min_face_px must be a positive number of pixels, got {min_face_px}")
    if min_face_px >= window_px:
        return 0
    return math.ceil(math.log2(window_px / min_face_px) - 1e-12)


@dataclass(frozen=True, slots=True)
class Detection:
    """A face box ``(x1, y1, x2, y2)`` in pixels (half-open: dlib's right/bottom + 1) and its score."""

    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """What the runtime needs from the model's manifest section (see ``export/mmod.py``)."""

    input_name: str
    output_name: str
    avg_rgb: tuple[float, float, float]
    rate_down: int
    padding: int
    outer_padding: int
    window: tuple[int, int]  # width, height
    out_stride: int
    out_offset: int
    min_input_size: int
    nms_iou: float
    nms_covered: float
    context_cells: int = DLIB_MMOD_CONTEXT_CELLS

    def output_size(self, n: int) -> int:
        """Output cells along an input side of ``n`` pixels (unpadded stride: ``(n - 2 offset - 1) // stride + 1``)."""
        return max(0, (n - 2 * self.out_offset - 1) // self.out_stride + 1)

    def input_span(self, first: int, end: int, total: int) -> tuple[int, int]:
        """Input pixels ``[start, stop)`` from which output cells ``[first, end)`` are computed exactly,
        along a side of ``total`` pixels: the receptive context clipped at the tensor's edges."""
        n_out = self.output_size(total)
        lo, hi = max(0, first - self.context_cells), min(n_out, end + self.context_cells)
        stop = total if hi == n_out else self.out_stride * (hi - 1) + 2 * self.out_offset + 1
        return self.out_stride * lo, stop

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any]) -> DetectorConfig:
        try:
            norm = section["input"]["normalisation"]
            if float(norm["divisor"]) != 256.0 or section["input"]["layout"] != "NCHW":
                raise ModelFormatError(f"detector input must be NCHW /256, manifest says {section['input']}")
            pyr, out = section["pyramid"], section["output"]
            if pyr["type"] != f"pyramid_down<{pyr['rate_down']}>" or float(pyr["padding_value"]) != 0.0:
                raise ModelFormatError(f"unsupported detector pyramid {pyr}")
            avg = tuple(float(v) for v in norm["avg_rgb"])
            if len(avg) != 3:
                raise ModelFormatError(f"avg_rgb must hold 3 values, got {avg}")
            return cls(
                input_name=str(section["input"]["name"]),
                output_name=str(out["name"]),
                avg_rgb=(avg[0], avg[1], avg[2]),
                rate_down=int(pyr["rate_down"]),
                padding=int(pyr["padding"]),
                outer_padding=int(pyr["outer_padding"]),
                window=(int(section["detector_window"]["width"]), int(section["detector_window"]["height"])),
                out_stride=int(out["to_input"]["stride"]),
                out_offset=int(out["to_input"]["offset"]),
                min_input_size=int(out["min_input_size"]),
                nms_iou=float(section["nms"]["iou"]),
                nms_covered=float(section["nms"]["percent_covered"]),
                context_cells=int(out.get("context_cells", DLIB_MMOD_CONTEXT_CELLS)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFormatError(f"detector manifest section is missing or has a bad field: {err!r}") from err


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """Same-size images turned into one pyramid tensor, with what decoding needs."""

    tensor: np.ndarray  # (n, 3, rows, cols) float32
    layout: TiledPyramid
    upsample: int


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = getattr(image, "dtype", type(image))
        raise InvalidInputError(f"image must be a uint8 numpy array, got {got}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)  # dlib assigns gray to all three channels
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(f"image must be HxWx3 RGB (or HxW gray), got shape {image.shape}")
    return image


class FaceDetector:
    """dlib's CNN face detector; thread-safe (the onnxruntime session is, and nothing else mutates).

    ``tile_cells``: output cells per tile side (None: the whole tensor in one run, as dlib does).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        config: DetectorConfig,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        tile_cells: int | None = DEFAULT_TILE_CELLS,
    ) -> None:
        if tile_cells is not None and tile_cells < 1:
            raise InvalidInputError(f"tile_cells must be >= 1 or None, got {tile_cells}")
        self._session = session
        self.config = config
        self.max_pixels = max_pixels
        self.tile_cells = tile_cells
        self._shrink = _SHRINK_ARENA if session.get_session_options().enable_cpu_mem_arena else None

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        manifest_section: Mapping[str, Any] | None = None,
        intra_op_threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        tile_cells: int | None = DEFAULT_TILE_CELLS,
    ) -> FaceDetector:
        """Load the exported detector once. Without a manifest section, the copy in the ONNX metadata is used.

        Raises :class:`BundleError` if the file is missing or its sha256 differs from the manifest's,
        :class:`ModelFormatError` if the manifest and the model disagree.
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise BundleError(f"cannot read detector model {path}: {err}") from err
        expected = (manifest_section or {}).get("onnx", {}).get("sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise BundleError(f"{path}: sha256 differs from the manifest's {expected}")
        if intra_op_threads is not None and intra_op_threads < 1:
            raise InvalidInputError(f"intra_op_threads must be >= 1 or None, got {intra_op_threads}")
        session = create_session(path, intra_op_threads=intra_op_threads)  # logs the providers
        embedded = session.get_modelmeta().custom_metadata_map.get("facesearch.vision.detector")
        if manifest_section is None:
            if embedded is None:
                raise ModelFormatError(f"{path} has no facesearch.vision.detector metadata and no manifest was given")
            manifest_section = json.loads(embedded)
        config = DetectorConfig.from_manifest(manifest_section)
        if embedded is not None and DetectorConfig.from_manifest(json.loads(embedded)) != config:
            raise ModelFormatError(f"{path}: the manifest's detector settings differ from the model's metadata")
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != [config.input_name] or outputs != [config.output_name]:
            raise ModelFormatError(
                f"{path}: graph has inputs {inputs} / outputs {outputs}, manifest expects "
                f"{config.input_name!r} / {config.output_name!r}"
            )
        return cls(session, config, max_pixels, tile_cells)

    # -- stages (public so benchmarks can time them) ---------------------------------------------
    def prepare(
        self,
        images: Sequence[np.ndarray],
        upsample: int = 0,
        *,
        exact: bool = True,
        cancel: Checkpoint | None = None,
    ) -> PreparedBatch:
        """Upsample and tile same-size images into one pyramid tensor (``exact=False``: upsampled and
        its levels resized the fast way, :func:`facesearch.vision.pyramid.pyramid_up_planes_fast`,
        :func:`facesearch.vision.pyramid.build_pyramid_tensor`)."""
        if not 0 <= upsample <= MAX_UPSAMPLE:
            raise InvalidInputError(f"upsample must be between 0 and {MAX_UPSAMPLE}, got {upsample}")
        rgb = [_as_rgb(im) for im in images]
        if not rgb or any(im.shape != rgb[0].shape for im in rgb):
            raise InvalidInputError("prepare() needs one or more images of the same size")
        h, w = rgb[0].shape[:2]
        up_h, up_w = h, w
        for _ in range(upsample):
            up_h, up_w = pyramid_up_size(up_h, up_w)
        if up_h * up_w > self.max_pixels:
            raise ImageTooLargeError(
                f"a {w}x{h} image upsampled {upsample} times is {up_w}x{up_h} pixels, "
                f"over the detector's limit of {self.max_pixels}"
            )
        planes = np.ascontiguousarray(np.stack(rgb).transpose(0, 3, 1, 2))  # (n, 3, H, W)
        for _ in range(upsample):
            checkpoint(cancel, "an upsampling")
            planes = pyramid_up_planes(planes) if exact else pyramid_up_planes_fast(planes)
        c = self.config
        layout = tiled_pyramid_layout(planes.shape[2], planes.shape[3], c.rate_down, c.padding, c.outer_padding)
        tensor = build_pyramid_tensor(planes, c.avg_rgb, layout, exact=exact, cancel=cancel)
        return PreparedBatch(tensor, layout, upsample)

    def forward(self, batch: PreparedBatch, cancel: Checkpoint | None = None) -> np.ndarray | None:
        """The network's score maps ``(n, 1, h, w)``, or None when the tensor is too small to score.

        Tensors of more output cells than one tile are scored tile by tile (see the module docstring);
        ``cancel`` is checked before each tile, and a :class:`~facesearch.util.cancel.CancelToken` also
        stops a tile's network run midway (onnxruntime's ``RunOptions.terminate``, checked between nodes).
        """
        n, _, rows, cols = batch.tensor.shape
        if min(rows, cols) < self.config.min_input_size:
            return None
        c, t = self.config, self.tile_cells
        out_rows, out_cols = c.output_size(rows), c.output_size(cols)
        options, last_options, unregister = self._run_options(cancel)
        try:
            if t is None or out_rows * out_cols <= t * t:  # no more work than one tile: one run
                return self._run(batch.tensor, last_options, cancel)
            scores = np.empty((n, 1, out_rows, out_cols), dtype=np.float32)
            tiles = [(r0, c0) for r0 in range(0, out_rows, t) for c0 in range(0, out_cols, t)]
            for r0, c0 in tiles:
                checkpoint(cancel, "a detector tile")
                r1, c1 = min(out_rows, r0 + t), min(out_cols, c0 + t)
                (y0, y1), (x0, x1) = c.input_span(r0, r1, rows), c.input_span(c0, c1, cols)
                tensor = np.ascontiguousarray(batch.tensor[:, :, y0:y1, x0:x1])
                tile = self._run(tensor, last_options if (r0, c0) == tiles[-1] else options, cancel)
                # the tile's first output cell is y0 / stride: keep cells [r0, r1) x [c0, c1)
                dy, dx = y0 // c.out_stride, x0 // c.out_stride
                scores[:, :, r0:r1, c0:c1] = tile[:, :, r0 - dy : r1 - dy, c0 - dx : c1 - dx]
            return scores
        finally:
            unregister()

    def _run_options(
        self, cancel: Checkpoint | None
    ) -> tuple[ort.RunOptions | None, ort.RunOptions | None, Callable[[], None]]:
        """Run options for a photo's tiles and for its last one (which gives the arena's memory back):
        with a cancel token, fresh ones that the token terminates when it stops."""
        if cancel is None:
            return None, self._shrink, lambda: None
        options, last = ort.RunOptions(), ort.RunOptions()
        if self._shrink is not None:
            last.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

        def terminate() -> None:
            options.terminate = True
            last.terminate = True

        return options, last, interrupt_on_stop(cancel, terminate)

    def _run(
        self, tensor: np.ndarray, options: ort.RunOptions | None = None, cancel: Checkpoint | None = None
    ) -> np.ndarray:
        """One network run (``options``: the last run's arena shrink, a terminate flag)."""
        feeds = {self.config.input_name: tensor}
        try:
            scores: np.ndarray = self._session.run([self.config.output_name], feeds, options)[0]
        except Exception:
            checkpoint(cancel, "the end of a detector tile")  # terminated by the token: say so
            raise
        return scores

    def decode(self, scores: np.ndarray, batch: PreparedBatch, adjust_threshold: float = 0.0) -> list[Detection]:
        """``loss_mmod_::to_label`` for one ``(h, w)`` score map, then the upsampling undone."""
        c = self.config
        rows, cols = np.nonzero(scores > adjust_threshold)  # row-major: dlib's scan order
        if rows.size == 0:
            return []
        values = scores[rows, cols].astype(np.float64)
        cx = (c.out_stride * cols + c.out_offset).astype(np.float64)
        cy = (c.out_stride * rows + c.out_offset).astype(np.float64)
        hw, hh = (c.window[0] - 1) / 2.0, (c.window[1] - 1) / 2.0  # centered_drect
        boxes = tiled_pyramid_to_image(batch.layout, np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1))
        rects = lround(boxes)
        order = np.argsort(-values, kind="stable")
        rects, values = rects[order], values[order]
        keep = greedy_nms(rects, c.nms_iou, c.nms_covered)
        rects, values = rects[keep], values[keep]
        if batch.upsample:
            rects = lround(pyramid2_rect_down(rects.astype(np.float64), batch.upsample))
        return [
            Detection((float(r[0]), float(r[1]), float(r[2] + 1), float(r[3] + 1)), float(v))
            for r, v in zip(rects, values, strict=True)
        ]

    # -- the API -----------------------------------------------------------------------------------
    def detect(
        self,
        image: np.ndarray,
        upsample: int = 0,
        adjust_threshold: float = 0.0,
        *,
        exact: bool = True,
        cancel: Checkpoint | None = None,
    ) -> list[Detection]:
        """Faces in an HxWx3 uint8 RGB image, best first, exactly as dlib's CNN detector finds them
        (``exact=False``: with the fast pyramid, for images that are no dlib scan anyway). ``cancel``
        is checked between pyramid levels and network tiles."""
        return self.detect_batch([image], upsample, adjust_threshold, exact=exact, cancel=cancel)[0]

    def detect_batch(
        self,
        images: Sequence[np.ndarray],
        upsample: int = 0,
        adjust_threshold: float = 0.0,
        *,
        exact: bool = True,
        cancel: Checkpoint | None = None,
    ) -> list[list[Detection]]:
        """:meth:`detect` for many images; images of the same size share one network run."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(_as_rgb(im).shape, []).append(i)
        results: list[list[Detection]] = [[] for _ in images]
        for shape, idx in groups.items():
            if shape[0] * shape[1] == 0:
                continue
            batch = self.prepare([images[i] for i in idx], upsample, exact=exact, cancel=cancel)
            scores = self.forward(batch, cancel)
            if scores is None:
                continue
            for j, i in enumerate(idx):
                results[i] = self.decode(scores[j, 0], batch, adjust_threshold)
        return results
