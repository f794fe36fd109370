"""Figures of the evaluate / aggregate / predict steps (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..core.io import atomic_file  # noqa: E402

#: A class pair seen confused pulls harder than a shared make (first word of "Make Model Type Year"):
#: affinities are confusion rate / max rate in [0, 1] plus this bonus for the same make, so
#: never-confused classes of one make still sit together and observed confusions dominate.
SAME_MAKE_AFFINITY = 0.05
CONFUSION_INCH_PER_CLASS = 0.12   # 196 classes -> a ~24 inch square figure: names readable when zoomed
MIN_FIGURE_INCH = 5.0
ANNOTATE_MAX_CLASSES = 30         # print counts in the cells only while they fit
CELL_INCH = 1.9                   # one image tile of a grid
CAPTION_INCH = 0.5                # caption space above each tile (two wrapped lines of 6 pt)
TITLE_INCH = 0.4                  # the grid's title
TITLE_WRAP_CHARS = 26             # Stanford Cars names run up to ~50 characters
DPI = 110
CONFUSION_DPI = 150               # 196 classes -> ~3500 px, 5 pt names ~10 px tall
CONFUSION_GAMMA = 0.5             # power-law colour scale: a 5% confusion is still clearly visible
LABEL_EM_PER_CHAR = 0.45          # average character width of the tick labels, in font sizes
POINTS_PER_INCH = 72


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = DPI, tight: bool = True) -> None:
    """Write ``fig`` as PNG atomically and close it. ``tight`` crops to the drawn content, which costs a second
    full draw: figures that set their own margins pass False (the 196-class confusion matrix saves ~2.5 s)."""
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)


def cluster_order(cm: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """A permutation ``(C,)`` of the classes that puts mutually confused classes next to each other.

    Average-linkage clustering (with optimal leaf ordering) on distance = max affinity - affinity,
    where affinity = symmetrised row-normalised confusion rate (scaled to [0, 1]) plus
    SAME_MAKE_AFFINITY for classes of the same make.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    n = len(class_names)
    if n < 3:
        return np.arange(n)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    rates = (rates + rates.T) / 2
    np.fill_diagonal(rates, 0.0)
    makes = np.array([name.split(" ")[0] if name else "" for name in class_names])
    affinity = rates / (rates.max() or 1.0) + SAME_MAKE_AFFINITY * (makes[:, None] == makes[None, :])
    dist = affinity.max() - affinity
    np.fill_diagonal(dist, 0.0)
    condensed = squareform(dist, checks=False)
    tree = optimal_leaf_ordering(linkage(condensed, method="average"), condensed)
    return leaves_list(tree)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str) -> np.ndarray:
    """Row-normalised confusion matrix PNG with class names, clustered order; returns the order."""
    order = cluster_order(cm, class_names)
    cm = cm[np.ix_(order, order)]
    names = [class_names[i] for i in order]
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(names)
    side = max(MIN_FIGURE_INCH, n * CONFUSION_INCH_PER_CLASS)
    font = 8 if n <= ANNOTATE_MAX_CLASSES else 5
    tight = n <= ANNOTATE_MAX_CLASSES   # a tight bounding box costs a second draw: ~2.5 s with 196 names
    if tight:
        fig, ax = plt.subplots(figsize=(side + 1.5, side))
    else:  # margins for the class names (the longest at ~0.45 em per character) instead
        label = max((len(name) for name in names), default=1) * font * LABEL_EM_PER_CHAR / POINTS_PER_INCH + 0.45
        width, height = side + 1.5 + label, side + label + 0.6
        fig, ax = plt.subplots(figsize=(width, height))
        fig.subplots_adjust(left=label / width, bottom=label / height, right=1 - 1.5 / width, top=1 - 0.6 / height)
    norm = matplotlib.colors.PowerNorm(gamma=CONFUSION_GAMMA, vmin=0.0, vmax=1.0)
    im = ax.imshow(rates, cmap="Blues", norm=norm, interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"{title} (rows normalised; order clusters confused classes)")
    if n <= ANNOTATE_MAX_CLASSES:
        for (i, j), count in np.ndenumerate(cm):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=font,
                        color="white" if rates[i, j] > 0.5 else "black")
    colorbar = {"label": "fraction of the actual class (square-root scale)"}
    if tight:
        fig.colorbar(im, ax=ax, fraction=0.03, **colorbar)
    else:  # in the right margin, so the square matrix keeps the whole box the margins leave
        fig.colorbar(im, cax=fig.add_axes((1 - 1.2 / width, 0.3, 0.25 / width, 0.4)), **colorbar)
    save_figure(fig, path, CONFUSION_DPI, tight=tight)
    return order


def image_grid(images: np.ndarray, titles: Sequence[str], path: str | Path, title: str) -> None:
    """A grid PNG of uint8 images ``(N, H, W, 3)`` (or ``(N, H, W)``) with one (wrapped) caption each.

    The tiles are one mosaic in one axes with the captions as text above each tile: the same picture as a
    subplot per image, drawn in a fraction of the time (36 subplots cost evaluate@ about 1.5 s per run)."""
    n = len(images)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    fig = plt.figure(figsize=(cols * CELL_INCH, rows * (CELL_INCH + CAPTION_INCH) + TITLE_INCH))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - TITLE_INCH / fig.get_figheight()))
    ax.axis("off")
    if n == 0:
        ax.text(0.5, 0.5, "none", ha="center", va="center")
    else:
        shown = max(1, int(CELL_INCH * DPI))              # a tile's side in the saved PNG, in pixels
        tiles = [_fit(np.asarray(img), shown) for img in images]
        h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
        band = int(round(h * CAPTION_INCH / CELL_INCH))   # caption space above each tile, in pixels
        gap = max(2, w // 25)                               # white gutter between tiles
        mosaic = np.full((rows * (h + band), cols * (w + gap), 3), 255, dtype=np.uint8)
        for k, (tile, caption) in enumerate(zip(tiles, titles)):
            r, c = divmod(k, cols)
            top, left = r * (h + band) + band, c * (w + gap) + gap // 2
            mosaic[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
            lines = [textwrap.fill(line, TITLE_WRAP_CHARS) for line in caption.split("\n")]
            ax.text(left + w / 2, top - 1, "\n".join(lines), ha="center", va="bottom", fontsize=6)
        ax.imshow(mosaic, interpolation="none")
    fig.suptitle(title, y=1.0 - 0.1 * TITLE_INCH / fig.get_figheight(), va="top")
    save_figure(fig, path)


def _fit(img: np.ndarray, side: int) -> np.ndarray:
    """An RGB uint8 tile no larger than ``side`` pixels (antialiased downscale with PIL, aspect kept)."""
    from PIL import Image

    tile = Image.fromarray(img).convert("RGB")
    if max(tile.size) > side:
        tile.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(tile)


def plot_bars(table: pd.DataFrame, columns: Sequence[str], path: str | Path, title: str,
              errors: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> None:
    """Grouped bars of ``columns`` (e.g. top1, f1_macro) per row of ``table`` (index = experiment).

    ``errors[col] = (low, high)``: an interval per row, drawn as an error bar (NaN: none)."""
    n, width = len(table), 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(figsize=(max(MIN_FIGURE_INCH, 0.9 * n + 2), 4.5))
    x = np.arange(n)
    for i, col in enumerate(columns):
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)
        yerr = None
        if errors and col in errors:
            low = pd.to_numeric(pd.Series(list(errors[col][0])), errors="coerce").to_numpy(dtype=float)
            high = pd.to_numeric(pd.Series(list(errors[col][1])), errors="coerce").to_numpy(dtype=float)
            yerr = np.nan_to_num(np.clip(np.vstack([values - low, high - values]), 0, None))
        bars = ax.bar(x + (i - (len(columns) - 1) / 2) * width, np.nan_to_num(values), width, label=col,
                      yerr=yerr, capsize=2 if yerr is not None else 0)
        ax.bar_label(bars, labels=[f"{v:.2f}" if np.isfinite(v) else "" for v in values], fontsize=6)
    labels = [f"{name}\n({cfg})" for name, cfg in zip(table.index, table.get("config", [""] * n))]
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def plot_curves(curves: Mapping[str, pd.DataFrame], path: str | Path, ylabel: str, title: str) -> None:
    """Overlaid line plot; each frame has columns ``step`` and one value column."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, frame in curves.items():
        value = [c for c in frame.columns if c != "step"][0]
        ax.plot(frame["step"] + 1, frame[value], marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7)
    save_figure(fig, path)
