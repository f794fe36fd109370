"""``carbench-predict``: classify one photo with any of the experiments.

    carbench-predict IMAGE [--experiment NAME] [--box x1,y1,x2,y2] [--models models] [--crops data/crops]
                     [--out PNG] [--summary metrics/summary] [--device auto|cpu|cuda]

The photo is cropped exactly as in training: ``crops.decode_crop`` (``crop_box`` on the encoded
bytes, like the crop stage) with the margin / size / keep_aspect recorded in ``<crops>/meta.json``;
the box is 1-based inclusive like the annotations (default: the whole image). The experiment's predictor then applies its own preprocessing. Prints the top-5
classes with probabilities (a retrieval experiment: only the classes its neighbours voted for); for a retrieval
experiment ``--out PNG`` also writes the nearest gallery crops as a grid (no picture without it).
Default experiment: the best test top-1 in ``<summary>/summary.json``. A model trained on the synthetic data
set gets a one-line warning on stderr. Bad input prints one ``error: ...`` line and exits with status 1.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .. import cli, runtime
from ..errors import UserError

TOP_CLASSES = 5
#: The nearest-crops grid shows at least this many neighbours (more when knn.k is larger).
MIN_NEIGHBOURS_SHOWN = 8
BOX_FIELDS = 4
#: ``data.source`` of the generated data set, as the checkpoint records it (``data_source``).
SYNTHETIC_SOURCE = "synthetic"


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``"x1,y1,x2,y2"`` -> four ints (1-based inclusive pixel coordinates)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        box = tuple(int(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != BOX_FIELDS:
        raise UserError(f"--box must be four integers x1,y1,x2,y2 (1-based, inclusive), got {text!r}")
    return box  # type: ignore[return-value]


def check_box(box: Sequence[int], width: int, height: int) -> None:
    """The box must satisfy 1 <= x1 <= x2 <= width and 1 <= y1 <= y2 <= height."""
    x1, y1, x2, y2 = box
    if not (1 <= x1 <= x2 <= width and 1 <= y1 <= y2 <= height):
        raise UserError(f"--box {x1},{y1},{x2},{y2} is outside the {width}x{height} image "
                        f"(need 1 <= x1 <= x2 <= {width} and 1 <= y1 <= y2 <= {height})")


def read_image(path: str | Path) -> tuple[bytes, int, int]:
    """The photo's encoded bytes and its (width, height); error when missing or not an image."""
    from PIL import Image

    from ..data.crops import DECODE_ERRORS
    from ..data.manifest import image_error_reason

    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:   # reads the header only
            width, height = img.size
    except DECODE_ERRORS as exc:
        raise UserError(f"{path} is not a readable image ({image_error_reason(exc)}); "
                        "pass a photo (JPEG, PNG, ...)") from None
    return data, width, height


def crop_query(image: str | Path, box: Optional[Sequence[int]], crops_dir: str | Path) -> np.ndarray:
    """uint8 ``(1, S, S, 3)`` crop of the photo, made like the crop stage's crops.

    The encoded bytes go through ``crops.decode_crop`` with the store's margin / size / keep_aspect,
    so colour-mode handling and JPEG reduced-scale decoding match the crop store exactly.
    """
    from ..data.crops import DECODE_ERRORS, decode_crop
    from ..data.manifest import image_error_reason
    from ..data.store import load_meta

    if not Path(crops_dir, "meta.json").is_file():
        raise UserError(f"crop store not found: {crops_dir}/meta.json (needed for the crop geometry; see --crops)")
    meta = load_meta(crops_dir)
    data, width, height = read_image(image)
    box = tuple(box) if box is not None else (1, 1, width, height)
    check_box(box, width, height)
    try:
        crop = decode_crop(data, box, meta.margin, meta.size, meta.keep_aspect)
    except DECODE_ERRORS as exc:
        raise UserError(f"cannot decode {image} ({image_error_reason(exc)}); "
                        "pass a complete, undamaged photo") from None
    return crop[None]


def choose_experiment(name: Optional[str], summary_dir: str | Path, models_root: str | Path) -> str:
    """``--experiment`` or the summary's best; it must have a directory under ``models_root``."""
    from ..report.aggregate import read_best

    models_root = Path(models_root)
    if not models_root.is_dir():
        raise UserError(f"models directory not found: {models_root} (run `dvc repro`, or pass --models)")
    if name is None:
        name = read_best(summary_dir)
        if name is None:
            raise UserError(f"no {Path(summary_dir) / 'summary.json'} to pick the best experiment from; "
                            "pass --experiment NAME")
    if not (models_root / name).is_dir():
        known = sorted(p.name for p in models_root.iterdir() if p.is_dir())
        raise UserError(f"unknown experiment {name!r}: no {models_root / name} (known: {', '.join(known) or 'none'})")
    return name


def top_classes(probs: np.ndarray, class_names: Sequence[str], n: int = TOP_CLASSES,
                scored_only: bool = False) -> list[tuple[str, float]]:
    """The ``n`` most probable (distinct) classes of one probability row ``(C,)``.

    ``scored_only``: leave out classes with probability 0 (a k-NN vote gives them no score at all, so listing
    them would only pad the top-n with arbitrary classes).
    """
    from ..metrics import rank_classes

    ranked = rank_classes(probs[None], n)[0]
    return [(class_names[i], float(probs[i])) for i in ranked if not scored_only or probs[i] > 0]


def write_nearest(predictor: Any, crop: np.ndarray, crops_dir: str | Path, out: str | Path) -> None:
    """Grid PNG: the query crop followed by its nearest gallery crops (class name, distance)."""
    from ..report.plots import image_grid
    from ..data.store import load_split

    knn = predictor.knn
    dist, idx = predictor.kneighbors(crop, max(MIN_NEIGHBOURS_SHOWN, knn.config.k))
    images, captions = [crop[0]], ["query"]
    stores: dict[str, np.ndarray] = {}
    for d, i in zip(dist[0], idx[0]):
        split = str(knn.gallery_split[i])
        if split not in stores:
            stores[split] = load_split(crops_dir, split, mmap=True).images
        images.append(np.asarray(stores[split][knn.gallery_row[i]]))
        captions.append(f"{knn.class_names[knn.gallery_labels[i]]} (d={d:.3f})")
    image_grid(np.stack(images), captions, out, f"nearest gallery crops ({knn.config.metric})")


def synthetic_warning(name: str, predictor: Any) -> Optional[str]:
    """The warning for a model trained on the generated data set (its classes are not real cars), else None."""
    if getattr(predictor, "data_source", "") != SYNTHETIC_SOURCE:
        return None
    return (f"warning: {name} was trained on the synthetic data set (data.source: synthetic); its classes are "
            "not real cars: train on Stanford Cars to classify real photos")


def predict_image(image: str | Path, experiment: Optional[str], box: Optional[str], models_root: str | Path,
                  crops_dir: str | Path, out: Optional[str | Path], summary_dir: str | Path,
                  device: str = "auto") -> tuple[list[tuple[str, float]], Optional[Path]]:
    """Crop, predict and (retrieval, when ``out`` is given) write the neighbours grid.

    Returns the top-5 (class, probability) and the grid's path (None when none was written).
    """
    import sys

    from ..retrieval.predictor import KnnPredictor, load_predictor

    name = choose_experiment(experiment, summary_dir, models_root)
    parsed = parse_box(box) if box else None
    crop = crop_query(image, parsed, crops_dir)
    predictor = load_predictor(Path(models_root) / name, runtime.select_device(device), models_root)
    warning = synthetic_warning(name, predictor)
    if warning:
        print(warning, file=sys.stderr)
    probs = predictor.predict(crop).numpy()[0]
    grid = None
    is_knn = isinstance(predictor, KnnPredictor)
    if is_knn and out is not None:
        grid = Path(out)
        try:
            write_nearest(predictor, crop, crops_dir, grid)
        except OSError as exc:   # a folder that does not exist, no permission
            raise UserError(f"cannot write --out {grid}: {exc.strerror or exc}") from None
    return top_classes(probs, predictor.class_names, scored_only=is_knn), grid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carbench-predict", description="Top-5 car classes for one photo.")
    p.add_argument("image", help="photo (any format PIL reads)")
    p.add_argument("--experiment", help="experiment name (default: best top-1 in the summary)")
    p.add_argument("--box", help="car box x1,y1,x2,y2, 1-based inclusive (default: whole image)")
    p.add_argument("--models", default="models", help="models root (default: models)")
    p.add_argument("--crops", default="data/crops", help="crop store, for its crop geometry (default: data/crops)")
    p.add_argument("--out", metavar="PNG", help="retrieval experiments: write the nearest gallery crops as a grid "
                   "to this PNG (default: no picture)")
    p.add_argument("--summary", default="metrics/summary", help="aggregate output dir (default: metrics/summary)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point ``carbench-predict``."""
    args = build_parser().parse_args(argv)

    def _run() -> None:
        runtime.configure(seed=0)
        try:
            ranked, grid = predict_image(args.image, args.experiment, args.box, args.models, args.crops, args.out,
                                   args.summary, args.device)
        except runtime.DeviceError as exc:
            raise UserError(str(exc)) from None
        for rank, (name, prob) in enumerate(ranked, start=1):
            print(f"{rank}. {prob:.4f}  {name}")
        if grid is not None:
            print(f"nearest gallery crops: {grid}")

    cli.run_command(_run)


if __name__ == "__main__":
    main()
