"""Simple, explainable face quality signals used to gate enrollment and to report.

``face_size`` is the detector box's shorter side in source pixels; ``blur`` is the
variance of the Laplacian of the grey 150x150 chip (higher = sharper). Both are
cheap, deterministic and comparable across photos because the chip is aligned and
of fixed size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, slots=True)
class FaceQuality:
    face_size: float
    blur: float  # variance of the Laplacian on the aligned chip; < ~30 looks visibly blurred


def measure_quality(box: tuple[float, float, float, float], chip: np.ndarray) -> FaceQuality:
    x1, y1, x2, y2 = box
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    return FaceQuality(face_size=float(min(x2 - x1, y2 - y1)), blur=sharpness)
