"""Crop geometry (shared with predict) and the crop stage that builds the crop store ``data/crops``.

Geometry of :func:`crop_box` (all coordinates in pixels of the *stored* image; EXIF orientation is ignored,
like torchvision's loader, because the official boxes refer to the stored pixel grid):

1. The official box ``(x1, y1, x2, y2)`` is 1-based and inclusive, i.e. the pixel region
   ``[x1 - 1, x2) x [y1 - 1, y2)``; it is first clamped to the image.
2. ``margin`` adds ``margin * box width`` pixels (rounded, halves up) left and right and
   ``margin * box height`` pixels above and below, and the result is clamped to the image: the *region*.
3. ``keep_aspect=False``: the region is resized (stretched) to ``size x size``.
   ``keep_aspect=True``: the region is padded to a square of side ``L = max(region w, h)`` centred on it; along
   an axis where the image is at least ``L`` long the square is shifted to lie inside the image (more real
   context, no padding); along an axis where the image is shorter than ``L`` it is centred on the image and the
   part outside is filled with black. The square is resized to ``size x size`` (aspect ratio preserved).

Resampling is bilinear, antialiased when shrinking (as torchvision's `Resize`; bicubic cost twice the time for no accuracy gain). Colour modes are converted by :func:`to_rgb`.
JPEGs are decoded at a reduced DCT scale (1/2, 1/4, 1/8) when the region still keeps at least ``size`` pixels
on its shorter side (stretch) or on the square side (keep_aspect), so no crop is ever upsampled because of it.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageCms, JpegImagePlugin

from .config import CropConfig
from .errors import DataError

RESAMPLE = Image.Resampling.BILINEAR
DRAFT_SCALES = (8, 4, 2, 1)            # the DCT scalings libjpeg offers, largest first
PAD_RGB = (0, 0, 0)                    # keep_aspect fill outside the image
ALPHA_BACKGROUND = (255, 255, 255)     # transparent pixels are composited over white
UINT16_TO_UINT8_SHIFT = 8              # 16-bit grey 0..65535 -> 0..255
UINT8_MAX = 255
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CropPlan:
    """Where a crop comes from and where it goes.

    ``source``: ``(left, top, right, bottom)`` in image pixels (floats; right/bottom exclusive), the part of the
    image to resample; ``dest``: integer ``(left, top, right, bottom)`` in the ``size x size`` output;
    ``content_side``: image pixels that map onto ``size`` output pixels (limits the JPEG draft scale).
    """

    source: tuple[float, float, float, float]
    dest: Box
    content_side: float


def _round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's round() sends 2.5 to 2)."""
    return math.floor(value + 0.5)


def margin_region(box: Sequence[int], margin: float, width: int, height: int) -> Box:
    """The 0-based half-open pixel region ``(left, top, right, bottom)`` of a 1-based inclusive box.

    Steps 1-2 of the module docstring. Raises DataError when the box is empty or outside the image.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    if x1 > x2 or y1 > y2:
        raise DataError(f"empty box {tuple(box)}: x1 > x2 or y1 > y2")
    left, top, right, bottom = max(x1 - 1, 0), max(y1 - 1, 0), min(x2, width), min(y2, height)
    if left >= right or top >= bottom:
        raise DataError(f"box {tuple(box)} lies outside the {width}x{height} image")
    mx, my = _round_half_up(margin * (right - left)), _round_half_up(margin * (bottom - top))
    return max(left - mx, 0), max(top - my, 0), min(right + mx, width), min(bottom + my, height)


def _square_axis(lo: int, hi: int, side: float, extent: int) -> tuple[float, float]:
    """Start of the square along one axis, and the covered in-image interval's start (see docstring step 3)."""
    if extent >= side:
        start = min(max((lo + hi) / 2 - side / 2, 0.0), extent - side)
        return start, start
    start = extent / 2 - side / 2
    return start, 0.0


def plan_crop(box: Sequence[int], margin: float, width: int, height: int, size: int, keep_aspect: bool) -> CropPlan:
    """The :class:`CropPlan` for a 1-based inclusive ``box`` in a ``width x height`` image."""
    left, top, right, bottom = margin_region(box, margin, width, height)
    if not keep_aspect:
        return CropPlan((left, top, right, bottom), (0, 0, size, size), min(right - left, bottom - top))
    side = float(max(right - left, bottom - top))
    qx, sx = _square_axis(left, right, side, width)
    qy, sy = _square_axis(top, bottom, side, height)
    ex, ey = min(qx + side, width), min(qy + side, height)
    scale = size / side
    left_px, top_px = round((sx - qx) * scale), round((sy - qy) * scale)
    # At least one output pixel along each axis, even for a sliver of a box.
    right_px = max(round((ex - qx) * scale), left_px + 1)
    bottom_px = max(round((ey - qy) * scale), top_px + 1)
    return CropPlan((sx, sy, ex, ey), (left_px, top_px, right_px, bottom_px), side)


def draft_scale(content_side: float, size: int) -> int:
    """The largest JPEG DCT scale that keeps ``content_side / scale >= size``."""
    return next(s for s in DRAFT_SCALES if content_side / s >= size or s == 1)


def apply_draft(img: Image.Image, content_side: float, size: int) -> int:
    """Ask a not-yet-decoded JPEG to decode at a reduced scale; return the scale (1 = full size)."""
    if not isinstance(img, JpegImagePlugin.JpegImageFile) or not img.tile:
        return 1  # not a JPEG, or already decoded
    scale = draft_scale(content_side, size)
    if scale == 1:
        return 1
    width, height = img.size
    result = img.draft(img.mode, (width // scale, height // scale))
    if result is None:
        return 1
    return round(width / result[1][2])  # draft's box is (0, 0, width / scale, height / scale)


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """CMYK -> RGB through the embedded ICC profile when there is one, else PIL's formula."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to the plain conversion
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB.

    16-bit grey (``I;16*``, and ``I`` with values above 255) is scaled by 1/256 rather than clipped;
    ``F`` is clipped to 0..255; transparency (RGBA, LA, palette with transparency) is composited over white;
    CMYK uses the embedded ICC profile when present; L, 1, P, YCbCr, LAB, HSV use PIL's conversion.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        values = np.asarray(img)
        if mode in SIXTEEN_BIT_MODES or (mode == "I" and values.max(initial=0) > UINT8_MAX):
            values = np.clip(values, 0, np.iinfo(np.uint16).max).astype(np.uint32) >> UINT16_TO_UINT8_SHIFT
        grey = np.clip(values, 0, UINT8_MAX).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (UINT8_MAX,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    return img.convert("RGB")


def crop_box(img: Image.Image, box: Sequence[int], margin: float, size: int, keep_aspect: bool) -> Image.Image:
    """Crop ``img`` to an official 1-based inclusive ``box`` and return a ``size x size`` RGB image.

    Geometry: see the module docstring. ``img`` may be a freshly opened (not yet decoded) file: a JPEG is
    then decoded at a reduced scale where that keeps quality (this loads ``img`` itself at that scale; pass
    ``Image.open(...)`` anew rather than an image you still need at full size). Raises DataError for an
    empty box or one outside the image.
    """
    width, height = img.size
    plan = plan_crop(box, margin, width, height, size, keep_aspect)
    scale = apply_draft(img, plan.content_side, size)
    # Cut the whole-pixel bounds of the region first: the resampling filter then never reaches pixels
    # outside the box (crop-then-resize semantics), and only these pixels get colour-converted.
    src = [min(v / scale, limit) for v, limit in zip(plan.source, img.size * 2)]  # draft sizes round up
    bounds = (math.floor(src[0]), math.floor(src[1]), math.ceil(src[2]), math.ceil(src[3]))
    img = to_rgb(img.crop(bounds))
    src = [src[0] - bounds[0], src[1] - bounds[1], src[2] - bounds[0], src[3] - bounds[1]]
    d = plan.dest
    patch = img.resize((d[2] - d[0], d[3] - d[1]), RESAMPLE, box=tuple(src))
    if d == (0, 0, size, size):
        return patch
    canvas = Image.new("RGB", (size, size), PAD_RGB)
    canvas.paste(patch, d[:2])
    return canvas


ImageInput = Union[bytes, bytearray, memoryview, Image.Image]


def decode_crop(data: ImageInput, box: Sequence[int], margin: float, size: int, keep_aspect: bool) -> np.ndarray:
    """Open an image (encoded bytes, or a PIL image) and crop it: uint8 array ``(size, size, 3)``.

    Decoding errors (truncated or corrupt file) propagate as PIL's ``OSError``/``SyntaxError``.
    """
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    return np.asarray(crop_box(img, box, margin, size, keep_aspect), dtype=np.uint8)


def crop_batch(images: Sequence[ImageInput], boxes: Sequence[Sequence[int]], margin: float, size: int,
               keep_aspect: bool) -> np.ndarray:
    """Crop many images (bytes or PIL images) in one go: uint8 array ``(N, size, size, 3)``."""
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, (image, box) in enumerate(zip(images, boxes)):
        out[i] = decode_crop(image, box, margin, size, keep_aspect)
    return out


#: What a corrupt image raises while decoding (PIL uses OSError for truncation, SyntaxError for bad headers).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, DataError)


# ----------------------------------------------------------------------------- the crop stage
STORE_SPLITS = ("train", "val", "test")
CHUNK_IMAGES = 16              # images per pool task: small enough to balance, large enough to amortise IPC
MIN_IMAGES_PER_WORKER = 32     # below this a process costs more to start than it saves
COPY_BLOCK_ROWS = 256          # rows per block when compacting a store after skipped images
META_JSON = "meta.json"


@dataclass(frozen=True)
class CropTask:
    """A chunk of images for one store: rows of ``(row in store, offset, nbytes, box, image name)``."""

    store: str
    rows: tuple[tuple[int, int, int, Box, str], ...]


_WORKER: dict = {}  # per-process state: the mmap of images.bin, the crop settings, open stores


def _init_worker(images_bin: str, margin: float, size: int, keep_aspect: bool) -> None:
    """Map ``images.bin`` once per process: every task then slices bytes out of it without copying files."""
    import mmap

    handle = open(images_bin, "rb")
    _WORKER.update(handle=handle, mmap=mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ),
                   settings=(margin, size, keep_aspect), stores={})


def _close_worker() -> None:
    _WORKER["stores"] = {}
    _WORKER["mmap"].close()
    _WORKER["handle"].close()
    _WORKER.clear()


def _run_task(task: CropTask) -> tuple[int, list[tuple[str, str]]]:
    """Decode, crop and write one chunk into its store; return (images done, [(image, reason)] failures)."""
    stores = _WORKER["stores"]
    if task.store not in stores:
        stores[task.store] = np.load(task.store, mmap_mode="r+")
    out, data, (margin, size, keep_aspect) = stores[task.store], _WORKER["mmap"], _WORKER["settings"]
    failures = []
    for row, offset, nbytes, box, image in task.rows:
        try:
            out[row] = decode_crop(data[offset:offset + nbytes], box, margin, size, keep_aspect)
        except DECODE_ERRORS as exc:
            failures.append((image, f"{exc.__class__.__name__}: {exc}"))
    # No flush (msync): the stores are shared file mappings, so the parent sees the pages without a disk
    # round trip, even if this worker is terminated; flushing each chunk cost ~10% of the crop time.
    return len(task.rows), failures


def resolve_workers(workers: int, num_images: int) -> int:
    """``crop.workers`` (0 = all usable cores), capped so each process gets a useful share of the images."""
    import os

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = workers or available
    return max(1, min(wanted, math.ceil(num_images / MIN_IMAGES_PER_WORKER)))


@contextlib.contextmanager
def _task_runner(init: tuple, workers: int) -> Iterator[Callable[[list[CropTask]], Iterator]]:
    """Yield a function mapping ``_run_task`` over tasks, in this process or in a pool of ``workers``.

    The pool is started before any progress-bar thread exists and terminated on exit (also on errors).
    """
    if workers <= 1:
        _init_worker(*init)
        try:
            yield lambda tasks: map(_run_task, tasks)
        finally:
            _close_worker()
        return
    import multiprocessing

    # fork: the workers need only PIL and numpy, already imported; spawn would re-import everything.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers, _init_worker, init) as pool:
        yield lambda tasks: pool.imap_unordered(_run_task, tasks)


def execute_tasks(tasks: list[CropTask], images_bin: str, margin: float, size: int, keep_aspect: bool,
                  workers: int, stop_on_failure: bool) -> list[tuple[str, str]]:
    """Run every task with a progress bar; return the failures sorted by image name.

    With ``stop_on_failure`` the run stops (and the pool is terminated) at the first failing chunk.
    """
    import sys

    from tqdm import tqdm

    failures: list[tuple[str, str]] = []
    with _task_runner((images_bin, margin, size, keep_aspect), workers) as run_all, \
            tqdm(total=sum(len(t.rows) for t in tasks), unit="img", desc="crop", mininterval=1.0,
                 file=sys.stderr) as bar:
        for done, failed in run_all(tasks):
            bar.update(done)
            failures.extend(failed)
            if failed and stop_on_failure:
                break
    return sorted(failures)


def allocate_store(path: Path, count: int, size: int) -> None:
    """Create ``path`` as a zero-filled uint8 ``.npy`` of shape ``(count, size, size, 3)``."""
    if count == 0:
        np.save(path, np.zeros((0, size, size, 3), dtype=np.uint8))
        return
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
    del store  # flushed and closed; workers reopen it in r+ mode


def compact_store(path: Path, keep: np.ndarray) -> None:
    """Rewrite the store at ``path`` with only the rows where the boolean ``keep`` is true."""
    old = np.load(path, mmap_mode="r")
    kept = np.flatnonzero(keep)
    tmp = path.with_name(path.stem + ".compact.npy")
    if len(kept) == 0:
        np.save(tmp, np.zeros((0,) + old.shape[1:], dtype=np.uint8))
    else:
        new = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(kept),) + old.shape[1:])
        for start in range(0, len(kept), COPY_BLOCK_ROWS):
            block = kept[start:start + COPY_BLOCK_ROWS]
            new[start:start + len(block)] = old[block]
        new.flush()
        del new
    del old
    tmp.replace(path)


def plan_tasks(manifest, splits: np.ndarray, out_dir: Path, size: int) -> list[CropTask]:
    """Allocate ``out_dir/{split}.npy`` and cut each split's rows (manifest order) into chunks."""
    boxes = manifest[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.int64)
    offsets, nbytes = manifest["offset"].to_numpy(np.int64), manifest["nbytes"].to_numpy(np.int64)
    images = manifest["image"].tolist()
    tasks = []
    for split in STORE_SPLITS:
        rows = np.flatnonzero(splits == split)
        store = out_dir / f"{split}.npy"
        allocate_store(store, len(rows), size)
        entries = [(k, int(offsets[r]), int(nbytes[r]), tuple(int(v) for v in boxes[r]), images[r])
                   for k, r in enumerate(rows)]
        tasks += [CropTask(str(store), tuple(entries[i:i + CHUNK_IMAGES]))
                  for i in range(0, len(entries), CHUNK_IMAGES)]
    return tasks


def finish_stores(manifest, splits: np.ndarray, out_dir: Path, skipped: set[str]) -> dict[str, int]:
    """Drop skipped images from the stores and write the row-aligned ``{split}.csv``; return counts."""
    counts = {}
    for split in STORE_SPLITS:
        rows = manifest.loc[splits == split, ["image", "class_id"]]
        keep = ~rows["image"].isin(skipped).to_numpy()
        if not keep.all():
            compact_store(out_dir / f"{split}.npy", keep)
        rows[keep].to_csv(out_dir / f"{split}.csv", index=False)
        counts[split] = int(keep.sum())
    return counts


def preview_rows(labels: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` row indices: the first image of each class first, then the others in order."""
    _, first = np.unique(labels, return_index=True)
    rest = np.setdiff1d(np.arange(len(labels)), first)
    return np.concatenate([np.sort(first), rest])[:count]


def write_preview(out_dir: Path, class_names: list[str], count: int, path: str | Path) -> None:
    """Grid of up to ``count`` crops from the first non-empty store, titled with class names."""
    from .data_plots import plot_crop_grid
    from .store import load_split

    for split in STORE_SPLITS:
        data = load_split(out_dir, split)
        if len(data.labels):
            break
    rows = preview_rows(data.labels, count)
    plot_crop_grid(np.asarray(data.images[rows]), [class_names[data.labels[r]] for r in rows], path)


def _decode_failure(failures: list[tuple[str, str]], raw_dir: Path) -> DataError:
    image, reason = failures[0]
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return DataError(f"cannot decode {image} (stored in {raw_dir / 'images.bin'}): {reason}{more}; "
                     "set data.skip_bad_images: true to skip unreadable images")


def run_crop(crop: CropConfig, skip_bad: bool, raw_dir: str | Path, split_dir: str | Path, out_dir: str | Path,
             metrics_path: Optional[str | Path], preview_path: Optional[str | Path]) -> dict:
    """The crop stage: one uint8 store per split in ``out_dir`` (ARCHITECTURE.md §3), metrics and preview.

    ``skip_bad`` is ``data.skip_bad_images``: drop images that fail to decode (listed in the metrics) instead
    of failing. Returns the metrics (counts, seconds, images/s, skipped).
    """
    import time

    from .io import atomic_dir, write_json
    from .manifest import IMAGES_BIN, read_classes, read_manifest
    from .splits import read_split

    started = time.perf_counter()
    raw_dir = Path(raw_dir)
    manifest = read_manifest(raw_dir)
    class_names = read_classes(raw_dir)["class_names"]
    splits = read_split(split_dir, manifest)["split"].to_numpy()
    workers = resolve_workers(crop.workers, len(manifest))
    with atomic_dir(out_dir) as tmp:
        tasks = plan_tasks(manifest, splits, tmp, crop.size)
        crop_started = time.perf_counter()
        failures = execute_tasks(tasks, str(raw_dir / IMAGES_BIN), crop.margin, crop.size, crop.keep_aspect,
                                 workers, stop_on_failure=not skip_bad)
        crop_seconds = time.perf_counter() - crop_started
        if failures and not skip_bad:
            raise _decode_failure(failures, raw_dir)
        counts = finish_stores(manifest, splits, tmp, {image for image, _ in failures})
        write_json(tmp / META_JSON, {"size": crop.size, "margin": crop.margin, "keep_aspect": crop.keep_aspect,
                                     "class_names": class_names, "num_classes": len(class_names), "counts": counts})
    if preview_path is not None:
        write_preview(Path(out_dir), class_names, crop.preview, preview_path)
    rate = len(manifest) / crop_seconds if crop_seconds > 0 else 0.0
    metrics = {"counts": counts, "size": crop.size, "workers": workers, "crop_seconds": round(crop_seconds, 3),
               "images_per_second": round(rate, 1), "num_skipped": len(failures),
               "skipped": [{"image": image, "reason": reason} for image, reason in failures],
               "seconds": round(time.perf_counter() - started, 3)}
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    print(f"crop: {sum(counts.values())} crops of {crop.size}px at {rate:.0f} images/s "
          f"({workers} worker(s), {metrics['seconds']:.1f} s) -> {out_dir}")
    return metrics
