"""Device choice, CPU threads and seeding (:func:`seed_everything`, also the trainer's): one place, used by
every stage."""
from __future__ import annotations

import os
import random

import numpy as np

from .errors import UserError


class DeviceError(UserError):
    """The requested device is not available."""


def seed_everything(seed: int, use_torch: bool = True) -> None:
    """Seed Python, NumPy and (``use_torch``) torch (CPU and CUDA) so a run never depends on what ran before it."""
    random.seed(seed)
    np.random.seed(seed)
    if use_torch:
        import torch

        torch.manual_seed(seed)


def configure(seed: int, threads: int = 0, use_torch: bool = True) -> None:
    """Seed Python, NumPy and (``use_torch``) torch, and set torch's CPU threads (0 = all cores).

    Every stage calls this first, so results never depend on which stage ran before. The data
    stages pass ``use_torch=False``: they never use torch, and importing it costs seconds.
    """
    seed_everything(seed, use_torch)
    if use_torch:
        import torch

        torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))


#: Environment variables that forbid downloads like ``base.offline: true``: our own, and the Hugging Face
#: convention (``HF_HUB_OFFLINE``), which ``huggingface_hub`` itself honours too.
OFFLINE_ENV = ("CARBENCH_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = ("1", "true", "yes", "on")


def is_offline(flag: bool = False) -> bool:
    """True when downloads are forbidden: ``base.offline`` (``flag``) or any of :data:`OFFLINE_ENV` set truthy."""
    return flag or any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENV)


def select_device(name: str):
    """Return the torch device for ``base.device`` (auto | cuda | cpu)."""
    import torch

    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        # cuDNN autotuning stays off here: it tunes every new input shape again, which cost the inference
        # stages more than their compute; the trainer turns it on for its one full training batch shape.
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda")
    if name == "cuda":
        raise DeviceError("base.device is 'cuda' but torch sees no CUDA device; set base.device to auto or cpu")
    return torch.device("cpu")


def generator(seed: int, device=None):
    """A torch.Generator seeded for one purpose (shuffling, augmentation), on ``device``."""
    import torch

    gen = torch.Generator(device=device if device is not None else "cpu")
    gen.manual_seed(seed)
    return gen
