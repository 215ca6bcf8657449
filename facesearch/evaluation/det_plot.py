"""A DET curve (FNIR against FPIR, both log scale) drawn as PNG with Pillow alone.

Pillow is already a dependency; a plotting library is not worth adding for one chart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facesearch.util.fs import atomic_path

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75))


@dataclass(frozen=True, slots=True)
class Curve:
    label: str
    fpir: Sequence[float]
    fnir: Sequence[float]


def draw_det(
    curves: Sequence[Curve],
    out: Path,
    *,
    title: str = "DET",
    fpir_range: tuple[float, float] = (1e-4, 1.0),
    fnir_range: tuple[float, float] = (1e-3, 1.0),
    size: tuple[int, int] = (760, 560),
) -> Path:
    """Write the curves to ``out`` (PNG, temp file then replace). Zero rates cannot be shown on log axes
    and are left out; rates outside the ranges are drawn at the edge."""
    width, height = size
    left, right, top, bottom = 80, 20, 40, 60
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    lx0, lx1 = math.log10(fpir_range[0]), math.log10(fpir_range[1])
    ly0, ly1 = math.log10(fnir_range[0]), math.log10(fnir_range[1])

    def xy(fpir: float, fnir: float) -> tuple[float, float]:
        fx = (math.log10(min(max(fpir, fpir_range[0]), fpir_range[1])) - lx0) / (lx1 - lx0)
        fy = (math.log10(min(max(fnir, fnir_range[0]), fnir_range[1])) - ly0) / (ly1 - ly0)
        return left + fx * (width - left - right), height - bottom - fy * (height - top - bottom)

    for e in range(math.ceil(lx0), math.floor(lx1) + 1):  # grid and tick labels
        x, _ = xy(10.0**e, fnir_range[0])
        draw.line([(x, top), (x, height - bottom)], fill=(225, 225, 225))
        draw.text((x - 12, height - bottom + 6), f"1e{e}", fill="black", font=font)
    for e in range(math.ceil(ly0), math.floor(ly1) + 1):
        _, y = xy(fpir_range[0], 10.0**e)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 40, y - 6), f"1e{e}", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 12), title, fill="black", font=font)
    draw.text(((width - left) / 2, height - 28), "FPIR (non-mated searches matched)", fill="black", font=font)
    draw.text((8, top - 18), "FNIR (mated searches missed)", fill="black", font=font)
    for i, curve in enumerate(curves):
        colour = COLOURS[i % len(COLOURS)]
        pts = [
            xy(a, b)
            for a, b in zip(np.asarray(curve.fpir), np.asarray(curve.fnir), strict=True)
            if np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0
        ]
        pts.sort()
        if len(pts) >= 2:
            draw.line(pts, fill=colour, width=2)
        ly = top + 10 + 16 * i
        draw.line([(width - right - 230, ly + 6), (width - right - 205, ly + 6)], fill=colour, width=3)
        draw.text((width - right - 200, ly), curve.label, fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    return out
