"""Training data on the device: each split's crops (resident or streamed), sample orders and batches, and the
feature cache (a split's backbone features, computed once so that only the head is trained on them).

Each split's uint8 crops ``(N, S, S, 3)`` are copied once into a device tensor when they fit in
:data:`RESIDENT_FRACTION` of free device memory (host RAM on CPU); otherwise batches are gathered from
the memory-mapped store, one batch ahead in a background thread, and streamed (:func:`batches`). Resident
crops are resized once, while copying, to the size every batch would be resized to first
(:func:`carbench.train.augment.stored_size`): same results, less memory and work. Batches come from seeded
permutations (:class:`Order`): no DataLoader, no per-image Python.
"""
from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from ..core import timing
from ..model.preprocess import eval_preprocess, resize_nhwc_uint8
from ..core.errors import DataError
from ..model.carnet import CarNet
from ..data.store import load_split

#: A split is kept resident on the device when it needs at most this fraction of free memory.
RESIDENT_FRACTION = 0.5
#: Name prefix of the thread that reads a streamed split one batch ahead (:func:`batches`).
PREFETCH_THREAD = "carbench-prefetch"
#: Host memory used at a time while copying a split to the device.
LOAD_CHUNK_BYTES = 256 * 2**20


# ----------------------------------------------------------------------------- crop store access
def read_split(crops_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, S, S, 3) uint8 memory-mapped, labels (N,) int64) of one split."""
    data = load_split(crops_dir, split, mmap=True)
    return data.images, np.asarray(data.labels, dtype=np.int64)


@dataclass
class Order:
    """A sample order (N,) int64 on CPU and on the device (copied once per epoch)."""

    cpu: torch.Tensor
    device: torch.Tensor

    @classmethod
    def make(cls, perm: torch.Tensor, device: torch.device) -> "Order":
        return cls(perm, perm.to(device))


class BatchSource:
    """What :func:`batches` reads: ``gather`` (host rows, the part that may run in a background thread; None when
    the data is on the device) then ``place`` (images and labels on the device)."""

    #: True when ``gather`` reads the memory-mapped store (worth doing one batch ahead).
    streamed = False
    #: Labels (N,) int64 on the device.
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, idx: torch.Tensor) -> Any:
        return None

    def place(self, rows: Any, idx_device: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def batch(self, order: Order, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of ``order[start:stop]``, on the device."""
        return self.place(self.gather(order.cpu[start:stop]), order.device[start:stop])


class SplitData(BatchSource):
    """One split: images resident on ``device`` or streamed from the mmap; labels (N,) int64 on device."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device, resident: bool,
                 size: Optional[int] = None) -> None:
        self.device = device
        self.resident = resident
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(device)
        self.source = images
        self.images = copy_to_device(images, device, size) if resident else None

    @property
    def streamed(self) -> bool:
        return not self.resident

    def gather(self, idx: torch.Tensor) -> Optional[np.ndarray]:
        """Host rows ``(B, S, S, 3)`` of a streamed split at CPU indices ``idx`` (None when resident): the part
        of a batch that reads the store, and the only part :func:`batches` runs in its background thread."""
        return None if self.resident else self.source[idx.numpy()]

    def place(self, rows: Optional[np.ndarray], idx_device: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, S, S, 3) and labels (B,) on the device, from :meth:`gather`'s rows (streamed: pinned,
        then copied asynchronously) or from the resident tensor."""
        if self.resident:
            return self.images.index_select(0, idx_device), self.labels.index_select(0, idx_device)
        host = torch.from_numpy(rows)
        if self.device.type == "cuda":
            host = host.pin_memory()
        return host.to(self.device, non_blocking=True), self.labels.index_select(0, idx_device)


def copy_to_device(images: np.ndarray, device: torch.device, size: Optional[int] = None) -> torch.Tensor:
    """Copy a (memory-mapped) uint8 array (N, S, S, 3) to a new device tensor, resized to ``size`` when
    smaller than S, in chunks of ~LOAD_CHUNK_BYTES (the whole store is never held twice on the host).

    Resizing once here is what every batch would otherwise do first (same antialiased resize), so
    results are unchanged while memory and per-step work shrink by (S / size)**2.
    """
    side = size if size is not None and size < images.shape[1] else images.shape[1]
    out = torch.empty((len(images), side, side, 3), dtype=torch.uint8, device=device)
    rows = max(1, LOAD_CHUNK_BYTES // max(1, images[:1].nbytes))
    for start in range(0, len(images), rows):
        chunk = torch.from_numpy(np.array(images[start:start + rows])).to(device)
        out[start:start + rows] = resize_nhwc_uint8(chunk, side) if side != images.shape[1] else chunk
    return out


class FeatureData(BatchSource):
    """Cached backbone features (N, D) float32 and labels (N,) on the device (never streamed)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def place(self, rows: None, idx_device: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features.index_select(0, idx_device), self.labels.index_select(0, idx_device)


class ConcatData(BatchSource):
    """Splits (SplitData or FeatureData) seen as one, rows in order (``train.refit``: train then val)."""

    def __init__(self, parts: list) -> None:
        self.parts = parts
        self.labels = torch.cat([p.labels for p in parts])
        self.bounds = np.cumsum([0] + [len(p) for p in parts]).tolist()

    @property
    def streamed(self) -> bool:
        return any(part.streamed for part in self.parts)

    def gather(self, idx: torch.Tensor) -> list[tuple]:
        """Per part with rows in ``idx``: (part, positions in the batch, the part's own indices, its host rows)."""
        out = []
        for part, low, high in zip(self.parts, self.bounds, self.bounds[1:]):
            where = ((idx >= low) & (idx < high)).nonzero().squeeze(1)
            if len(where):
                local = idx[where] - low
                out.append((part, where, local, part.gather(local)))
        return out

    def place(self, gathered: list[tuple], idx_device: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [part.place(host, local.to(part.labels.device))[0] for part, _, local, host in gathered]
        x = torch.cat(rows)
        out = torch.empty_like(x)
        out[torch.cat([where for _, where, _, _ in gathered]).to(x.device)] = x
        return out, self.labels.index_select(0, idx_device)


def batches(data: BatchSource, order: Order, batch_size: int, steps: Optional[int] = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``data``'s batches ``order[0:bs]``, ``order[bs:2 bs]``, ... (the first ``steps`` of them; default all).

    A streamed split is read one batch ahead: a background thread gathers the next batch's rows from the
    memory-mapped store (numpy copies and page faults run without the GIL) while the caller computes on the
    current one. Only that host read runs in the thread; pinning, the asynchronous device copy and every
    device operation stay on the calling thread, so its device and CUDA stream are the ones used. Resident
    data (and cached features) is indexed on the device directly, with no thread.
    """
    total = len(order.cpu)
    spans = [(start, min(start + batch_size, total)) for start in range(0, total, batch_size)][:steps]
    if not data.streamed:
        for start, stop in spans:
            yield data.batch(order, start, stop)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=PREFETCH_THREAD) as pool:
        pending = pool.submit(data.gather, order.cpu[spans[0][0]:spans[0][1]]) if spans else None
        for i, (start, stop) in enumerate(spans):
            rows = pending.result()
            if i + 1 < len(spans):
                pending = pool.submit(data.gather, order.cpu[spans[i + 1][0]:spans[i + 1][1]])
            yield data.place(rows, order.device[start:stop])


def free_memory_bytes(device: torch.device) -> int:
    """Free device memory (CUDA) or available host RAM (CPU), in bytes."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume it fits
        return sys.maxsize


def load_split_data(crops_dir: Path, split: str, device: torch.device, num_classes: int,
                    budget: Optional[int] = None, size: Optional[int] = None) -> SplitData:
    """Open one split and place it: resident (resized once to ``size`` when smaller than the store's)
    when it fits ``budget`` bytes (default: a fraction of the free memory), else streamed at full size."""
    images, labels = read_split(crops_dir, split)
    if len(labels) == 0 or len(images) != len(labels):
        raise DataError(f"{crops_dir}/{split}.npy: {len(images)} images for {len(labels)} labels "
                        f"(a split needs at least one image and one label per image)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{crops_dir}/{split}.csv: class_id outside 0..{num_classes - 1}")
    budget = int(free_memory_bytes(device) * RESIDENT_FRACTION) if budget is None else budget
    side = min(size or images.shape[1], images.shape[1])
    return SplitData(images, labels, device, resident=len(images) * side * side * 3 <= budget, size=side)


# ----------------------------------------------------------------------------- feature cache
@torch.no_grad()  # not inference_mode: the cached tensors are later inputs of autograd (head training)
def compute_features(model: CarNet, data: SplitData, image_size: int, batch_size: int,
                     device: torch.device, amp: Optional[torch.dtype], resize_size: int = 0) -> FeatureData:
    """Backbone features (N, D) float32 of a split, in eval mode, batched (``resize_size``: as eval_preprocess)."""
    model.eval()
    timing.first_batch()
    out = torch.empty(len(data), model.feature_dim, device=device)
    order = Order.make(torch.arange(len(data)), device)
    for start, (raw, _) in zip(range(0, len(data), batch_size), batches(data, order, batch_size)):
        stop = start + len(raw)
        x = eval_preprocess(raw, image_size, model.mean, model.std, resize_size)
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            out[start:stop] = model.features(x).float()
    return FeatureData(out, data.labels)
