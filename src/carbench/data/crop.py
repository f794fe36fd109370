"""The crop stage: crop every image of ``data/raw`` to its box once and write the crop store ``data/crops``.

Images are decoded and cropped (:mod:`carbench.data.crop_geometry`) by a pool of processes that share a memory map of
``images.bin`` and write straight into the split arrays the store allocated (:mod:`carbench.data.store` owns the
format: file names, meta, index); skipped images are compacted away at the end.
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ..core.signals import release_stop_signals, stop_signals_held
from ..config import CropConfig, Params
from .crop_geometry import Box, decode_crop
from ..core.errors import DataError
from .images import error_reason
from ..core.runtime import configure
from .store import SPLITS, StoreMeta, allocate_split, compact_split, load_split, split_paths, write_index, write_meta

CHUNK_IMAGES = 16              # images per pool task: small enough to balance, large enough to amortise IPC
MIN_IMAGES_PER_WORKER = 32     # below this a process costs more to start than it saves


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


def _start_worker(*init: object) -> None:
    """A pool worker's start: stop signals as :func:`carbench.core.signals.release_stop_signals` leaves them, then
    :func:`_init_worker`."""
    release_stop_signals()
    _init_worker(*init)


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
        except DataError as exc:   # a photo Pillow refuses (ImageError), a box outside it
            failures.append((image, error_reason(exc)))
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
    with stop_signals_held():      # forked with SIGINT/SIGTERM held: a terminate() can never be lost
        pool = multiprocessing.get_context(method).Pool(workers, _start_worker, init)
    with pool:
        yield lambda tasks: pool.imap_unordered(_run_task, tasks)


def execute_tasks(tasks: list[CropTask], images_bin: str, margin: float, size: int, keep_aspect: bool,
                  workers: int, stop_on_failure: bool) -> list[tuple[str, str]]:
    """Run every task with a progress bar; return the failures sorted by image name.

    With ``stop_on_failure`` the run stops (and the pool is terminated) at the first failing chunk.
    """
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


def plan_tasks(manifest, splits: np.ndarray, out_dir: Path, size: int) -> list[CropTask]:
    """Allocate ``out_dir/{split}.npy`` and cut each split's rows (manifest order) into chunks."""
    boxes = manifest[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.int64)
    offsets, nbytes = manifest["offset"].to_numpy(np.int64), manifest["nbytes"].to_numpy(np.int64)
    images = manifest["image"].tolist()
    tasks = []
    for split in SPLITS:
        rows = np.flatnonzero(splits == split)
        store = out_dir / f"{split}.npy"
        allocate_split(store, len(rows), size)
        entries = [(k, int(offsets[r]), int(nbytes[r]), tuple(int(v) for v in boxes[r]), images[r])
                   for k, r in enumerate(rows)]
        tasks += [CropTask(str(store), tuple(entries[i:i + CHUNK_IMAGES]))
                  for i in range(0, len(entries), CHUNK_IMAGES)]
    return tasks


def finish_stores(manifest, splits: np.ndarray, out_dir: Path, skipped: set[str]) -> dict[str, int]:
    """Drop skipped images from the stores and write the row-aligned ``{split}.csv``; return counts."""
    counts = {}
    for split in SPLITS:
        rows = manifest.loc[splits == split, ["image", "class_id"]]
        keep = ~rows["image"].isin(skipped).to_numpy()
        if not keep.all():
            compact_split(split_paths(out_dir, split)[0], keep)
        write_index(out_dir, split, rows["image"][keep].tolist(), rows["class_id"][keep].to_numpy())
        counts[split] = int(keep.sum())
    return counts


def preview_rows(labels: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` row indices: the first image of each class first, then the others in order."""
    _, first = np.unique(labels, return_index=True)
    rest = np.setdiff1d(np.arange(len(labels)), first)
    return np.concatenate([np.sort(first), rest])[:count]


def write_preview(out_dir: Path, class_names: list[str], count: int, path: str | Path) -> None:
    """Grid of up to ``count`` crops from the first non-empty store, titled with class names."""
    from .previews import plot_crop_grid

    for split in SPLITS:
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


def write_crops(crop: CropConfig, skip_bad: bool, raw_dir: str | Path, split_dir: str | Path, out_dir: str | Path,
                metrics_path: Optional[str | Path], preview_path: Optional[str | Path]) -> dict:
    """The crop stage's work: one uint8 store per split in ``out_dir`` (ARCHITECTURE.md §3), metrics and preview.

    ``skip_bad`` is ``data.skip_bad_images``: drop images that fail to decode (listed in the metrics) instead
    of failing. Returns the metrics (counts, seconds, images/s, skipped).
    """
    import time

    from ..core.io import atomic_dir, write_json
    from .raw import IMAGES_BIN, read_classes, read_manifest
    from .split import read_protocol, read_split

    started = time.perf_counter()
    raw_dir = Path(raw_dir)
    manifest = read_manifest(raw_dir)
    classes = read_classes(raw_dir)
    class_names = classes["class_names"]
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
        write_meta(tmp, StoreMeta(size=crop.size, margin=crop.margin, keep_aspect=crop.keep_aspect,
                                  class_names=tuple(class_names), num_classes=len(class_names), counts=counts,
                                  source=str(classes.get("source", "")), train_classes=read_protocol(split_dir)))
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
    if failures:
        print(skipped_line(len(failures), metrics_path), file=sys.stderr)
    return metrics


def skipped_line(count: int, metrics_path: Optional[str | Path]) -> str:
    """The console line for images skipped under ``data.skip_bad_images`` (the metrics list them)."""
    where = f"listed under 'skipped' in {metrics_path}" if metrics_path is not None else "no metrics file lists them"
    return f"warning: crop skipped {count} unreadable image(s) (data.skip_bad_images: true); {where}"


def run(params: Params, raw_dir: str | Path, split_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
        preview_path: str | Path) -> dict:
    """Stage entry point (stages/crop.py): seed, then :func:`write_crops` with the ``crop`` section."""
    configure(params.base.seed, params.base.threads, use_torch=False)
    return write_crops(params.crop, params.data.skip_bad_images, raw_dir, split_dir, out_dir, metrics_path,
                       preview_path)
