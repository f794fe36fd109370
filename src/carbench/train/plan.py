"""The run plan: what a training run decides before it trains, computed once (:func:`make_plan`) from the
experiment, the base config and the crop store's meta, and then only read.

It fixes the device (picked once: the rank's device under DDP, else ``base.device``), the phases and their seeds,
whether the head trains on cached features, the augmentation policy (its name validated once), the side the
training crops are kept at, the per-rank batch, mixed precision, and the pretrained weights (``model.weights``
resolved once, its file ensured and hashed once for the checkpoint and the metrics). The
:class:`carbench.train.trainer.Trainer` executes it; :mod:`carbench.train.engine` runs its phases.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import BaseConfig, Experiment, TrainConfig
from ..data.store import StoreMeta
from ..model.weights import WeightsSpec, ensure_weights_file, resolve_weights, spec_record
from ..core.runtime import cuda_settings, select_device
from .augment import AugmentPolicy, stored_size, train_policy
from .distributed import SINGLE, Ddp, local_batch_size

#: Seed offsets, so the shuffling and augmentation streams differ from each other and from init.
SHUFFLE_SEED_OFFSET = 1
AUGMENT_SEED_OFFSET = 2
MIX_SEED_OFFSET = 3
#: The refit (train.refit) runs with base.seed + this (model init, shuffling, augmentation).
REFIT_SEED_OFFSET = 1000


@dataclass(frozen=True)
class Phase:
    """One pass of training: ``fit`` (validated: best epoch, early stopping) or ``refit`` (train+val, not
    validated). ``seed`` seeds the model's init; the phase's random streams are offsets of it."""

    name: str
    seed: int
    validated: bool

    def shuffle_seed(self) -> int:
        """The same permutation on every rank."""
        return self.seed + SHUFFLE_SEED_OFFSET

    def augment_seed(self, rank: int) -> int:
        return self.seed + AUGMENT_SEED_OFFSET + rank

    def mix_seed(self, rank: int) -> int:
        return self.seed + MIX_SEED_OFFSET + rank


@dataclass(frozen=True)
class RunPlan:
    """Everything a training run of ``exp`` fixed before it started (see the module docstring)."""

    exp: Experiment
    offline: bool                        # base.offline: no weights download
    device: torch.device
    ddp: Ddp
    phases: tuple[Phase, ...]            # fit, then refit when train.refit
    feature_mode: bool                   # the head trains on cached backbone features
    policy: AugmentPolicy                # the training augmentation
    train_size: int                      # side the training crops are kept at on the device
    batch_size: int                      # per rank: train.batch_size / world
    amp: Optional[torch.dtype]           # autocast dtype (CUDA with train.amp), None = no autocast
    weights: WeightsSpec                 # model.weights, resolved
    weights_record: dict                 # its file name and sha256 (checkpoint, metrics)

    @property
    def cfg(self) -> TrainConfig:
        return self.exp.train

    @property
    def fit(self) -> Phase:
        return self.phases[0]

    @property
    def refit(self) -> Optional[Phase]:
        return self.phases[1] if len(self.phases) > 1 else None

    @property
    def channels_last(self) -> bool:
        """channels-last memory for image batches (cached features are not images)."""
        return self.cfg.channels_last and not self.feature_mode

    @property
    def compile(self) -> bool:
        return self.device.type == "cuda" and self.cfg.compile

    @property
    def cudnn_tune(self) -> bool:
        return self.device.type == "cuda" and self.cfg.cudnn_benchmark

    def experiment(self, phase: Phase, epochs: Optional[int] = None) -> Experiment:
        """The experiment ``phase`` trains: the refit runs ``epochs`` (the fit's best epoch) with no patience, and
        its checkpoint records that config."""
        if phase.validated:
            return self.exp
        return dataclasses.replace(self.exp, train=dataclasses.replace(self.exp.train, epochs=epochs, patience=0))


def use_feature_cache(exp: Experiment) -> bool:
    """Frozen backbone, no augmentation (no crop range, mixup or cutmix either) and ``train.feature_cache``: train
    the head on cached features."""
    t = exp.train
    return _feature_mode(exp, train_policy(t.augment, t.crop_scale, t.crop_ratio, t.crop_fraction))


def _feature_mode(exp: Experiment, policy: AugmentPolicy) -> bool:
    m, t = exp.model, exp.train
    return (m.freeze == "frozen" and not policy.geometric and t.augment == "none" and not t.randaugment
            and not t.mixing and t.feature_cache)


def amp_dtype(device: torch.device, enabled: bool) -> Optional[torch.dtype]:
    """bf16 when the GPU supports it, else fp16; None (no autocast) on CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def pick_device(name: str, ddp: Ddp) -> torch.device:
    """The rank's device under DDP (its process group chose it), else ``base.device``; CUDA settings either way."""
    if not ddp.enabled:
        return select_device(name)
    if ddp.device.type == "cuda":
        cuda_settings()
    return ddp.device


def phases(exp: Experiment, seed: int) -> tuple[Phase, ...]:
    fit = Phase("fit", seed, validated=True)
    return (fit, Phase("refit", seed + REFIT_SEED_OFFSET, validated=False)) if exp.train.refit else (fit,)


def make_plan(exp: Experiment, base: BaseConfig, meta: StoreMeta, ddp: Ddp = SINGLE,
              device: Optional[torch.device] = None) -> RunPlan:
    """The plan of training ``exp`` on a store with ``meta`` in this process (``ddp``); ``device`` overrides the
    choice (tests, benchmarks). Ensures a torchvision weights file is in the cache (downloaded unless
    ``base.offline``; under DDP by rank 0 first) and hashes it."""
    device = pick_device(base.device, ddp) if device is None else device
    policy = train_policy(exp.train.augment, exp.train.crop_scale, exp.train.crop_ratio, exp.train.crop_fraction)
    spec = resolve_weights(exp.model.arch, exp.model.weights)
    if spec.enum is not None:
        with ddp.main_first():  # DDP: rank 0 alone downloads the weights into the shared cache
            ensure_weights_file(spec.enum, offline=base.offline)
    return RunPlan(exp, base.offline, device, ddp, phases(exp, base.seed), _feature_mode(exp, policy), policy,
                   stored_size(policy, exp.train.randaugment, exp.train.image_size, meta.size),
                   local_batch_size(exp.train.batch_size, ddp.world), amp_dtype(device, exp.train.amp), spec,
                   spec_record(spec))


def step_plan(exp: Experiment, base: BaseConfig, device: torch.device) -> RunPlan:
    """A plan for timing training steps alone (benchmarks): no store and no weights file (random init)."""
    policy = train_policy(exp.train.augment, exp.train.crop_scale, exp.train.crop_ratio, exp.train.crop_fraction)
    none = WeightsSpec(exp.model.arch)
    return RunPlan(exp, base.offline, device, SINGLE, phases(exp, base.seed), False, policy, exp.train.image_size,
                   exp.train.batch_size, amp_dtype(device, exp.train.amp), none, spec_record(none))
