"""Optimizer and learning-rate schedule.

Parameter groups: head (lr = ``train.lr``, times batch_size / 256 under ``train.lr_scaling: linear``) and backbone
(backbone lr = the head's * ``model.backbone_lr_mult``), each split
into weights with weight decay and norm/bias parameters (1-d tensors) without it. Which backbone
parameters are included follows ``model.freeze``: none for ``frozen``, the top
``model.trainable_blocks`` blocks for ``partial``, all for ``progressive`` (still-frozen ones simply get
no gradient, which optimizers skip) and ``full``. ``model.layer_decay < 1`` splits the backbone into one
group per block with geometrically smaller lrs towards the input (layer-wise lr decay).

Schedule (:class:`LrSchedule`): ``lr(step) = base_lr * warmup * decay * plateau``, updated after every
optimizer step, with ``t = step / steps_per_epoch`` in (fractional) epochs:

* warmup: linear per step from ``1 / warmup_steps`` to 1 over ``train.warmup_epochs`` epochs;
* ``none``: 1; ``step``: ``gamma ** floor(epoch / step_size)`` (whole epochs);
* ``cosine``: ``0.5 * (1 + cos(pi * (t - warmup) / (epochs - warmup)))``, per step, after warmup;
* ``plateau``: multiplied by ``gamma`` when val top-1 has not improved for
  :data:`PLATEAU_PATIENCE` epochs (``epoch_end(val_top1)``).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..config import ModelConfig, TrainConfig

#: Epochs without val top-1 improvement before ``plateau`` decays the lr.
PLATEAU_PATIENCE = 2
#: Improvements smaller than this (fraction of top-1) do not reset the plateau counter.
PLATEAU_MIN_DELTA = 1e-4


def split_decay(params: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights that get weight decay, norm/bias parameters = tensors with <= 1 dim that do not)."""
    decay, no_decay = [], []
    for p in params:
        (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def backbone_parameters(model: Any, model_cfg: ModelConfig) -> list[nn.Parameter]:
    """Backbone parameters the optimizer sees under ``model.freeze`` (see module docstring)."""
    if model_cfg.freeze == "frozen" or model_cfg.backbone_lr_mult == 0:
        return []
    first = 0
    if model_cfg.freeze == "partial":
        first = model.num_blocks - min(model_cfg.trainable_blocks, model.num_blocks)
    return [p for i in range(first, model.num_blocks) for p in model.block_parameters(i)]


def block_lr_scale(index: int, num_blocks: int, layer_decay: float) -> float:
    """Layer-wise lr decay: backbone block ``index`` (0 = bottom) of ``num_blocks`` gets
    ``layer_decay ** (num_blocks - index)`` (the head counts as the layer above the top block: scale 1)."""
    return layer_decay ** (num_blocks - index)


def param_groups(model: Any, model_cfg: ModelConfig, train_cfg: TrainConfig) -> list[dict]:
    """Optimizer groups of a CarNet: head/backbone x decay/no-decay; empty groups are dropped.

    With ``model.layer_decay < 1`` the backbone is one group per block (``backbone<i>``), block ``i``'s lr
    scaled by :func:`block_lr_scale` on top of ``model.backbone_lr_mult``. Each group carries ``base_lr``
    (its lr before scheduling) and a ``name`` for logs.
    """
    groups = []
    backbone_lr = train_cfg.effective_lr * model_cfg.backbone_lr_mult
    parts = [("head", list(model.head.parameters()), train_cfg.effective_lr)]
    if model_cfg.layer_decay < 1.0:
        included = {id(p) for p in backbone_parameters(model, model_cfg)}
        for i in range(model.num_blocks):
            params = [p for p in model.block_parameters(i) if id(p) in included]
            parts.append((f"backbone{i}", params, backbone_lr * block_lr_scale(i, model.num_blocks,
                                                                               model_cfg.layer_decay)))
    else:
        parts.append(("backbone", backbone_parameters(model, model_cfg), backbone_lr))
    for name, params, lr in parts:
        decay, no_decay = split_decay(params)
        for suffix, ps, wd in (("", decay, train_cfg.weight_decay), ("_no_decay", no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd, "name": name + suffix})
    return groups


def build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """sgd (momentum) | adam | adamw | rmsprop (momentum) over ``groups`` (per-group lr/weight_decay)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer must be one of sgd, adam, adamw, rmsprop, got {cfg.optimizer!r}")


class LrSchedule:
    """Per-step lr schedule with linear warmup (see the module docstring); ``state_dict`` for resume."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.step_count = 0
        self.plateau_factor = 1.0
        self.plateau_best: Optional[float] = None
        self.plateau_bad_epochs = 0
        self._apply()

    def factor(self, step: Optional[int] = None) -> float:
        """lr multiplier for the optimizer step number ``step`` (0-based; default: the next one)."""
        step = self.step_count if step is None else step
        cfg, t = self.cfg, step / self.steps_per_epoch
        warmup_steps = cfg.warmup_epochs * self.steps_per_epoch
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        if cfg.scheduler == "step":
            decay = cfg.gamma ** (int(t) // cfg.step_size)
        elif cfg.scheduler == "cosine":
            span = max(1, cfg.epochs - cfg.warmup_epochs)
            progress = min(1.0, max(0.0, (t - cfg.warmup_epochs) / span))
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0
        return warm * decay * self.plateau_factor

    def _apply(self) -> None:
        f = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * f

    def step(self) -> None:
        """Call after every optimizer step."""
        self.step_count += 1
        self._apply()

    def epoch_end(self, val_top1: float) -> None:
        """Call after every epoch's validation (only ``plateau`` uses it)."""
        if self.cfg.scheduler != "plateau":
            return
        if self.plateau_best is None or val_top1 > self.plateau_best + PLATEAU_MIN_DELTA:
            self.plateau_best, self.plateau_bad_epochs = val_top1, 0
        else:
            self.plateau_bad_epochs += 1
            if self.plateau_bad_epochs >= PLATEAU_PATIENCE:
                self.plateau_factor *= self.cfg.gamma
                self.plateau_bad_epochs = 0
        self._apply()

    def last_lr(self) -> float:
        """The current lr of the first (head) group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "plateau_factor": self.plateau_factor,
                "plateau_best": self.plateau_best, "plateau_bad_epochs": self.plateau_bad_epochs,
                "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_factor = float(state["plateau_factor"])
        self.plateau_best = state["plateau_best"]
        self.plateau_bad_epochs = int(state["plateau_bad_epochs"])
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> LrSchedule:
    """The lr schedule for ``train.scheduler`` with ``train.warmup_epochs`` (sets the first lr now)."""
    return LrSchedule(optimizer, cfg, steps_per_epoch)
