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
        set_threads(threads)


def set_threads(threads: int = 0) -> None:
    """torch's CPU threads (0 = all cores)."""
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
    """Return the torch device for ``base.device`` (auto | cuda | cuda:auto | cpu; cuda:auto: :func:`claim_gpu`)."""
    import torch

    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda:auto" and torch.cuda.is_available():
        # a torchrun worker (base.gpus > 1) keeps the GPU of its LOCAL_RANK; any other process claims one
        local = os.environ.get("LOCAL_RANK")
        torch.cuda.set_device(index := int(local) if local is not None else claim_gpu())
        select_device("cuda")  # its CUDA settings
        return torch.device("cuda", index)
    if torch.cuda.is_available():
        cuda_settings()
        return torch.device("cuda")
    if name in ("cuda", "cuda:auto"):
        raise DeviceError(f"base.device is {name!r} but torch sees no CUDA device; set base.device to auto or cpu")
    return torch.device("cpu")


def cuda_settings() -> None:
    """What every CUDA process of carbench runs with: TF32 matmuls and convolutions, no cuDNN autotuning."""
    import torch

    # cuDNN autotuning stays off here: it tunes every new input shape again, which cost the inference
    # stages more than their compute; the trainer turns it on for its one full training batch shape.
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


#: ``cuda:auto`` keeps its GPU lock file open here for the process lifetime (the OS releases it at exit).
_CLAIMED: list = []
GPU_LOCK_NAME = "carbench-gpu-{}.lock"


def visible_gpu_names(count: int) -> list[str]:
    """Names of torch's CUDA devices 0..count-1 as the machine knows them: the ``CUDA_VISIBLE_DEVICES`` entries
    (indices or UUIDs) when set, else the indices; so two processes shown different GPUs never share a lock."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    names = visible[:count] if len(visible) >= count else [str(i) for i in range(count)]
    return ["".join(c if c.isalnum() or c in "-_" else "_" for c in name) for name in names]


def claim_gpu(lock_dir=None) -> int:
    """``base.device: cuda:auto``: the index of the first CUDA device no other process holds, claimed with an
    exclusive ``fcntl.flock`` on ``<lock_dir>/carbench-gpu-<name>.lock`` (default: the system temp dir) that this
    process holds until it exits; when every device is claimed, the one with the most free memory (shared).
    For ``dvc queue start -j N``, whose workers all start with the same environment. (Under DDP each rank uses
    ``LOCAL_RANK`` instead.)"""
    import fcntl
    import tempfile
    from pathlib import Path

    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise DeviceError("base.device is 'cuda:auto' but torch sees no CUDA device; set base.device to auto or cpu")
    folder = Path(lock_dir if lock_dir is not None else tempfile.gettempdir())
    for index, name in enumerate(visible_gpu_names(count)):
        handle = open(folder / GPU_LOCK_NAME.format(name), "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _CLAIMED.append(handle)
        return index
    return max(range(count), key=lambda i: torch.cuda.mem_get_info(i)[0])


def generator(seed: int, device=None):
    """A torch.Generator seeded for one purpose (shuffling, augmentation), on ``device``."""
    import torch

    gen = torch.Generator(device=device if device is not None else "cpu")
    gen.manual_seed(seed)
    return gen
