"""The class-balanced batch order of ``train.sampler: m_per_class``: every batch of ``batch_size`` holds
``batch_size / m`` classes with ``m`` photos each (pytorch-metric-learning's
:class:`~pytorch_metric_learning.samplers.MPerClassSampler`; a class with fewer than ``m`` photos repeats some).

Pair-based losses (multi-similarity) learn only from positive pairs inside a batch; with a random order and many
classes most photos would have none. The library draws from numpy's global random state; here each epoch's
order is drawn under a numpy generator seeded from the trainer's own shuffle generator, so the order is
reproducible, survives a resume (that generator is in the resume state) and leaves numpy's global state alone.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

from ..core.errors import DataError


@contextlib.contextmanager
def _library_random(seed: int) -> Iterator[None]:
    """pytorch-metric-learning's random draws come from ``np.random.RandomState(seed)`` inside the block."""
    from pytorch_metric_learning.utils import common_functions as c_f

    saved = c_f.NUMPY_RANDOM
    c_f.NUMPY_RANDOM = np.random.RandomState(seed)
    try:
        yield
    finally:
        c_f.NUMPY_RANDOM = saved


def m_per_class_order(labels: torch.Tensor, m: int, batch_size: int, steps: int,
                      generator: torch.Generator) -> torch.Tensor:
    """An epoch's order (``steps * batch_size`` indices into ``labels``, int64 on the CPU): consecutive chunks of
    ``batch_size`` are batches of ``batch_size // m`` distinct classes, ``m`` indices of each."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    labels = labels.detach().cpu().numpy()
    classes = len(np.unique(labels))
    if batch_size % m:
        raise DataError(f"train.m_per_class ({m}) must divide train.batch_size ({batch_size})")
    if classes * m < batch_size:
        raise DataError(f"train.sampler m_per_class: {classes} training classes x m_per_class {m} cannot fill a "
                        f"batch of {batch_size}; lower train.batch_size or raise train.m_per_class")
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with _library_random(seed):
        order = list(MPerClassSampler(labels, m, batch_size=batch_size, length_before_new_iter=steps * batch_size))
    return torch.tensor(order, dtype=torch.int64)
