"""``carbench-predict``: classify a photo, or every photo in a folder, with any of the experiments.

    carbench-predict IMAGE|FOLDER [--experiment NAME] [--box x1,y1,x2,y2] [--models models] [--crops data/crops]
                     [--out PNG] [--summary metrics/summary] [--device auto|cpu|cuda]
    carbench-predict IMAGE|FOLDER --model exports/<name>/model.onnx|model.ts [--box ...] [--out PNG]

The photo is cropped exactly as in training: ``crops.decode_crop`` (``crop_box`` on the encoded
bytes, like the crop stage) with the margin / size / keep_aspect recorded in ``<crops>/meta.json``;
the box is 1-based inclusive like the annotations (default: the whole image). The experiment's predictor then
applies its own preprocessing. Prints the top-5 classes with probabilities; a retrieval experiment's probability is
its neighbours' vote, and each line also says how many of the k neighbours voted for the class and how near its
nearest gallery crop is: classes without a vote follow, ordered by that distance, so the top-5 is always five
classes. For a retrieval experiment ``--out PNG`` also writes the nearest gallery crops as a grid (no picture
without it). A folder: every photo in it (its files with an extension Pillow reads, by name; not its sub-folders),
each under its path; a photo that cannot be read is one ``error:`` line and the others go on (exit status 1).
``--model``: an exported model instead, prepared as the ``contract.json`` beside it says (its crop geometry too) and
refused when the two disagree (:mod:`carbench.export.runtime`). Default experiment: the best test top-1 in
``<summary>/summary.json``. A model trained on the synthetic data
set gets a one-line warning on stderr. Bad input prints one ``error: ...`` line and exits with status 1.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from ..core import cli, runtime
from ..core.errors import UserError

TOP_CLASSES = 5
#: A k-NN ranking first searches this many neighbours deep (at least knn.k) for the classes without a vote, then
#: four times deeper until it has found enough classes or the whole gallery.
KNN_DEPTH = 64
#: The nearest-crops grid shows at least this many neighbours (more when knn.k is larger).
MIN_NEIGHBOURS_SHOWN = 8
BOX_FIELDS = 4
#: ``kind`` of a k-NN predictor (carbench.retrieval.predictor.KnnPredictor, an exported retrieval model).
KNN_KIND = "knn"
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
    """The box must satisfy 1 <= x1 <= x2 <= width and 1 <= y1 <= y2 <= height; the error says which part fails."""
    x1, y1, x2, y2 = box
    text = f"--box {x1},{y1},{x2},{y2}"
    if x1 > x2 or y1 > y2:
        fixed = f"{min(x1, x2)},{min(y1, y2)},{max(x1, x2)},{max(y1, y2)}"
        raise UserError(f"{text} is inverted: x2 must be >= x1 and y2 >= y1 (x1,y1 is the top-left corner, "
                        f"x2,y2 the bottom-right); did you mean --box {fixed}?")
    if x1 < 1 or y1 < 1:
        raise UserError(f"{text}: x1 and y1 must be >= 1 (coordinates are 1-based, the top-left pixel is 1,1)")
    if x2 > width or y2 > height:
        raise UserError(f"{text} is outside the {width}x{height} image (need x2 <= {width} and y2 <= {height})")


def read_image(path: str | Path) -> tuple[bytes, int, int]:
    """The photo's encoded bytes and its (width, height); error when missing or not an image."""
    from ..data.images import read_header
    from ..core.errors import ImageError

    path = Path(path)
    if not path.exists():
        raise UserError(f"image not found: {path}")
    if not path.is_file():
        raise UserError(f"{path} is not a file: pass a photo, or a folder of photos")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        width, height, _ = read_header(data)
    except ImageError as exc:
        raise UserError(f"{path} is not a readable image ({exc}); pass a photo (JPEG, PNG, ...)") from None
    return data, width, height


def photos_in(folder: str | Path) -> list[Path]:
    """The photos of ``folder``: its files whose extension Pillow reads (.jpg, .png, .webp, ...), by name; hidden
    files and sub-folders are left out. Error when there are none."""
    from PIL import Image

    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    folder = Path(folder)
    photos = sorted(p for p in folder.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in readable)
    if not photos:
        raise UserError(f"no photos in the folder {folder} (files ending .jpg, .png, .webp, ...; sub-folders are "
                        "not searched)")
    return photos


def crop_geometry(crops_dir: str | Path) -> Any:
    """The crop store's meta (margin, size, keep_aspect); error when the store is missing."""
    from ..data.store import load_meta

    if not Path(crops_dir, "meta.json").is_file():
        raise UserError(f"crop store not found: {crops_dir}/meta.json (needed for the crop geometry; see --crops)")
    return load_meta(crops_dir)


def crop_query(image: str | Path, box: Optional[Sequence[int]], crops_dir: str | Path) -> np.ndarray:
    """uint8 ``(1, S, S, 3)`` crop of the photo, made like the crop stage's crops."""
    return crop_photo(image, box, crop_geometry(crops_dir))


def crop_photo(image: str | Path, box: Optional[Sequence[int]], meta: Any) -> np.ndarray:
    """uint8 ``(1, S, S, 3)`` crop of the photo with the crop store's geometry ``meta``.

    The encoded bytes go through ``crops.decode_crop`` with the store's margin / size / keep_aspect,
    so colour-mode handling and JPEG reduced-scale decoding match the crop store exactly.
    """
    from ..data.crop_geometry import decode_crop
    from ..core.errors import ImageError

    data, width, height = read_image(image)
    box = tuple(box) if box is not None else (1, 1, width, height)
    check_box(box, width, height)
    try:
        crop = decode_crop(data, box, meta.margin, meta.size, meta.keep_aspect)
    except ImageError as exc:
        raise UserError(f"cannot decode {image} ({exc}); pass a complete, undamaged photo") from None
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


@dataclass(frozen=True)
class Ranked:
    """One line of the top-5: a class, its probability and (k-NN) how its neighbours voted."""

    name: str
    probability: float
    note: str = ""

    def line(self, rank: int) -> str:
        return f"{rank}. {self.probability:.4f}  {self.name}" + (f"  ({self.note})" if self.note else "")


def top_classes(probs: np.ndarray, class_names: Sequence[str], n: int = TOP_CLASSES) -> list[Ranked]:
    """The ``n`` most probable (distinct) classes of one probability row ``(C,)`` (a classifier's softmax)."""
    from ..core.metrics import rank_classes

    return [Ranked(class_names[i], float(probs[i])) for i in rank_classes(probs[None], n)[0]]


def knn_top_classes(predictor: Any, crop: np.ndarray, n: int = TOP_CLASSES) -> list[Ranked]:
    """A k-NN predictor's ``n`` best classes for one crop ``(1, S, S, 3)``: by the neighbours' vote (the
    probability), then, for classes none of the k neighbours voted for, by the distance of their nearest gallery
    crop. Each note says how many of the k neighbours voted for the class and that distance."""
    knn = predictor.knn
    raw = predictor.embed(crop)
    probs = knn.predict_proba(raw, predictor.device)[0]
    k, size = knn.config.k, len(knn.gallery_labels)
    wanted = min(n, len(np.unique(knn.gallery_labels)))
    depth = min(max(KNN_DEPTH, k), size)
    while True:
        dist, idx = knn.kneighbors(raw, depth, predictor.device)
        labels = knn.gallery_labels[idx[0]]
        if depth >= size or len(np.unique(labels)) >= wanted:
            break
        depth = min(depth * 4, size)
    nearest: dict[int, float] = {}
    for d, c in zip(dist[0], labels):
        nearest.setdefault(int(c), float(d))
    votes = np.bincount(labels[:k], minlength=knn.num_classes)
    order = sorted(nearest, key=lambda c: (-probs[c], nearest[c]))[:wanted]
    return [Ranked(knn.class_names[c], float(probs[c]),
                   f"{votes[c]} of {k} neighbours, nearest gallery crop d={nearest[c]:.3f}") for c in order]


def rank(predictor: Any, crop: np.ndarray) -> list[Ranked]:
    """The top-5 of one crop ``(1, S, S, 3)`` under any predictor (an exported model's too)."""
    if predictor.kind == KNN_KIND:
        return knn_top_classes(predictor, crop)
    return top_classes(predictor.predict(crop).numpy()[0], predictor.class_names)


def nearest_crops(predictor: Any, crop: np.ndarray, crops_dir: str | Path) -> list[tuple[np.ndarray, str, float]]:
    """A k-NN predictor's nearest gallery crops to one crop ``(1, S, S, 3)``, nearest first: ``(crop, class name,
    distance)``, at least :data:`MIN_NEIGHBOURS_SHOWN` (knn.k when larger); the crops are read from the crop store."""
    from ..data.store import load_split

    knn = predictor.knn
    dist, idx = predictor.kneighbors(crop, max(MIN_NEIGHBOURS_SHOWN, knn.config.k))
    stores: dict[str, np.ndarray] = {}
    found = []
    for d, i in zip(dist[0], idx[0]):
        split = str(knn.gallery_split[i])
        if split not in stores:
            stores[split] = load_split(crops_dir, split, mmap=True).images
        found.append((np.asarray(stores[split][knn.gallery_row[i]]), knn.class_names[knn.gallery_labels[i]],
                      float(d)))
    return found


def write_nearest(predictor: Any, crop: np.ndarray, crops_dir: str | Path, out: str | Path) -> None:
    """Grid PNG: the query crop followed by its nearest gallery crops (class name, distance)."""
    from ..report.plots import image_grid

    found = nearest_crops(predictor, crop, crops_dir)
    images = [crop[0], *(image for image, _, _ in found)]
    captions = ["query", *(f"{name} (d={d:.3f})" for _, name, d in found)]
    image_grid(np.stack(images), captions, out, f"nearest gallery crops ({predictor.knn.config.metric})")


def synthetic_warning(name: str, predictor: Any) -> Optional[str]:
    """The warning for a model trained on the generated data set (its classes are not real cars), else None."""
    if getattr(predictor, "data_source", "") != SYNTHETIC_SOURCE:
        return None
    return (f"warning: {name} was trained on the synthetic data set (data.source: synthetic); its classes are "
            "not real cars: train on Stanford Cars to classify real photos")


def load_experiment(name: str, models_root: str | Path, device: str) -> Any:
    """The experiment's predictor (with the synthetic-data warning on stderr when it applies)."""
    import sys

    from ..retrieval.predictor import load_predictor

    predictor = load_predictor(Path(models_root) / name, runtime.select_device(device), models_root)
    warning = synthetic_warning(name, predictor)
    if warning:
        print(warning, file=sys.stderr)
    return predictor


def load_export(model: str | Path) -> tuple[Any, Any]:
    """An exported model file (``exports/<name>/model.onnx`` or ``model.ts``) as a predictor, checked against its
    contract, and the crop geometry its contract states (with the synthetic-data warning when it applies)."""
    import sys
    from types import SimpleNamespace

    from ..export.runtime import load_exported

    predictor = load_exported(model)
    warning = synthetic_warning(predictor.contract["experiment"], predictor)
    if warning:
        print(warning, file=sys.stderr)
    return predictor, SimpleNamespace(**predictor.crop)


def predict_image(image: str | Path, experiment: Optional[str], box: Optional[str], models_root: str | Path,
                  crops_dir: str | Path, out: Optional[str | Path], summary_dir: str | Path,
                  device: str = "auto", model: Optional[str | Path] = None) -> tuple[list[Ranked], Optional[Path]]:
    """Crop, predict and (retrieval, when ``out`` is given) write the neighbours grid.

    ``model``: an exported model file instead of the experiment's checkpoint (:func:`load_export`).
    Returns the top-5 and the grid's path (None when none was written).
    """
    parsed = parse_box(box) if box else None
    if model is not None:
        predictor, meta = load_export(model)
        crop = crop_photo(image, parsed, meta)
    else:
        name = choose_experiment(experiment, summary_dir, models_root)
        crop = crop_query(image, parsed, crops_dir)
        predictor = load_experiment(name, models_root, device)
    ranked = rank(predictor, crop)
    grid = None
    if predictor.kind == KNN_KIND and out is not None:
        grid = Path(out)
        try:
            write_nearest(predictor, crop, crops_dir, grid)
        except OSError as exc:   # a folder that does not exist, no permission
            raise UserError(f"cannot write --out {grid}: {exc.strerror or exc}") from None
    return ranked, grid


def predict_folder(folder: str | Path, experiment: Optional[str], models_root: str | Path, crops_dir: str | Path,
                   summary_dir: str | Path, device: str = "auto",
                   model: Optional[str | Path] = None) -> Iterator[tuple[Path, Union[list[Ranked], str]]]:
    """Every photo of ``folder`` (:func:`photos_in`), whole: ``(photo, its top-5)``, or ``(photo, error message)``
    for one that cannot be read, and the next photo follows. ``model``: as for :func:`predict_image`."""
    if model is not None:
        photos = photos_in(folder)
        predictor, meta = load_export(model)
    else:
        name = choose_experiment(experiment, summary_dir, models_root)
        photos = photos_in(folder)
        meta = crop_geometry(crops_dir)
        predictor = load_experiment(name, models_root, device)
    for photo in photos:
        try:
            crop = crop_photo(photo, None, meta)
        except UserError as exc:   # this photo only: unreadable, damaged, too large
            yield photo, str(exc)
            continue
        yield photo, rank(predictor, crop)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carbench-predict",
        description="Top-5 car classes for a photo, or for every photo in a folder. A retrieval (k-NN) experiment "
                    "ranks by its neighbours' vote, then by the distance of each class's nearest gallery crop, and "
                    "says how many of its k neighbours voted for each class.")
    p.add_argument("image", metavar="IMAGE|FOLDER",
                   help="a photo (any format Pillow reads), or a folder: each photo in it, whole (not its sub-folders)")
    p.add_argument("--experiment", help="experiment name (default: best top-1 in the summary)")
    p.add_argument("--model", metavar="FILE", help="an exported model (exports/<name>/model.onnx or model.ts) "
                   "instead of --experiment: prepared as its contract.json says, run on onnxruntime or TorchScript "
                   "(CPU); needs neither --models nor --crops")
    p.add_argument("--box", help="car box x1,y1,x2,y2: top-left and bottom-right corners, 1-based inclusive "
                   "(default: whole image; one photo only)")
    p.add_argument("--models", default="models", help="models root (default: models)")
    p.add_argument("--crops", default="data/crops", help="crop store, for its crop geometry (default: data/crops)")
    p.add_argument("--out", metavar="PNG", help="retrieval experiments: write the nearest gallery crops as a grid "
                   "to this PNG (default: no picture; one photo only)")
    p.add_argument("--summary", default="metrics/summary", help="aggregate output dir (default: metrics/summary)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point ``carbench-predict``."""
    args = build_parser().parse_args(argv)

    def _run() -> int:
        runtime.configure(seed=0)
        try:
            if Path(args.image).is_dir():
                return _print_folder(args)
            ranked, grid = predict_image(args.image, args.experiment, args.box, args.models, args.crops, args.out,
                                         args.summary, args.device, args.model)
        except runtime.DeviceError as exc:
            raise UserError(str(exc)) from None
        print("\n".join(row.line(i) for i, row in enumerate(ranked, start=1)))
        if grid is not None:
            print(f"nearest gallery crops: {grid}")
        return 0

    cli.run_command(_run)


def _print_folder(args: argparse.Namespace) -> int:
    """Each photo of the folder under its path; an unreadable one is an ``error:`` line on stderr (status 1)."""
    import sys

    for option, value in (("--box", args.box), ("--out", args.out)):
        if value is not None:
            raise UserError(f"{option} applies to one photo, and {args.image} is a folder: pass one photo with "
                            f"{option}, or leave {option} out to classify every photo in the folder whole")
    failed = 0
    for number, (photo, result) in enumerate(predict_folder(args.image, args.experiment, args.models, args.crops,
                                                            args.summary, args.device, args.model)):
        if isinstance(result, str):
            failed += 1
            sys.stdout.flush()
            print(f"error: {result}", file=sys.stderr)
            continue
        print(("\n" if number else "") + f"{photo}\n" + "\n".join(row.line(i) for i, row in enumerate(result, 1)))
    return 1 if failed else 0


if __name__ == "__main__":
    main()
