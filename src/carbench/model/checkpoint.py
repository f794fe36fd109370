"""Classifier checkpoints (``models/<name>/best.pt``, ARCHITECTURE.md section 4).

A checkpoint is a plain dict of tensors and builtins, so ``torch.load(path, weights_only=True)`` reads it:
``format``, ``kind``, ``model`` (ModelConfig as dict), ``num_classes``, ``class_names``, ``image_size``,
``mean``, ``std``, ``state_dict``, ``epoch`` (1-based epoch of the best val top-1), ``best_val_top1``,
``train`` (TrainConfig as dict), ``optimizer`` and ``scheduler`` (state dicts at that epoch),
``weights_file`` and ``weights_sha256`` (base name and sha256 of the pretrained weights file training
started from, ``"none"`` for random init; :func:`carbench.model.weights.weights_record`),
``data_source`` (the crop store's ``source``, e.g. ``synthetic``; absent from older checkpoints).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from ..config import ConfigError, ModelConfig, TrainConfig, build, to_dict
from ..core.errors import UserError
from ..core.io import atomic_torch_save
from .build import build_model
from .carnet import CarNet

FORMAT = "carbench/1"
KIND_CLASSIFIER = "classifier"
REQUIRED_KEYS = ("format", "kind", "model", "num_classes", "class_names", "image_size", "mean", "std",
                 "state_dict")
#: Recorded when the caller does not say which weights file training started from.
WEIGHTS_UNKNOWN = "unknown"


def make_checkpoint(model: CarNet, model_cfg: ModelConfig, train_cfg: TrainConfig, class_names: Sequence[str],
                    epoch: int, best_val_top1: float, optimizer_state: dict, scheduler_state: dict,
                    weights: Optional[Mapping[str, str]] = None, data_source: str = "") -> dict:
    """The checkpoint dict for ``model`` (state tensors are copied to CPU).

    ``weights``: :func:`carbench.model.weights.weights_record` of the pretrained weights (``"unknown"`` when None).
    ``data_source``: what the model was trained on (:attr:`carbench.data.store.StoreMeta.source`), so predict can
    warn about a demo model; "" when unknown.
    """
    weights = weights or {}
    return {
        "format": FORMAT,
        "kind": KIND_CLASSIFIER,
        "model": to_dict(model_cfg),
        "num_classes": int(model.num_classes),
        "class_names": list(class_names),
        "image_size": int(train_cfg.image_size),
        "mean": list(model.mean),
        "std": list(model.std),
        "state_dict": cpu_state(model.state_dict()),
        "epoch": int(epoch),
        "best_val_top1": float(best_val_top1),
        "train": to_dict(train_cfg),
        "optimizer": cpu_state(optimizer_state),
        "scheduler": dict(scheduler_state),
        "weights_file": str(weights.get("weights_file", WEIGHTS_UNKNOWN)),
        "weights_sha256": str(weights.get("weights_sha256", WEIGHTS_UNKNOWN)),
        "data_source": str(data_source),
    }


def cpu_state(state: Any) -> Any:
    """A deep copy of a (nested) state dict with every tensor cloned to CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: cpu_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_state(v) for v in state)
    return state


def save_checkpoint(ckpt: dict, path: Union[str, Path]) -> None:
    """Write ``ckpt`` atomically with torch.save (a stop meanwhile takes effect once it is whole:
    :func:`carbench.core.io.atomic_torch_save`)."""
    atomic_torch_save(ckpt, path)


def load_checkpoint(path: Union[str, Path]) -> dict:
    """Read a classifier checkpoint (weights_only, on CPU); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (run the train stage first)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a carbench checkpoint (missing key {missing[0]!r})")
    if ckpt["format"] != FORMAT or ckpt["kind"] != KIND_CLASSIFIER:
        raise UserError(f"{path}: unsupported checkpoint format {ckpt['format']!r}/{ckpt['kind']!r} "
                        f"(expected {FORMAT!r}/{KIND_CLASSIFIER!r})")
    return ckpt


def load_classifier(path: Union[str, Path], device: Union[str, torch.device]) -> tuple[CarNet, dict]:
    """(CarNet in eval mode on ``device``, the checkpoint dict without ``state_dict``).

    The architecture is rebuilt from the stored ModelConfig without pretrained weights (no weights
    files or network needed), then the stored state_dict is loaded strictly.
    """
    ckpt = load_checkpoint(path)
    try:
        model_cfg = build(ModelConfig, ckpt["model"], f"{path}:model")
    except ConfigError as exc:
        raise UserError(f"checkpoint {path} holds an invalid model config: {exc}") from None
    model = build_model(model_cfg, int(ckpt["num_classes"]), pretrained=False)
    model.load_state_dict(ckpt["state_dict"])
    model.mean, model.std = tuple(ckpt["mean"]), tuple(ckpt["std"])
    model.to(device).eval()
    return model, {k: v for k, v in ckpt.items() if k != "state_dict"}
