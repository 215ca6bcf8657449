"""The training curves as PNG (loss; train and validation accuracy per epoch), drawn with Pillow alone.

matplotlib is not a dependency; like :mod:`facesearch.evaluation.det_plot`, two line panels are a few
lines of Pillow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from facesearch.util.fs import atomic_path

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44))


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    epochs: Sequence[int],
    series: Sequence[tuple[str, Sequence[float | None]]],
) -> None:
    font = ImageFont.load_default()
    x0, y0, x1, y1 = box
    values = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    e0, e1 = (min(epochs), max(epochs)) if epochs else (0, 1)
    e1 = max(e1, e0 + 1)

    def xy(e: float, v: float) -> tuple[float, float]:
        return x0 + (e - e0) / (e1 - e0) * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0)

    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text((x0, y0 - 16), title, fill="black", font=font)
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        _, y = xy(e0, v)
        draw.line([(x0, y), (x1, y)], fill=(225, 225, 225))
        draw.text((x0 - 56, y - 6), f"{v:.4g}", fill="black", font=font)
    for e in range(e0, e1 + 1):
        x, _ = xy(e, lo)
        draw.text((x - 3, y1 + 4), str(e), fill="black", font=font)
    for i, (label, vs) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pts = [xy(e, v) for e, v in zip(epochs, vs, strict=True) if v is not None and math.isfinite(v)]
        if len(pts) >= 2:
            draw.line(pts, fill=colour, width=2)
        for x, y in pts:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        lx = x0 + 230 + 170 * i  # legend above the panel, right of its title: never over the data
        draw.line([(lx, y0 - 10), (lx + 20, y0 - 10)], fill=colour, width=3)
        draw.text((lx + 25, y0 - 16), label, fill="black", font=font)


def draw_curves(rows: Sequence[dict[str, float | int | None]], out: Path, *, title: str = "training") -> Path:
    """``rows``: the per-epoch log (epoch, train_loss, train_accuracy, val_accuracy). Temp file, then replace."""
    width, height = 760, 620
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((20, 8), title, fill="black", font=ImageFont.load_default())
    epochs = [int(r["epoch"] or 0) for r in rows]
    _panel(
        draw,
        (80, 50, width - 20, 270),
        "train loss (margin softmax)",
        epochs,
        [("train loss", [_f(r.get("train_loss")) for r in rows])],
    )
    _panel(
        draw,
        (80, 330, width - 20, height - 40),
        "accuracy (epoch 0 = base model)",
        epochs,
        [
            ("val verification", [_f(r.get("val_accuracy")) for r in rows]),
            ("train (no margin)", [_f(r.get("train_accuracy")) for r in rows]),
        ],
    )
    draw.text((width // 2 - 20, height - 18), "epoch", fill="black", font=ImageFont.load_default())
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    return out


def _f(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None
