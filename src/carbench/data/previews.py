"""Plots of the data stages: class distribution (matplotlib, Agg backend) and a captioned grid of crops (PIL).

matplotlib is imported inside the function that needs it: it costs ~0.8 s to import.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..core.io import atomic_file

BAR_INCHES_PER_CLASS = 0.12
MIN_FIGURE_WIDTH = 6.0
FIGURE_HEIGHT = 4.0
LEGEND_HEADROOM = 1.2          # y range above the tallest bar, so the legend never hides a bar
MAX_LABELLED_CLASSES = 60      # beyond this, class names on the x axis are unreadable: show ids only
PREVIEW_TILE_PX = 128          # every crop is shown at this size, so captions stay readable
PREVIEW_CAPTION_PX = 14
PREVIEW_GAP_PX = 4
PREVIEW_FONT_PX = 10
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    """Save a figure atomically as PNG and close it."""
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)


def plot_class_distribution(per_class: Mapping[str, np.ndarray], class_names: Sequence[str], path: str | Path) -> None:
    """Stacked bars of images per class, one colour per split; ``per_class[split]`` is (C,) counts."""
    plt = _pyplot()
    num = len(class_names)
    fig, ax = plt.subplots(figsize=(max(MIN_FIGURE_WIDTH, num * BAR_INCHES_PER_CLASS), FIGURE_HEIGHT))
    bottom = np.zeros(num)
    for split, counts in per_class.items():
        ax.bar(np.arange(num), counts, bottom=bottom, label=f"{split} ({int(np.sum(counts))})", width=0.85)
        bottom = bottom + counts
    ax.set_xlabel("class id")
    ax.set_ylabel("images")
    ax.set_title(f"Images per class and split ({num} classes, {int(bottom.sum())} images)")
    if num <= MAX_LABELLED_CLASSES:
        ax.set_xticks(np.arange(num))
        ax.set_xticklabels([f"{i} {n}" for i, n in enumerate(class_names)], rotation=90, fontsize=6)
    ax.set_ylim(0, max(1.0, float(bottom.max())) * LEGEND_HEADROOM)
    ax.legend(loc="upper right", ncols=len(per_class))
    ax.margins(x=0.01)
    _save(fig, path)


def plot_crop_grid(images: np.ndarray, titles: Sequence[str], path: str | Path) -> None:
    """A square-ish PNG grid of uint8 crops ``(N, S, S, 3)``, each captioned with its title.

    Drawn with PIL, not matplotlib: a 36-axes figure takes ~2 s to lay out, this takes milliseconds.
    """
    from PIL import Image, ImageDraw, ImageFont

    count = len(images)
    cols = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    tile = PREVIEW_TILE_PX
    cell_w, cell_h = tile + PREVIEW_GAP_PX, tile + PREVIEW_CAPTION_PX + PREVIEW_GAP_PX
    sheet = Image.new("RGB", (cols * cell_w + PREVIEW_GAP_PX, rows * cell_h + PREVIEW_GAP_PX), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=PREVIEW_FONT_PX)
    for i in range(count):
        x = PREVIEW_GAP_PX + (i % cols) * cell_w
        y = PREVIEW_GAP_PX + (i // cols) * cell_h
        crop = Image.fromarray(np.asarray(images[i], dtype=np.uint8), "RGB")
        sheet.paste(crop.resize((tile, tile), Image.Resampling.BILINEAR) if crop.width != tile else crop, (x, y))
        draw.text((x, y + tile + 1), _fit(draw, titles[i], font, tile), fill="black", font=font)
    with atomic_file(path, "wb") as handle:
        sheet.save(handle, format="PNG", optimize=False)


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
