"""Overexposed photos (a flash, a backlight): measuring it, and a darker copy to detect faces in.

A photo whose pixels went through ``v * 1.9 + 30`` (clipped at 255) has most of the skin saturated
and every shadow lifted; dlib's detector then misses a few percent of the faces it finds in the
original. :func:`measure_exposure` reads two numbers from a subsample of the pixels (mean luminance,
and the share of pixels with a channel at 255), :func:`is_overexposed` compares them with limits
chosen on a tuning part of lfw-dev, and :func:`normalise_exposure` gives a copy through a gamma
curve that brings the mean luminance back to :data:`TARGET_MEAN_LUMA` (its black point at the
darkest pixels' level, so lifted shadows come back down first); :func:`rescue_copies` gives that
copy and then, if the detector needs another, the same copy with its luminance equalised locally
(CLAHE, :func:`equalise_luminance`), which stretches the faint edges of the skin left below
saturation.

The pipeline uses the copies only to search again when the photo itself gave no face and it is
overexposed (:class:`facesearch.vision.pipeline.PipelineConfig`'s ``exposure_rescue``), one after
the other until one gives a face: boxes come from the copy, landmarks and chips from the photo's
own pixels. Ordinary photos, and every photo
in which a face was found, are processed exactly as before. Normalising the aligned chip before
embedding was measured too and does not help (the saturated skin holds no information to bring
back): bench/results/robustness.md.

Why thresholds and not a learned model: the two measurements separate the lfw-dev tuning photos
(clean and overexposed) with a wide margin, they cost ~0.1 ms on a subsample, and they are
explainable in a log line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from facesearch.errors import InvalidInputError, Reason

#: A photo is overexposed when its mean luminance (0-255) is at least this ...
OVEREXPOSED_MEAN_LUMA = 160.0
#: ... or when at least this share of its pixels has a channel at 255 and its mean luminance is
#: at least :data:`OVEREXPOSED_SATURATED_MIN_LUMA` (a dark photo with a bright window is not).
#: 0.1 and 85 flag all 246 overexposed tuning photos (0.2 and 100 missed 9: dark photos whose
#: flashed copy has a mean of 91-159 and 12-22% saturated) and 10 of their clean originals (4%).
OVEREXPOSED_SATURATED = 0.1
OVEREXPOSED_SATURATED_MIN_LUMA = 85.0
#: The mean luminance (above the black point) the normalised copy is brought to: darker than a
#: well-exposed photo (lfw-dev's clean photos: median ~96), because the detector finds the faces
#: it lost in a darker copy more often (6 of the 7 lost tuning photos at 50, 4 at 65-110).
TARGET_MEAN_LUMA = 50.0
#: CLAHE on the darkened copy's luminance (L of CIE Lab): clip limit and tile grid. On the tuning
#: photos that lost their face, the detector's best score in the equalised copy was 0.28 and 0.21
#: on the two the gamma copy rescued worst (0.03 and -0.00: one of them lost); it rescues 6 of 7
#: alone, but loses faces the gamma copy finds too, so it is the second copy, not a replacement.
CLAHE_CLIP = 2.0
CLAHE_TILES = 8
#: Exposure is measured on at most about this many pixels (a regular subsample).
SAMPLE_PIXELS = 40_000
#: The black point: this percentile of the sample's luminance is mapped to 0 by the curve.
BLACK_PERCENTILE = 0.5

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True, slots=True)
class Exposure:
    """What :func:`measure_exposure` saw: mean and black-point luminance (0-255), and the share
    of pixels with at least one channel at 255."""

    mean_luma: float
    black_luma: float
    saturated: float

    @property
    def overexposed(self) -> bool:
        return is_overexposed(self)


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise InvalidInputError(
            f"image must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}", reason=Reason.IMAGE_LAYOUT
        )


def _sample(image: np.ndarray) -> np.ndarray:
    """A regular subsample of about :data:`SAMPLE_PIXELS` pixels, (n, 3) uint8."""
    height, width = image.shape[:2]
    step = max(1, int(np.sqrt(height * width / SAMPLE_PIXELS)))
    return image[::step, ::step].reshape(-1, 3)


def measure_exposure(image: np.ndarray) -> Exposure:
    """Mean luminance, black point and saturated share of an RGB uint8 photo (on a subsample)."""
    _check(image)
    pixels = _sample(image)
    luma = pixels.astype(np.float32) @ _LUMA
    return Exposure(
        mean_luma=float(luma.mean()),
        black_luma=float(np.percentile(luma, BLACK_PERCENTILE)),
        saturated=float((pixels.max(axis=1) == 255).mean()),
    )


def is_overexposed(exposure: Exposure) -> bool:
    """Whether a photo measured as ``exposure`` is overexposed (module docstring: the limits)."""
    if exposure.mean_luma >= OVEREXPOSED_MEAN_LUMA:
        return True
    return exposure.saturated >= OVEREXPOSED_SATURATED and exposure.mean_luma >= OVEREXPOSED_SATURATED_MIN_LUMA


def exposure_curve(exposure: Exposure, target: float = TARGET_MEAN_LUMA) -> np.ndarray:
    """The 256-entry lookup table of :func:`normalise_exposure`: ``v -> 255 * x ** g`` with
    ``x = (v - black) / (255 - black)``, ``g`` such that the mean luminance lands near ``target``
    (solved on the mean itself: exact for a flat photo, close for real ones). Never brightens."""
    black = min(max(exposure.black_luma, 0.0), 200.0)
    x = np.clip((np.arange(256, dtype=np.float64) - black) / (255.0 - black), 0.0, 1.0)
    mean = min(max((exposure.mean_luma - black) / (255.0 - black), 1e-3), 1.0 - 1e-3)
    gamma = max(1.0, float(np.log(target / 255.0) / np.log(mean)))
    return np.clip(np.round(255.0 * x**gamma), 0, 255).astype(np.uint8)


def normalise_exposure(image: np.ndarray, exposure: Exposure | None = None) -> np.ndarray:
    """A darker copy of an overexposed photo (:func:`exposure_curve` on every channel); the photo
    itself is not changed. ``exposure`` defaults to :func:`measure_exposure`'s."""
    _check(image)
    lut = exposure_curve(exposure or measure_exposure(image))
    return cv2.LUT(np.ascontiguousarray(image), lut)


def rescue_copies(image: np.ndarray, exposure: Exposure | None = None) -> Iterator[np.ndarray]:
    """The copies an overexposed photo's faces are searched in, in order, each made only when
    asked for: :func:`normalise_exposure`'s, then that one through :func:`equalise_luminance`."""
    darker = normalise_exposure(image, exposure)
    yield darker
    yield equalise_luminance(darker)


def equalise_luminance(image: np.ndarray) -> np.ndarray:
    """CLAHE (:data:`CLAHE_CLIP`, :data:`CLAHE_TILES`) on the L channel of an RGB uint8 image's Lab form."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=(CLAHE_TILES, CLAHE_TILES))
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
