"""Bare rates (the trainer's own step and inference forwards on random on-device tensors) and the bare-compute
floor of a train stage: what it would cost with no start-up, no data movement and no idle device."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

BARE_WARMUP_STEPS = 3          # cuDNN autotuning and the allocator settle here
#: Each bare rate is timed for about this long (at least BARE_MIN_STEPS steps); $CARBENCH_BARE_SECONDS overrides.
BARE_TIMED_SECONDS = float(os.environ.get("CARBENCH_BARE_SECONDS", "2.0"))
BARE_MIN_STEPS = 5


@dataclass
class Bare:
    """Images/s of bare training steps (per freeze state) and of inference forwards, per experiment."""

    train: dict[int, float] = field(default_factory=dict)   # trainable blocks -> images/s
    infer: float = 0.0


def _timed(step: Any, device: Any) -> float:
    """Seconds per call of ``step`` after warm-up, timed for about BARE_TIMED_SECONDS."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(BARE_WARMUP_STEPS):
        step()
    sync()
    calls, start = 0, time.perf_counter()
    while calls < BARE_MIN_STEPS or time.perf_counter() - start < BARE_TIMED_SECONDS:
        step()
        calls += 1
        if calls % BARE_MIN_STEPS == 0:
            sync()
    sync()
    return (time.perf_counter() - start) / calls


def bare_rates(exp: Any, base: Any, num_classes: int, device: Any) -> Bare:
    """The trainer's own ``train_step`` on random on-device tensors, for every freeze state the experiment's
    epochs go through, and eval-mode forwards at ``train.eval_batch_size`` under the predictor's autocast."""
    import torch

    from carbench.train.batches import FeatureData
    from carbench.train.engine import Trainer, use_feature_cache
    from carbench.train.plan import step_plan
    from carbench.model.build import build_model
    from carbench.train.freeze import apply_freeze, trainable_blocks_for_epoch

    cfg, out = exp.train, Bare()
    model = build_model(exp.model, num_classes, pretrained=False).to(device)
    placeholder = FeatureData(torch.zeros(cfg.batch_size, 1), torch.zeros(cfg.batch_size, dtype=torch.int64))
    trainer = Trainer(step_plan(exp, base, device), model, placeholder, placeholder)
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if trainer.channels_last else x
    y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
    states = sorted({trainable_blocks_for_epoch(exp.model, e, model.num_blocks) for e in range(max(cfg.epochs, 1))})
    for blocks in ([] if use_feature_cache(exp) else states):   # a cached-feature head: no backbone steps
        epoch = next(e for e in range(max(cfg.epochs, 1))
                     if trainable_blocks_for_epoch(exp.model, e, model.num_blocks) == blocks)
        apply_freeze(model, exp.model, epoch)
        model.train()
        out.train[blocks] = cfg.batch_size / _timed(lambda: trainer.train_step(x, y), device)
    model.eval()
    xe = torch.randn(cfg.eval_batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    xe = xe.contiguous(memory_format=torch.channels_last)      # as the predictor runs it
    model.to(memory_format=torch.channels_last)
    amp = torch.autocast(device.type, dtype=trainer.amp_dtype) if trainer.amp_dtype else contextlib.nullcontext()

    @torch.inference_mode()
    def forward() -> None:
        with amp:
            model(xe)

    torch.backends.cudnn.benchmark = False          # as the inference stages run
    out.infer = cfg.eval_batch_size / _timed(forward, device)
    return out


def train_floor(exp: Any, bare: Bare, record: dict, num_blocks: int) -> float:
    """Bare-compute seconds of a train stage: each fit and refit epoch's images at the rate of that epoch's freeze
    state, validation and feature-cache images at the inference rate (a cached-feature head costs ~nothing)."""
    from carbench.train.freeze import trainable_blocks_for_epoch

    seconds = (record["val_images"] + record["feature_images"]) / bare.infer
    if record["feature_images"]:
        return seconds
    for epochs, per_epoch in ((record["epochs"], record["train_per_epoch"]),
                              (record["refit_epochs"], record["refit_per_epoch"])):
        for epoch in range(epochs):
            seconds += per_epoch / bare.train[trainable_blocks_for_epoch(exp.model, epoch, num_blocks)]
    return seconds

