"""How much of a photo the face detector scans: a budget in pyramid pixels, and what it buys.

The MMOD detector slides its window (80x80 pixels) over an image pyramid that only shrinks, so it
finds faces of about the window's size and larger in the image it scans, and its work (time and
memory) grows with that image's area: the *pyramid pixels*, the area of the pyramid's first level.
dlib scans the photo itself, upsampled ``u`` times (``pyramid_up``, ~2x a step) to reach smaller
faces, so a 12 MP photo at a 40 px minimum face would be 48 MP: minutes of work and gigabytes.

:func:`plan_detection` decides, per photo, what is scanned:

* **exact** (dlib parity): the photo upsampled ``u = upsample_for_min_face(min_face)`` times, as
  ``dlib.cnn_face_detection_model_v1(img, u)`` does, whenever that image's area is within the
  budget (always when there is no budget). The smallest face searched is ``window / 2**u``.
* **scaled**: otherwise a copy of the photo resized by ``s = min(window / min_face,
  sqrt(budget / (W * H)))``, the largest scale the budget allows, scanned without upsampling; the
  boxes found are mapped back to the photo (edges times ``W / copy width``). The smallest face
  searched is ``window / s``, more than ``min_face`` when the budget binds (``limited``).

With the default 40 px minimum face, a photo up to ~0.65 MP is scanned exactly as dlib scans it
(its 2x upsampling fits the default 2.6 MP budget), so LFW-size and VGA photos keep bit-exact
parity. The budget buys a minimum face that is a fixed fraction of the photo's short side whatever
its resolution: ``window * sqrt(aspect / budget)``, 5.7% at 2.6 MP for 4:3 photos (174 px at 12 MP;
faces a little smaller are found too: every planted face of 5% and more in the measurement behind
the default, bench/results/detect_budget.md).

A caller that *names* its smallest face (a request's ``min_face_px``) asks for a promise: its photo
is scanned at ``window / min_face`` even past the default budget, up to ``max_pixels``; beyond
that, or under :data:`MIN_FACE_FLOOR`, the call fails with ``MIN_FACE_TOO_SMALL`` and says the
smallest face this photo allows, before any work is done.

:func:`work_bytes` estimates the memory one photo's detection holds at its peak (the decoded photo,
the scanned copy, the pyramid tensor, the network's working set), which admission control counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from facesearch.errors import InvalidInputError, Reason
from facesearch.vision.detector import DEFAULT_TILE_CELLS, DLIB_MMOD_CONTEXT_CELLS, upsample_for_min_face
from facesearch.vision.pyramid import pyramid_up_size, tiled_pyramid_layout

MIN_FACE_FLOOR = 10  # px: the smallest face anyone may ask for (window 80 / upsample 3)
MAX_UPSCALE = 8.0  # the scanned copy is never more than 8x the photo per side (window 80 / 10 px)
_FLOAT_RGB = 12  # bytes of a float32 RGB pixel
_NETWORK_BYTES = 16  # the network's activations per input pixel (16 channels at half resolution)
# Input pixels of one tile: its output cells and context, at the network's stride and offset.
_TILE_INPUT_PIXELS = (8 * (DEFAULT_TILE_CELLS + 2 * DLIB_MMOD_CONTEXT_CELLS) + 29) ** 2


@dataclass(frozen=True, slots=True)
class DetectionPlan:
    """What the detector scans for one ``width`` x ``height`` photo, and the smallest face it can find.

    ``scan_width`` x ``scan_height`` is the image the network sees: the photo upsampled ``upsample``
    times (``exact``), or a resized copy of it. ``min_face`` is the smallest face (detector box
    side, in the photo's own pixels) the scan can find; ``limited`` says the budget made it larger
    than the minimum face asked for.
    """

    width: int
    height: int
    scan_width: int
    scan_height: int
    upsample: int
    exact: bool
    min_face: float
    limited: bool

    @property
    def pyramid_pixels(self) -> int:
        """The cost: the area of the pyramid's first level."""
        return self.scan_width * self.scan_height

    @property
    def scale(self) -> float:
        """Scanned pixels per photo pixel, along x."""
        return self.scan_width / self.width

    @property
    def min_face_px(self) -> int:
        """:attr:`min_face` rounded up to whole pixels (what replies state)."""
        return math.ceil(self.min_face - 1e-9)


def _upsampled_size(width: int, height: int, upsample: int) -> tuple[int, int]:
    h, w = height, width
    for _ in range(upsample):
        h, w = pyramid_up_size(h, w)
    return w, h


def plan_detection(
    width: int,
    height: int,
    *,
    min_face: int,
    window: int,
    budget: int | None,
    max_pixels: int | None = None,
    requested: bool = False,
) -> DetectionPlan:
    """The scan for a ``width`` x ``height`` photo (see the module docstring).

    ``budget`` is the default cost limit in pyramid pixels (None: no budget, dlib's exact scan at
    any size); ``requested`` marks ``min_face`` as the caller's own, which may cost up to
    ``max_pixels`` (default: ``budget``) and otherwise raises ``MIN_FACE_TOO_SMALL``.
    """
    if width < 1 or height < 1:
        raise InvalidInputError(f"cannot plan detection for a {width}x{height} image", reason=Reason.IMAGE_LAYOUT)
    if min_face < MIN_FACE_FLOOR:
        raise InvalidInputError(
            f"min_face_px must be at least {MIN_FACE_FLOOR} px, got {min_face}", reason=Reason.MIN_FACE_TOO_SMALL
        )
    upsample = upsample_for_min_face(min_face, window)
    up_w, up_h = _upsampled_size(width, height, upsample)
    if budget is None or up_w * up_h <= budget:
        return DetectionPlan(width, height, up_w, up_h, upsample, True, window / 2**upsample, False)
    area = width * height
    wanted = min(window / min_face, MAX_UPSCALE)
    if requested:
        limit = budget if max_pixels is None else max(budget, max_pixels)
        if area * wanted * wanted > limit:
            smallest = window / math.sqrt(limit / area)
            raise InvalidInputError(
                f"faces down to {min_face} px in a {width}x{height} photo need {area * wanted * wanted / 1e6:.1f} "
                f"million pyramid pixels, over this server's maximum of {limit / 1e6:.1f} million "
                f"(FACESEARCH_MAX_DETECT_PIXELS); the smallest face it can search in this photo is "
                f"{math.ceil(smallest)} px",
                reason=Reason.MIN_FACE_TOO_SMALL,
            )
        scale, round_up = wanted, True  # the promise: scan sides rounded up
    else:
        scale, round_up = min(wanted, math.sqrt(budget / area)), False  # within the budget: rounded down
    whole = math.ceil if round_up else math.floor
    scan_w, scan_h = max(1, whole(width * scale)), max(1, whole(height * scale))
    actual = min(scan_w / width, scan_h / height)
    return DetectionPlan(width, height, scan_w, scan_h, 0, False, window / actual, window / actual > min_face + 1e-9)


def work_bytes(plan: DetectionPlan, *, rate_down: int = 6, padding: int = 10, outer_padding: int = 11) -> int:
    """Peak memory of one photo's detection, estimated: the decoded photo (uint8 RGB); the scanned
    copy, its first float level and the resize temporaries; the tiled pyramid tensor (float32 RGB);
    and the network's working set, ~16 bytes per input pixel of the tensor or of one tile, whichever
    is smaller. Against the peak RSS bench/results/detect_budget.md measured for a whole analyze
    (decode and embedding too): 33 MB for an LFW photo (measured 33), 215-244 MB for 1080p, 8 MP
    and 12 MP photos (measured 249-271)."""
    layout = tiled_pyramid_layout(plan.scan_height, plan.scan_width, rate_down, padding, outer_padding)
    tensor = layout.rows * layout.cols
    photo = 3 * plan.width * plan.height
    scan = plan.pyramid_pixels * (3 + 2 * _FLOAT_RGB)
    return photo + scan + tensor * _FLOAT_RGB + min(tensor, _TILE_INPUT_PIXELS) * _NETWORK_BYTES


def worst_work_bytes(max_image_pixels: int, max_detect_pixels: int) -> int:
    """:func:`work_bytes` of the costliest photo a server can be sent: ``max_image_pixels`` scanned at
    ``max_detect_pixels``, at the worst of the usual aspect ratios (portrait to panorama)."""
    worst = 0
    for aspect in (0.25, 0.5, 0.75, 1.0, 4 / 3, 2.0, 4.0):
        width = max(1, round(math.sqrt(max_image_pixels * aspect)))
        height = max(1, max_image_pixels // width)
        scale = math.sqrt(max_detect_pixels / (width * height))
        scan_w, scan_h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
        worst = max(worst, work_bytes(DetectionPlan(width, height, scan_w, scan_h, 0, False, 0.0, False)))
    return worst
