"""carbench.report.plots: the image grid (the evaluate stage's misclassified crops)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from carbench.report import plots

COLOURS = [(230, 20, 20), (20, 200, 20), (20, 20, 230), (240, 200, 0), (0, 200, 220)]


def _has_colour(png: np.ndarray, rgb: tuple[int, int, int], min_pixels: int) -> bool:
    return int((np.abs(png[..., :3].astype(int) - rgb).max(axis=-1) < 12).sum()) >= min_pixels


def test_grid_shows_every_tile_and_caption_rows(tmp_path):
    tiles = np.stack([np.full((40, 40, 3), c, np.uint8) for c in COLOURS])
    captions = [f"true: class {i}\npred: class {i + 1} (0.90)" for i in range(len(COLOURS))]
    plots.image_grid(tiles, captions, tmp_path / "grid.png", "five mistakes")
    png = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    for colour in COLOURS:                       # each crop visible as a solid block
        assert _has_colour(png, colour, 500), colour
    dark = (png.max(axis=-1) < 100).sum()        # caption and title text is drawn
    assert dark > 200


def test_grid_of_grayscale_and_of_nothing(tmp_path):
    gray = np.full((2, 30, 30), 90, np.uint8)
    plots.image_grid(gray, ["a", "b"], tmp_path / "gray.png", "gray")
    png = np.asarray(Image.open(tmp_path / "gray.png").convert("RGB"))
    assert _has_colour(png, (90, 90, 90), 400)
    plots.image_grid(np.zeros((0, 8, 8, 3), np.uint8), [], tmp_path / "none.png", "no mistakes")
    assert Image.open(tmp_path / "none.png").size[0] > 0


def test_many_class_confusion_fills_its_figure(tmp_path):
    """Past ANNOTATE_MAX_CLASSES the figure sets its own margins (no second, tight draw): the matrix must still
    take most of the picture, with the class names in the margins."""
    n = plots.ANNOTATE_MAX_CLASSES + 10
    names = [f"Make{i % 7} Model {i} Sedan 2012" for i in range(n)]
    plots.plot_confusion(np.eye(n, dtype=np.int64) * 5, names, tmp_path / "cm.png", "many classes")
    png = np.asarray(Image.open(tmp_path / "cm.png").convert("RGB")).astype(int)
    dark_blue = (png[..., 2] > 80) & (png[..., 0] < 60) & (png[..., 1] < 90)   # the diagonal cells
    dark_blue[:, int(0.85 * png.shape[1]):] = False                              # not the colour bar
    rows, cols = np.nonzero(dark_blue)
    assert rows.max() - rows.min() > 0.7 * png.shape[0]      # 0.67 when the colour bar squeezed the matrix
    assert cols.max() - cols.min() > 0.66 * png.shape[1]
