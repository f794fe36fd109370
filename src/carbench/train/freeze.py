"""Freeze schedule: which backbone blocks train in each epoch under ``model.freeze``.

Modes: ``frozen`` = head only, ``partial`` = the top ``model.trainable_blocks`` blocks, ``progressive`` = one more
block (top-down) every ``model.unfreeze_every`` epochs, ``full`` = everything. Frozen blocks also keep their
BatchNorm statistics (their modules stay in eval mode even under ``model.train()``:
:meth:`carbench.model.carnet.CarNet.train`). ``model.head_warmup_epochs`` freezes the whole backbone for its first
N epochs (head warm-up) before the mode's schedule starts. The blocks are :mod:`carbench.model.blocks`'s split.
"""
from __future__ import annotations

from ..config import ModelConfig
from ..model.carnet import CarNet


def trainable_blocks_for_epoch(cfg: ModelConfig, epoch: int, num_blocks: int) -> int:
    """How many top backbone blocks train in (0-based) ``epoch`` under ``model.freeze``.

    The first ``model.head_warmup_epochs`` epochs train the head only; the freeze mode's schedule starts after.
    """
    if cfg.freeze == "frozen" or epoch < cfg.head_warmup_epochs:
        return 0
    epoch -= cfg.head_warmup_epochs
    if cfg.freeze == "partial":
        return min(cfg.trainable_blocks, num_blocks)
    if cfg.freeze == "progressive":
        return min(num_blocks, epoch // cfg.unfreeze_every)
    return num_blocks


def apply_freeze(model: CarNet, cfg: ModelConfig, epoch: int) -> int:
    """Set requires_grad / eval flags for ``epoch``; return the number of trainable blocks."""
    count = trainable_blocks_for_epoch(cfg, epoch, model.num_blocks)
    model.set_trainable_blocks(count)
    return count
