"""Training on a tiny crop store written with NumPy: CPU-sized experiments, a run helper, weight comparisons and a
callback that interrupts a run at a chosen epoch (resume tests)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from carbench.config import parse_params
from carbench.data.store import write_store as write_crop_store
from carbench.train.engine import train_experiment
from carbench.train.train_log import TIMING_KEYS
from support.params import repo_params

CLASSES, STORE_SIZE, IMAGE_SIZE = 4, 20, 16
COUNTS = {"train": 24, "val": 12, "test": 8}
#: The DDP tests' store (``ddp_store``): 16 px, 48 val images, so a few borderline images move val top-1 little.
DDP_COUNTS = {"train": 64, "val": 48, "test": 8}


def write_store(root: Path, seed: int = 0, counts: dict[str, int] = COUNTS, size: int = STORE_SIZE,
                colours: np.ndarray | None = None) -> Path:
    """A crop store in the documented format: each class has its own mean colour (random unless given) plus noise."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, (CLASSES, 3)) if colours is None else np.asarray(colours)
    splits = {}
    for split, n in counts.items():
        labels = np.arange(n) % len(colours)
        noise = rng.integers(-40, 41, (n, size, size, 3))
        images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        splits[split] = (images, [f"cars_{split}/{i:05d}.jpg" for i in range(n)], labels)
    write_crop_store(root, splits, [f"car {i}" for i in range(len(colours))])
    return root


def tiny(name: str = "cnn_bn_dropout", model: dict | None = None, train: dict | None = None):
    """(experiment, base) from the repository's params with CPU-sized settings."""
    params = parse_params(repo_params())
    exp = params.experiments[name]
    m = dataclasses.replace(exp.model, **{"cnn_widths": (4, 8), **(model or {})})
    t = dataclasses.replace(exp.train, **{"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "image_size": IMAGE_SIZE,
                                          "warmup_epochs": 0, **(train or {})})
    return dataclasses.replace(exp, model=m, train=t), dataclasses.replace(params.base, device="cpu")


def run(tmp: Path, store: Path, exp, base, tag: str, **kwargs) -> tuple[Path, Path]:
    out, live = tmp / tag / "model", tmp / tag / "live"
    train_experiment(exp, base, store, out, live, resume_dir=tmp / "resume", **kwargs)
    return out, live


def weights_of(out: Path) -> dict:
    return torch.load(out / "best.pt", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def deterministic_metrics(live: Path) -> dict:
    metrics = json.loads((live / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


class Interrupt:
    """on_epoch_end callback that raises KeyboardInterrupt after (0-based) epoch ``after``."""

    def __init__(self, after: int) -> None:
        self.after = after

    def __call__(self, epoch: int, row: dict) -> None:
        if epoch == self.after:
            raise KeyboardInterrupt


STAGE_TRAIN = {"epochs": 4, "batch_size": 8, "eval_batch_size": 16, "image_size": IMAGE_SIZE, "warmup_epochs": 0,
               "optimizer": "adam", "lr": 0.01, "scheduler": "none", "augment": "none", "label_smoothing": 0.0}


STAGE_MODEL = {"cnn_widths": [4, 8], "cnn_batch_norm": True}
