"""A synthetic Stanford-Cars look-alike in exactly torchvision's ``stanford_cars`` layout.

Each class is a vehicle *style*: body shape, paint hue, wheel count, window panes, stripes and light
colour all follow from the class index, while every image varies the paint shade, size, aspect, position,
mirroring and wheel size, on a cluttered background (smooth colour noise plus random shapes). A small CNN
separates the classes from 64 px box crops far above chance; some images are grayscale
(``grayscale_fraction``), so shape alone must also carry the class.

Written files (``out_dir`` plays the role of ``stanford_cars/``)::

    cars_train/00001.jpg ...  cars_test/00001.jpg ...  cars_test_annos_withlabels.mat
    devkit/cars_meta.mat  devkit/cars_train_annos.mat  devkit/cars_test_annos.mat

Boxes are the vehicle's exact extent in official 1-based inclusive pixels. Output depends only on the
config and ``seed``: each photo draws from its own generator, seeded by (seed, split, index), so rendering in
``workers`` processes writes the same bytes as one process. Command line:
``python -m carbench.download.synthetic OUT_DIR [--classes N ...] [--workers N]``.
"""
from __future__ import annotations

import argparse
import colorsys
import contextlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..config import SyntheticConfig
from .matfiles import MatAnnotation, write_annotations, write_class_names

JPEG_QUALITY = 90
GOLDEN_RATIO_CONJUGATE = 0.6180339887  # spreads class hues evenly around the colour wheel
NOISE_GRID = 6                 # background colour noise: a NOISE_GRID^2 grid upsampled to the image
CLUTTER_SHAPES = (6, 14)       # [min, max) random shapes drawn behind the vehicle
VEHICLE_WIDTH = (0.45, 0.9)    # vehicle width as a fraction of the image width
MAX_VEHICLE_HEIGHT = 0.85      # of the image height
HUE_JITTER = 0.04              # intra-class paint variation (fraction of the hue circle)
CLASS_PAINT_PROBABILITY = 0.7  # otherwise a random paint colour: colour alone must not give the class away
SHAPE_JITTER = 0.04            # intra-class jitter of every outline vertex (fraction of the vehicle frame)
BODY_ASPECT = (0.38, 0.62)     # vehicle height / width
MIN_VEHICLE_PX = 8
PAINT_SATURATION = (0.55, 0.95)
PAINT_VALUE = (0.55, 0.95)
TRIM_SATURATION, TRIM_VALUE = 0.3, (0.85, 1.0)   # stripes and hubs: a pale complementary colour
NOISE_LEVELS = (40, 216)       # background noise channel values [low, high)
WINDOW_RGB = (170, 205, 230)
TYRE_RGB = (25, 25, 28)

# Unit-square outlines (x right, y down; every body spans x 0..1 and touches y = 0 somewhere).
# "lower" is the body below the belt line; "cabin" is the glasshouse above it.
BODIES: dict[str, dict[str, list[tuple[float, float]]]] = {
    "Sedan": {"lower": [(0, .45), (1, .45), (1, .82), (0, .82)],
              "cabin": [(.22, .45), (.33, 0), (.68, 0), (.8, .45)]},
    "Hatchback": {"lower": [(0, .45), (1, .45), (1, .82), (0, .82)],
                  "cabin": [(.18, .45), (.3, 0), (.97, .05), (1, .45)]},
    "SUV": {"lower": [(0, .4), (1, .4), (1, .82), (0, .82)],
            "cabin": [(.08, .4), (.14, 0), (.95, 0), (.98, .4)]},
    "Pickup": {"lower": [(0, .42), (1, .42), (1, .82), (0, .82)],
               "cabin": [(.05, .42), (.12, 0), (.45, 0), (.48, .42)]},
    "Van": {"lower": [(0, .5), (1, .5), (1, .82), (0, .82)],
            "cabin": [(0, .5), (.06, 0), (1, 0), (1, .5)]},
    "Coupe": {"lower": [(0, .55), (1, .52), (1, .82), (0, .82)],
              "cabin": [(.3, .55), (.45, 0), (.62, 0), (.85, .52)]},
}
BODY_NAMES = tuple(BODIES)
SILL = 0.82                    # bottom of every body outline (wheels reach y = 1)
WHEEL_COUNTS = (2, 3, 4)
WHEEL_SCALES = (0.14, 0.18, 0.22)  # wheel radius as a fraction of vehicle height
WHEEL_JITTER = (0.9, 1.1)
MIN_WHEEL_RADIUS = 2.0
HUB_FRACTION = 0.45
STRIPE_SPAN = (0.02, 0.98)
STRIPE_WIDTH_DIVISOR = 18      # stripe width = vehicle height / this
LAMP_BOX = (0.93, 0.05, 1.0, 0.14)  # (u0, dv0, u1, dv1): v measured down from the belt line
WINDOW_INSET = 0.04            # from the cabin's slanted sides
WINDOW_TOP, WINDOW_BELT_GAP, WINDOW_PILLAR = 0.1, 0.06, 0.025
MAX_WINDOW_PANES = 4
STRIPE_STYLES = 3              # 0: none, 1: one belt stripe, 2: two thin stripes
LIGHT_COLOURS = ((255, 240, 120), (255, 255, 255), (255, 150, 40))


@dataclass(frozen=True)
class ClassStyle:
    """What makes a class recognisable: every field is a function of the class index only."""

    body: str
    hue: float          # 0..1
    wheels: int
    panes: int
    stripes: int
    light: tuple[int, int, int]
    wheel_scale: float  # wheel radius as a fraction of vehicle height (before per-image jitter)

    @property
    def name(self) -> str:
        """The style part of the class name, e.g. ``"Sedan 2W1P"`` (2 wheels, 1 window pane)."""
        return f"{self.body} {self.wheels}W{self.panes}P"


def class_style(index: int) -> ClassStyle:
    """The style of class ``index`` (0-based); neighbouring classes differ in several attributes."""
    return ClassStyle(
        body=BODY_NAMES[index % len(BODY_NAMES)],
        hue=(index * GOLDEN_RATIO_CONJUGATE) % 1.0,
        wheels=WHEEL_COUNTS[(index // len(BODY_NAMES)) % len(WHEEL_COUNTS)],
        panes=1 + (index // 2) % MAX_WINDOW_PANES,
        stripes=(index // 3) % STRIPE_STYLES,
        light=LIGHT_COLOURS[index % len(LIGHT_COLOURS)],
        wheel_scale=WHEEL_SCALES[(index // 4) % len(WHEEL_SCALES)],
    )


def class_names(num_classes: int) -> list[str]:
    """Unique, readable class names, ``"Sedan 2W1P 001"`` ... (official class k at index k-1)."""
    return [f"{class_style(i).name} {i + 1:03d}" for i in range(num_classes)]


def _rgb(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A cluttered RGB background: smooth colour noise plus random rectangles, ellipses and lines."""
    grid = rng.integers(*NOISE_LEVELS, size=(NOISE_GRID, NOISE_GRID, 3), dtype=np.uint8)
    image = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(*CLUTTER_SHAPES))):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(rng.integers(0, 256, size=3).tolist())
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 4)))
    return image


def _to_pixels(points: Sequence[tuple[float, float]], frame: tuple[int, int, int, int],
               mirror: bool) -> list[tuple[float, float]]:
    """Map unit-square points into the pixel frame ``(x0, y0, w, h)``; u=1 lands on pixel x0+w-1."""
    x0, y0, w, h = frame
    return [(x0 + ((1 - u) if mirror else u) * (w - 1), y0 + v * (h - 1)) for u, v in points]


def _pixel_rect(unit: tuple[float, float, float, float], frame: tuple[int, int, int, int],
                mirror: bool) -> tuple[float, float, float, float]:
    """A unit-square rectangle ``(u0, v0, u1, v1)`` as an ordered pixel rectangle."""
    (xa, ya), (xb, yb) = _to_pixels([unit[:2], unit[2:]], frame, mirror)
    return min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)


def draw_vehicle(draw: ImageDraw.ImageDraw, style: ClassStyle, rng: np.random.Generator,
                 frame: tuple[int, int, int, int]) -> None:
    """Draw one vehicle of ``style`` filling exactly the pixel frame ``(x0, y0, w, h)``."""
    x0, y0, w, h = frame
    mirror = bool(rng.integers(2))
    shape = BODIES[style.body]
    hue = style.hue + rng.uniform(-HUE_JITTER, HUE_JITTER) if rng.random() < CLASS_PAINT_PROBABILITY else rng.random()
    paint = _rgb(hue, rng.uniform(*PAINT_SATURATION), rng.uniform(*PAINT_VALUE))
    trim = _rgb(style.hue + 0.5, TRIM_SATURATION, rng.uniform(*TRIM_VALUE))
    # Jitter the cabin's x only: its top must stay at y = 0, where the box starts.
    cabin = [(min(max(u + rng.uniform(-SHAPE_JITTER, SHAPE_JITTER), 0.0), 1.0), v) for u, v in shape["cabin"]]
    draw.polygon(_to_pixels(cabin, frame, mirror), fill=paint)
    draw.polygon(_to_pixels(shape["lower"], frame, mirror), fill=paint)
    _draw_windows(draw, cabin, style.panes, frame, mirror)
    belt = shape["lower"][0][1]
    for k in range(style.stripes):  # evenly spaced below the belt line
        v = belt + (k + 1) * (SILL - belt) / (style.stripes + 1)
        draw.line(_to_pixels([(STRIPE_SPAN[0], v), (STRIPE_SPAN[1], v)], frame, mirror), fill=trim,
                  width=max(1, h // STRIPE_WIDTH_DIVISOR))
    lamp = (LAMP_BOX[0], belt + LAMP_BOX[1], LAMP_BOX[2], belt + LAMP_BOX[3])
    draw.rectangle(_pixel_rect(lamp, frame, mirror), fill=style.light)
    radius = max(MIN_WHEEL_RADIUS, style.wheel_scale * h * rng.uniform(*WHEEL_JITTER))
    for k in range(style.wheels):
        cx = x0 + radius + k * (w - 1 - 2 * radius) / (style.wheels - 1)
        cy = y0 + (h - 1) - radius
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=TYRE_RGB)
        hub = radius * HUB_FRACTION
        draw.ellipse((cx - hub, cy - hub, cx + hub, cy + hub), fill=trim)


def _draw_windows(draw: ImageDraw.ImageDraw, cabin: list[tuple[float, float]], panes: int,
                  frame: tuple[int, int, int, int], mirror: bool) -> None:
    """Split the cabin's inner area into ``panes`` window panes separated by pillars."""
    (bl, _), (tl, _), (tr, _), (br, _) = cabin
    left, right = max(bl, tl) + WINDOW_INSET, min(br, tr) - WINDOW_INSET
    top, bottom = WINDOW_TOP, cabin[0][1] - WINDOW_BELT_GAP
    step = (right - left) / panes
    for k in range(panes):
        a, b = left + k * step + WINDOW_PILLAR / 2, left + (k + 1) * step - WINDOW_PILLAR / 2
        draw.polygon(_to_pixels([(a, bottom), (a, top), (b, top), (b, bottom)], frame, mirror), fill=WINDOW_RGB)


def render_image(style: ClassStyle, rng: np.random.Generator, size_range: tuple[int, int],
                 grayscale: bool) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One photo of a vehicle of ``style``; returns the image and its 1-based inclusive box."""
    width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    image = draw_background(rng, width, height)
    w = int(width * rng.uniform(*VEHICLE_WIDTH))
    h = int(min(w * rng.uniform(*BODY_ASPECT), height * MAX_VEHICLE_HEIGHT))
    w, h = max(w, MIN_VEHICLE_PX), max(h, MIN_VEHICLE_PX)
    x0 = int(rng.integers(0, width - w + 1))
    y0 = int(rng.integers(0, height - h + 1))
    draw_vehicle(ImageDraw.Draw(image), style, rng, (x0, y0, w, h))
    if grayscale:
        image = image.convert("L")
    return image, (x0 + 1, y0 + 1, x0 + w, y0 + h)


SPLIT_STREAMS = {"train": 0, "test": 1}   # per-photo generators: (seed, SPLIT_STREAMS[split], index)
#: Photos per task handed to a worker process.
RENDER_CHUNK = 64


def _render_range(folder: Path, split: str, labels: list[int], first: int, cfg: SyntheticConfig,
                  seed: int) -> list[MatAnnotation]:
    """Render and save photos ``first .. first + len(labels) - 1`` (0-based) of one split."""
    rows = []
    for i, label in enumerate(labels, start=first):
        rng = np.random.default_rng([seed, SPLIT_STREAMS[split], i])
        grayscale = bool(rng.random() < cfg.grayscale_fraction)
        image, box = render_image(class_style(label), rng, (cfg.min_size, cfg.max_size), grayscale)
        fname = f"{i + 1:05d}.jpg"
        image.save(folder / fname, "JPEG", quality=JPEG_QUALITY)
        rows.append(MatAnnotation(fname=fname, box=box, official_class=label + 1, row=i + 1))
    return rows


def _write_split(out_dir: Path, split: str, labels: np.ndarray, cfg: SyntheticConfig, seed: int,
                 pool: Optional[ProcessPoolExecutor]) -> list[MatAnnotation]:
    """Render and save every image of one split (in ``pool`` when given); return its annotations in file order."""
    folder = out_dir / f"cars_{split}"
    folder.mkdir(parents=True)
    labels = labels.tolist()
    if pool is None:
        return _render_range(folder, split, labels, 0, cfg, seed)
    starts = range(0, len(labels), RENDER_CHUNK)
    jobs = [pool.submit(_render_range, folder, split, labels[a:a + RENDER_CHUNK], a, cfg, seed) for a in starts]
    return [row for job in jobs for row in job.result()]


def generate(out_dir: str | Path, cfg: SyntheticConfig, seed: int, workers: int = 1) -> dict[str, int]:
    """Write a synthetic dataset in torchvision's ``stanford_cars`` layout into ``out_dir``, rendering in
    ``workers`` processes (0 = one per core; the bytes do not depend on it).

    ``out_dir`` must not exist or be empty. Returns ``{"train": n, "test": n, "classes": C}``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; synthetic data needs an empty directory")
    rng = np.random.default_rng(seed)
    classes = np.arange(cfg.num_classes)
    # Interleave classes in file order like the official files (not sorted by class).
    train_labels = rng.permutation(np.repeat(classes, cfg.train_per_class))
    test_labels = rng.permutation(np.repeat(classes, cfg.test_per_class))
    workers = workers if workers > 0 else (os.cpu_count() or 1)
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        train_rows = _write_split(out_dir, "train", train_labels, cfg, seed, pool)
        test_rows = _write_split(out_dir, "test", test_labels, cfg, seed, pool)
    devkit = out_dir / "devkit"
    devkit.mkdir()
    write_class_names(devkit / "cars_meta.mat", class_names(cfg.num_classes))
    write_annotations(devkit / "cars_train_annos.mat", train_rows, with_class=True)
    write_annotations(devkit / "cars_test_annos.mat", test_rows, with_class=False)
    write_annotations(out_dir / "cars_test_annos_withlabels.mat", test_rows, with_class=True)
    return {"train": len(train_rows), "test": len(test_rows), "classes": cfg.num_classes}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m carbench.download.synthetic OUT_DIR [--classes N ...]``: write a dataset, print its counts."""
    p = argparse.ArgumentParser(prog="python -m carbench.download.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", help="directory to create (use .../stanford_cars for torchvision)")
    p.add_argument("--classes", type=int, default=12)
    p.add_argument("--train-per-class", type=int, default=24)
    p.add_argument("--test-per-class", type=int, default=12)
    p.add_argument("--min-size", type=int, default=96)
    p.add_argument("--max-size", type=int, default=160)
    p.add_argument("--grayscale-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="rendering processes (0 = one per core); same bytes")
    args = p.parse_args(argv)
    from ..config import ConfigError, build

    raw = {"num_classes": args.classes, "train_per_class": args.train_per_class,
           "test_per_class": args.test_per_class, "min_size": args.min_size, "max_size": args.max_size,
           "grayscale_fraction": args.grayscale_fraction}
    try:
        cfg = build(SyntheticConfig, raw, "synthetic")
        counts = generate(args.out_dir, cfg, args.seed, args.workers)
    except (ConfigError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {counts['train']} train + {counts['test']} test images of {counts['classes']} classes "
          f"to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
