"""Resume state of a training run: RNG capture/restore and the ``resume_dir/<name>.pt`` files, keyed by
:func:`resume_key` (what goes into them is :meth:`carbench.train.engine.Trainer.resume_state`)."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import BaseConfig, Experiment, to_dict
from ..io import atomic_file
from ..data.store import StoreMeta, store_files
from .train_log import say

#: Format tag of a resume file; a file with another tag is ignored (and replaced).
RESUME_FORMAT = "carbench-resume/1"
#: The crop store files a training run reads; their sizes are part of :func:`resume_key`.
STORE_FILES = store_files(("train", "val"))


# ----------------------------------------------------------------------------- RNG state
def capture_rng() -> dict:
    """torch (CPU + every CUDA device), NumPy and Python RNG states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2]}


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))


# ----------------------------------------------------------------------------- resume files
def resume_key(exp: Experiment, base: BaseConfig, device: torch.device, crops_dir: Path, meta: StoreMeta,
               weights: Optional[dict] = None, world: int = 1) -> str:
    """sha256 of what determines the run: experiment config, seed, device type, weights record, store meta +
    file sizes, and the number of DDP processes when more than one."""
    sizes = {name: (Path(crops_dir) / name).stat().st_size for name in STORE_FILES
             if (Path(crops_dir) / name).exists()}
    payload = {"format": RESUME_FORMAT, "experiment": to_dict(exp), "seed": base.seed,
               "device": device.type, "meta": meta.to_json(), "sizes": sizes, "weights": weights,
               **({"world": world} if world != 1 else {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def load_resume_file(path: Path, key: str) -> Optional[dict]:
    """The saved state at ``path`` when it matches ``key``; None (with a log line) otherwise."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: start afresh, it will be replaced
        say(f"ignoring unreadable resume state {path} ({exc.__class__.__name__}); starting from scratch")
        return None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT or state.get("key") != key:
        say(f"ignoring resume state {path}: it belongs to another config or data; it will be replaced")
        return None
    return state


def save_resume_file(path: Path, state: dict) -> None:
    """Write the resume state atomically (an interrupted write never corrupts the previous one)."""
    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)
