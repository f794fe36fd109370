"""Resume state of a training run: the training state that survives an epoch (:class:`TrainState`), RNG
capture/restore, and the ``resume_dir/<name>.pt`` files, keyed by :func:`resume_key`. This module owns their
format: :class:`ResumeState` is what a file holds (the trainer fills it, :meth:`ResumeState.to_file` and
:meth:`ResumeState.from_file` are the only code that knows its keys)."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..config import BaseConfig, Experiment, to_dict
from ..core.io import atomic_torch_save
from ..data.store import StoreMeta, store_files
from .train_log import say

#: Format tag of a resume file; a file with another tag is ignored (and replaced).
RESUME_FORMAT = "carbench-resume/1"
#: The crop store files a training run reads; their sizes are part of :func:`resume_key`.
STORE_FILES = store_files(("train", "val"))


# ----------------------------------------------------------------------------- training state
@dataclass
class BestSoFar:
    """The best epoch by val top-1 (1-based ``epoch``; 0 = none yet) and its checkpoint parts."""

    top1: float = -1.0
    epoch: int = 0
    state_dict: Optional[dict] = None
    optimizer: Optional[dict] = None
    scheduler: Optional[dict] = None


@dataclass
class TrainState:
    """Everything that changes during training besides model/optimizer (kept for resume)."""

    epoch: int = 0                      # completed epochs
    history: list = field(default_factory=list)
    best: BestSoFar = field(default_factory=BestSoFar)
    train_seconds: float = 0.0

    def record(self) -> dict:
        """What the refit phase keeps of the fit phase (no weights: the refit trains its own model)."""
        return {"epoch": self.epoch, "history": self.history, "train_seconds": self.train_seconds,
                "best_top1": self.best.top1, "best_epoch": self.best.epoch}

    @classmethod
    def from_record(cls, record: dict) -> "TrainState":
        return cls(int(record["epoch"]), list(record["history"]),
                   BestSoFar(float(record["best_top1"]), int(record["best_epoch"])), float(record["train_seconds"]))


@dataclass
class Streams:
    """One process's random streams: global RNGs (:func:`capture_rng`), augmentation and mixing generators."""

    rng: dict
    augment_gen: torch.Tensor
    mix_gen: torch.Tensor

    def to_file(self) -> dict:
        return {"rng": self.rng, "augment_gen": self.augment_gen, "mix_gen": self.mix_gen}


@dataclass
class ResumeState:
    """A resume file's content: everything needed to continue bit-identically after the last completed epoch.

    ``ranks``: every rank's :class:`Streams` (DDP with world > 1: each rank's differ; the file keeps them all).
    ``fit``: during the refit phase, the fit phase's record (the file then describes the refit trainer)."""

    key: str
    state: TrainState
    model: dict
    optimizer: dict
    scheduler: dict
    scaler: dict
    shuffle_gen: torch.Tensor
    streams: Streams
    ema: Optional[dict] = None
    ranks: Optional[list] = None
    fit: Optional[TrainState] = None
    #: the loss's own parameters (a metric-learning loss's proxies); None when it has none
    loss: Optional[dict] = None

    def streams_of(self, rank: int) -> Streams:
        return self.ranks[rank] if self.ranks is not None else self.streams

    def to_file(self) -> dict:
        st = self.state
        out: dict[str, Any] = {
            "format": RESUME_FORMAT, "key": self.key, "epoch": st.epoch, "history": st.history,
            "train_seconds": st.train_seconds, "best": vars(st.best).copy(), "model": self.model,
            "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler,
            "rng": self.streams.rng, "shuffle_gen": self.shuffle_gen, "augment_gen": self.streams.augment_gen,
            "mix_gen": self.streams.mix_gen, "ema": self.ema}
        if self.ranks is not None:
            out["ranks"] = [streams.to_file() for streams in self.ranks]
        if self.fit is not None:
            out.update(phase="refit", fit=self.fit.record())
        if self.loss is not None:
            out["loss"] = self.loss
        return out

    @classmethod
    def from_file(cls, saved: dict) -> "ResumeState":
        def streams(d: dict) -> Streams:
            return Streams(d["rng"], d["augment_gen"], d["mix_gen"])

        state = TrainState(int(saved["epoch"]), list(saved["history"]), BestSoFar(**saved["best"]),
                           float(saved["train_seconds"]))
        return cls(saved["key"], state, saved["model"], saved["optimizer"], saved["scheduler"], saved["scaler"],
                   saved["shuffle_gen"], streams(saved), saved["ema"],
                   [streams(r) for r in saved["ranks"]] if "ranks" in saved else None,
                   TrainState.from_record(saved["fit"]) if saved.get("phase") == "refit" else None,
                   saved.get("loss"))


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
    """Write the resume state atomically; a Ctrl-C or SIGTERM meanwhile stops the run once the file is whole
    (:func:`carbench.core.io.atomic_torch_save`), so the file is always the previous state or the new one, complete."""
    atomic_torch_save(state, path)


def load_resume(path: Path, key: str) -> Optional[ResumeState]:
    """The :class:`ResumeState` saved at ``path`` when it matches ``key``; None otherwise."""
    saved = load_resume_file(path, key)
    return None if saved is None else ResumeState.from_file(saved)


def save_resume(path: Path, state: ResumeState) -> None:
    save_resume_file(path, state.to_file())
