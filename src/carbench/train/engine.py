"""One training engine for every trained experiment (transfer and scratch).

``train_experiment(exp, base, crops_dir, out_dir, live_dir, resume_dir)`` trains ``exp`` on the crop store
and writes ``out_dir/best.pt`` (atomically: ``out_dir`` appears only once training finished) and the dvclive
directory ``live_dir`` (per-epoch ``train/loss``, ``train/top1``, ``val/loss``, ``val/top1``, ``lr``,
``epoch_seconds``, ``images_per_second``; summary ``metrics.json`` adds ``best_val_top1``, ``best_epoch``,
``params_count``, ``train_seconds``, and the strings ``weights_file`` / ``weights_sha256`` naming the pretrained
weights file training started from, also stored in ``best.pt``, so ``dvc metrics diff`` shows a change of
weights). Pretrained weights may be downloaded (torchvision's cache) unless ``base.offline`` forbids it.

Design (the pieces training uses live in their own modules: the device data, batches and feature cache in
:mod:`carbench.train.batches`, RNG capture and the resume files in :mod:`carbench.train.resume`, dvclive, curves and
progress output in :mod:`carbench.train.train_log`, seeding in :mod:`carbench.runtime`; this module is the
:class:`Trainer` and the run around it):

* Data: each split is placed once on the device (resident, resized once) or streamed from the memory-mapped
  store (:func:`carbench.train.batches.load_split_data`); batches come from seeded permutations: no DataLoader,
  no per-image Python. Augmentation runs batched on the device (:mod:`carbench.train.augment`).
* Frozen backbone + ``augment: none`` + ``train.feature_cache``: backbone features of train/val are
  computed once and only the head is trained on them (identical maths, orders of magnitude faster).
* channels-last memory (``train.channels_last``) on CPU and CUDA (1.25-1.4x faster training steps on a 2-core
  CPU for MobileNetV2 and the scratch CNNs). CUDA only: autocast (bf16 if supported, else fp16 with GradScaler),
  torch.compile, cuDNN autotuning of the full training batch (``train.cudnn_benchmark``). The CPU path runs the
  same code without them. Losses/correct counts accumulate on the device and are read once per epoch (no
  host-device sync per step).
* ``train/loss`` is the training objective (label smoothing / focal); ``val/loss`` is plain
  cross-entropy, comparable across experiments. ``lr`` is the head's lr at the epoch's last step.
* Resume: after every epoch the full training state (model, optimizer, schedule, scaler, every RNG and
  generator, best checkpoint so far, metric history) goes to ``resume_dir/<name>.pt``, keyed by a hash of
  the experiment config, seed, device type, the weights file's sha256 and the crop store's meta and file
  sizes (:func:`carbench.train.resume.resume_key`). A matching state is resumed (the dvclive files are rewritten
  from the saved history, so they end identical); a stale one is replaced. The file is deleted after
  success. On CPU a resumed run equals an uninterrupted one.
* DDP (a process group exists: torchrun workers, :mod:`carbench.train.distributed`): the model (or its head on
  cached features) trains in DistributedDataParallel, rebuilt when the trainable set changes (progressive or
  partial freezing); every rank draws the same permutation and trains its equal shard with batch_size / world;
  augmentation and mixing streams are seeded per rank; train and val metrics are summed over ranks (val is
  sharded); rank 0 alone writes the checkpoint, dvclive, curves and resume file (which keeps every rank's RNG).

Length: about 550 lines, over the ~350 the other modules keep to, because the :class:`Trainer` (~220 lines:
one epoch, one step, validation, its resume state) and the run around it (setup, fit, refit and the resume
phases of :func:`train_experiment`, ~270 lines) read and write the same trainer state; splitting them would
only spread that state over two modules (the DDP helpers live in :mod:`carbench.train.distributed`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F

from .. import timing
from .augment import BatchMixer, build_augmenter, stored_size, train_policy
from .batches import ConcatData, FeatureData, Order, batches, compute_features, load_split_data
from ..model.checkpoint import cpu_state, make_checkpoint, save_checkpoint
from ..config import BaseConfig, Experiment
from ..errors import DataError
from ..io import atomic_dir
from .losses import build_loss
from .freeze import apply_freeze
from ..model.build import build_model
from ..model.carnet import CarNet, count_parameters
from ..model.preprocess import eval_preprocess
from .optim import build_optimizer, build_scheduler, param_groups
from .resume import RESUME_FORMAT, capture_rng, load_resume_file, restore_rng, resume_key, save_resume_file
from ..runtime import generator, seed_everything, select_device
from ..data.store import load_meta
from .distributed import SINGLE, Ddp, context, local_batch_size
from .train_log import NoLive, epoch_line, finish_live, log_epoch, open_live, progress_bar, say, write_curves
from ..model.weights import WEIGHTS_NONE, weights_record

PathLike = Union[str, os.PathLike]
EpochCallback = Callable[[int, dict], None]

#: Seed offsets, so the shuffling and augmentation streams differ from each other and from init.
SHUFFLE_SEED_OFFSET = 1
AUGMENT_SEED_OFFSET = 2
MIX_SEED_OFFSET = 3
#: The refit (train.refit) runs with base.seed + this (model init, shuffling, augmentation).
REFIT_SEED_OFFSET = 1000
#: A last training batch smaller than this is dropped (BatchNorm cannot train on one sample).
MIN_TRAIN_BATCH = 2


def ema_update(decay: float) -> Callable:
    """``multi_avg_fn`` for AveragedModel: ``avg = decay * avg + (1 - decay) * current`` on float tensors
    (foreach lerp); integer buffers (BatchNorm's num_batches_tracked) are copied."""
    def update(averaged: list, current: list, num_averaged: torch.Tensor) -> None:
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - decay)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)
    return update


def make_ema(model: CarNet, decay: float) -> Optional[torch.optim.swa_utils.AveragedModel]:
    """``train.ema_decay > 0``: an exponential moving average of the weights and buffers (updated after every
    optimizer step; validated, chosen and saved instead of the raw weights). None when off."""
    if decay <= 0:
        return None
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_update(decay), use_buffers=True)


# ----------------------------------------------------------------------------- the trainer
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


class Trainer:
    """Trains one CarNet (or only its head on cached features) with the experiment's settings."""

    def __init__(self, exp: Experiment, base: BaseConfig, model: CarNet, train: Any, val: Any,
                 device: torch.device, feature_mode: bool, weights: Optional[dict] = None, ddp: Ddp = SINGLE) -> None:
        self.exp, self.cfg, self.model, self.device, self.ddp = exp, exp.train, model, device, ddp
        self.weights = weights  # weights_record of the pretrained weights (checkpoint and metrics)
        self.train_data, self.val_data, self.feature_mode = train, val, feature_mode
        # DDP: each rank takes batch_size / world of an equal shard, so the global batch stays train.batch_size
        self.batch_size = local_batch_size(self.cfg.batch_size, ddp.world)
        self.steps_per_epoch = batches_per_epoch(len(ddp.shard(torch.arange(len(train)), even=True)), self.batch_size)
        self.optimizer = build_optimizer(param_groups(model, exp.model, self.cfg), self.cfg)
        self.schedule = build_scheduler(self.optimizer, self.cfg, self.steps_per_epoch)
        self.criterion = build_loss(self.cfg)
        self.amp_dtype = amp_dtype(device, self.cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.channels_last = self.cfg.channels_last and not feature_mode
        self.cudnn_tune = device.type == "cuda" and self.cfg.cudnn_benchmark
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.forward = model.head if feature_mode else model
        if device.type == "cuda" and self.cfg.compile:
            self.forward = torch.compile(self.forward)
        self.train_forward, self.trainable = self.forward, trainable_names(model)  # DDP-wrapped under DDP
        if ddp.enabled:
            self.train_forward = self.wrap()
        self.shuffle_gen = generator(base.seed + SHUFFLE_SEED_OFFSET)  # the same permutation on every rank
        self.augment_gen = generator(base.seed + AUGMENT_SEED_OFFSET + ddp.rank, device)
        policy = train_policy(self.cfg.augment, self.cfg.crop_scale, self.cfg.crop_ratio)
        self.augment = build_augmenter(policy, self.cfg.randaugment, self.cfg.image_size,
                                       model.mean, model.std, self.augment_gen)
        self.mix_gen = generator(base.seed + MIX_SEED_OFFSET + ddp.rank)
        self.mixer = (BatchMixer(self.cfg.mixup_alpha, self.cfg.cutmix_alpha, model.num_classes, self.mix_gen)
                      if self.cfg.mixing else None)
        self.ema = make_ema(model, self.cfg.ema_decay)
        self.state = TrainState()
        self.last_lr = self.schedule.last_lr()

    def wrap(self) -> Callable:
        """The training forward under DDP: the model (its head on cached features) in DistributedDataParallel,
        compiled on CUDA when ``train.compile``."""
        wrapped = self.ddp.wrap(self.model.head if self.feature_mode else self.model)
        return torch.compile(wrapped) if self.device.type == "cuda" and self.cfg.compile else wrapped

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision on CUDA when ``train.amp``; nothing on CPU."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def final_module(self) -> CarNet:
        """The weights that are validated and saved: the EMA copy when ``train.ema_decay > 0``, else the model."""
        return self.model if self.ema is None else self.ema.module

    def prepare(self, raw: torch.Tensor, train: bool) -> torch.Tensor:
        """Raw batch -> model input: augmented/preprocessed images (or the cached features as they are)."""
        if self.feature_mode:
            return raw
        x = self.augment(raw) if train else eval_preprocess(raw, self.cfg.image_size, self.model.mean,
                                                            self.model.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_epoch(self, epoch: int, progress: Any) -> dict:
        """One pass over the training split (0-based ``epoch``); returns loss, top-1, images and seconds."""
        if not self.feature_mode:
            apply_freeze(self.model, self.exp.model, epoch)
            if self.ddp.enabled and trainable_names(self.model) != self.trainable:
                # DDP's reducer covers the parameters that required grad when it was built: build it anew
                self.train_forward, self.trainable = self.wrap(), trainable_names(self.model)
        self.model.train()
        start = time.perf_counter()
        perm = self.ddp.shard(torch.randperm(len(self.train_data), generator=self.shuffle_gen), even=True)
        order = Order.make(perm, self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        timing.first_batch()
        for raw, y in batches(self.train_data, order, self.batch_size, self.steps_per_epoch):
            x, target = self.prepare(raw, train=True), y
            if self.mixer is not None:  # soft targets; train/top1 still counts the unmixed labels
                x, target = self.mixer(x, y)
            loss, logits = self.train_step(x, target)
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            progress.update(1)
        seen_all = torch.tensor(float(seen), device=self.device)
        loss_total, correct_total, seen_total = self.ddp.sum(torch.stack([loss_sum, correct.float(), seen_all])).tolist()
        seen = int(seen_total)
        seconds = time.perf_counter() - start  # (the one sync above)
        return {"loss": loss_total / seen, "top1": correct_total / seen, "images": seen, "seconds": seconds}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward, optimizer and schedule step on one batch (``y``: labels (B,) or soft targets
        (B, C)); updates the EMA; returns (loss, logits)."""
        self.tune_cudnn(len(x) == self.batch_size)
        with self.autocast():
            logits = self.train_forward(x)
            loss = self.criterion(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.last_lr = self.schedule.last_lr()  # the lr this step uses (a Python float: no sync)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss, logits

    def tune_cudnn(self, on: bool) -> None:
        """cuDNN autotuning (``train.cudnn_benchmark``, CUDA) for the full training batch only: it tunes again
        for every new input shape, and the last partial batch or a validation batch is not worth a tuning run."""
        if self.cudnn_tune:
            torch.backends.cudnn.benchmark = on

    @torch.inference_mode()
    def evaluate(self) -> tuple[float, float]:
        """(val cross-entropy, val top-1) with batches of ``train.eval_batch_size``."""
        self.tune_cudnn(False)
        self.model.eval()
        module = self.final_module().eval()
        forward = self.forward if self.ema is None else (module.head if self.feature_mode else module)
        data, bs = self.val_data, self.cfg.eval_batch_size
        order = Order.make(self.ddp.shard(torch.arange(len(data)), even=False), self.device)  # DDP: a shard each
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for raw, y in batches(data, order, bs):
            with self.autocast():
                logits = forward(self.prepare(raw, train=False))
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        loss_total, correct_total = self.ddp.sum(torch.stack([loss_sum, correct.float()])).tolist()
        return loss_total / len(data), correct_total / len(data)

    def run_epoch(self, epoch: int, progress: Any) -> dict:
        """Train + validate one epoch, update best/history; returns the epoch's metric row."""
        stats = self.train_epoch(epoch, progress)
        self.ddp.broadcast_buffers(self.final_module())  # every rank validates rank 0's BatchNorm statistics
        val_loss, val_top1 = self.evaluate()
        self.schedule.epoch_end(val_top1)
        row = {"train/loss": stats["loss"], "train/top1": stats["top1"], "val/loss": val_loss,
               "val/top1": val_top1, "lr": self.last_lr, "epoch_seconds": stats["seconds"],
               "images_per_second": stats["images"] / stats["seconds"] if stats["seconds"] > 0 else 0.0}
        st = self.state
        st.epoch, st.train_seconds = epoch + 1, st.train_seconds + stats["seconds"]
        st.history.append(row)
        if val_top1 > st.best.top1:
            st.best = BestSoFar(val_top1, epoch + 1, cpu_state(self.final_module().state_dict()),
                                cpu_state(self.optimizer.state_dict()), self.schedule.state_dict())
        return row

    def should_stop(self) -> bool:
        """Early stopping: ``train.patience`` epochs without a new best val top-1 (0 = never)."""
        st = self.state
        return self.cfg.patience > 0 and st.best.epoch > 0 and st.epoch - st.best.epoch >= self.cfg.patience

    # ------------------------------------------------------------------ resume state
    def resume_state(self, key: str) -> dict:
        """Everything needed to continue bit-identically after the last completed epoch."""
        st = self.state
        return {"format": RESUME_FORMAT, "key": key, "epoch": st.epoch, "history": st.history,
                "train_seconds": st.train_seconds, "best": vars(st.best).copy(),
                "model": cpu_state(self.model.state_dict()), "optimizer": cpu_state(self.optimizer.state_dict()),
                "scheduler": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": capture_rng(), "shuffle_gen": self.shuffle_gen.get_state(),
                "augment_gen": self.augment_gen.get_state().cpu(), "mix_gen": self.mix_gen.get_state(),
                "ema": None if self.ema is None else cpu_state(self.ema.state_dict()),
                **({"ranks": self.ddp.gather(self.rank_streams())} if self.ddp.world > 1 else {})}

    def rank_streams(self) -> dict:
        """This rank's random streams (DDP: each rank's differ; the resume file keeps every rank's)."""
        return {"rng": capture_rng(), "augment_gen": self.augment_gen.get_state().cpu(),
                "mix_gen": self.mix_gen.get_state()}

    def load_resume_state(self, state: dict) -> None:
        """Restore :meth:`resume_state` output."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        streams = state["ranks"][self.ddp.rank] if "ranks" in state else state
        restore_rng(streams["rng"])
        self.shuffle_gen.set_state(state["shuffle_gen"])
        self.augment_gen.set_state(streams["augment_gen"])
        self.mix_gen.set_state(streams["mix_gen"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.state = TrainState(int(state["epoch"]), list(state["history"]), BestSoFar(**state["best"]),
                                float(state["train_seconds"]))


def trainable_names(model: torch.nn.Module) -> tuple[str, ...]:
    """Names of the parameters that require grad (DDP is rebuilt when they change)."""
    return tuple(name for name, p in model.named_parameters() if p.requires_grad)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """ceil(n / batch_size), minus a last batch smaller than MIN_TRAIN_BATCH (never below 1)."""
    full, rest = divmod(n, batch_size)
    return max(1, full + (1 if rest >= MIN_TRAIN_BATCH else 0))


def amp_dtype(device: torch.device, enabled: bool) -> Optional[torch.dtype]:
    """bf16 when the GPU supports it, else fp16; None (no autocast) on CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# ----------------------------------------------------------------------------- the whole run
def use_feature_cache(exp: Experiment) -> bool:
    """Frozen backbone, no augmentation (no crop range, mixup or cutmix either) and ``train.feature_cache``: train
    the head on cached features."""
    m, t = exp.model, exp.train
    return (m.freeze == "frozen" and not train_policy(t.augment, t.crop_scale, t.crop_ratio).geometric
            and t.augment == "none" and not t.randaugment and not t.mixing and t.feature_cache)


def train_stored_size(exp: Experiment, store_size: int) -> int:
    """Side the training crops are kept at on the device (:func:`carbench.train.augment.stored_size`)."""
    cfg = exp.train
    policy = train_policy("none" if use_feature_cache(exp) else cfg.augment, cfg.crop_scale, cfg.crop_ratio)
    return stored_size(policy, cfg.randaugment, cfg.image_size, store_size)


def setup_trainer(exp: Experiment, base: BaseConfig, crops_dir: Path, device: torch.device,
                  ddp: Ddp = SINGLE) -> tuple[Trainer, dict]:
    """Read the store, build the model (pretrained weights, downloaded unless ``base.offline``), record the
    weights file and its sha256 (read once), optionally cache features; -> (trainer, meta)."""
    meta = load_meta(crops_dir)
    num_classes, cfg = meta.num_classes, exp.train
    train_size = train_stored_size(exp, meta.size)
    train = load_split_data(crops_dir, "train", device, num_classes, size=train_size)
    val = load_split_data(crops_dir, "val", device, num_classes, size=cfg.image_size)
    with ddp.main_first():  # DDP: rank 0 alone downloads the weights into the shared cache
        model = build_model(exp.model, num_classes, pretrained=True, offline=base.offline).to(device)
    weights = weights_record(exp.model.arch, exp.model.weights)
    apply_freeze(model, exp.model, 0)
    feature_mode = use_feature_cache(exp)
    size = train.source.shape[1]
    placement = (f"resident on the device at {train.images.shape[1]}px" if train.resident
                 else "streamed from the memory-mapped store")
    say(f"[{exp.name}] {exp.model.arch} ({count_parameters(model):,} params, {model.num_blocks} backbone blocks, "
        f"freeze {exp.model.freeze}) on {device}: train {len(train)} / val {len(val)} crops {size}px -> "
        f"{cfg.image_size}px, {placement}, augment {cfg.augment}; weights {weights['weights_file']}"
        + ("" if weights["weights_sha256"] == WEIGHTS_NONE else f" (sha256 {weights['weights_sha256'][:12]}...)"))
    if feature_mode:
        say(f"[{exp.name}] feature cache: frozen backbone and no augmentation, so backbone features are computed "
            f"once and only the head is trained on them ({model.feature_dim}-d features)")
        amp = amp_dtype(device, cfg.amp)
        train = compute_features(model, train, cfg.image_size, cfg.eval_batch_size, device, amp)
        val = compute_features(model, val, cfg.image_size, cfg.eval_batch_size, device, amp)
    if ddp.enabled:
        say(f"[{exp.name}] DDP: {ddp.world} rank(s), batch {cfg.batch_size // ddp.world} per rank "
            f"(global {cfg.batch_size})")
    return Trainer(exp, base, model, train, val, device, feature_mode, weights, ddp), meta


def fit(trainer: Trainer, live: Any, resume_path: Path, key: str, on_epoch_end: Optional[EpochCallback]) -> None:
    """Run the remaining epochs: train, validate, log, save resume state, stop early on patience."""
    name, epochs = trainer.exp.name, trainer.cfg.epochs
    for epoch in range(trainer.state.epoch, epochs):
        if trainer.should_stop():
            say(f"[{name}] early stopping: no better val top-1 for {trainer.cfg.patience} epochs "
                f"(best {trainer.state.best.top1:.4f} at epoch {trainer.state.best.epoch})")
            break
        bar = progress_bar(epoch, epochs, trainer.steps_per_epoch)
        try:
            row = trainer.run_epoch(epoch, bar)
        finally:
            bar.close()
        log_epoch(live, row)
        save_resume(trainer, resume_path, trainer.resume_state(key))
        blocks = "" if trainer.feature_mode else f" | {trainer.model.trainable_blocks}/{trainer.model.num_blocks} blocks"
        say(epoch_line(name, epoch, epochs, row, blocks))
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)


def save_resume(trainer: Trainer, path: Path, state: dict) -> None:
    """Write the resume state (DDP: rank 0 writes, the others wait until it is written)."""
    if trainer.ddp.main:
        save_resume_file(path, state)
    trainer.ddp.barrier()


def keep_untrained_as_best(trainer: Trainer) -> None:
    """``train.epochs: 0``: the initial model is the best (epoch 0), scored on val."""
    _, top1 = trainer.evaluate()
    trainer.state.best = BestSoFar(top1, 0, cpu_state(trainer.final_module().state_dict()),
                                   cpu_state(trainer.optimizer.state_dict()), trainer.schedule.state_dict())


def write_best(trainer: Trainer, meta: dict, out_dir: Path) -> None:
    """Write ``out_dir/best.pt`` (the best epoch's weights) atomically."""
    best = trainer.state.best
    trainer.model.load_state_dict(best.state_dict)
    ckpt = make_checkpoint(trainer.model, trainer.exp.model, trainer.cfg, list(meta.class_names), best.epoch,
                           max(best.top1, 0.0), best.optimizer, best.scheduler, weights=trainer.weights,
                           data_source=meta.source)
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(ckpt, tmp / "best.pt")


# ----------------------------------------------------------------------------- refit on train+val
def refit_trainer(fit: Trainer, base: BaseConfig, crops_dir: Path, meta: dict) -> Trainer:
    """``train.refit``: a fresh trainer for train+val, ``train.epochs`` = the best epoch found with validation
    (its schedule spans those epochs), seeded with ``base.seed + REFIT_SEED_OFFSET``. The data are ``fit``'s
    (cached features, or the resident train crops plus val reloaded at the train crops' size)."""
    exp, device = fit.exp, fit.device
    epochs = fit.state.best.epoch
    refit_exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, epochs=epochs, patience=0))
    refit_base = dataclasses.replace(base, seed=base.seed + REFIT_SEED_OFFSET)
    seed_everything(refit_base.seed)
    model = build_model(exp.model, meta.num_classes, pretrained=True, offline=base.offline).to(device)
    apply_freeze(model, exp.model, 0)
    if fit.feature_mode:
        train: Any = FeatureData(torch.cat([fit.train_data.features, fit.val_data.features]),
                                 torch.cat([fit.train_data.labels, fit.val_data.labels]))
    else:
        val = load_split_data(crops_dir, "val", device, meta.num_classes,
                              size=train_stored_size(exp, meta.size))
        train = ConcatData([fit.train_data, val])
    say(f"[{exp.name}] refit: training a fresh model on train+val ({len(train)} crops) for {epochs} epochs "
        f"(the best epoch on val)")
    return Trainer(refit_exp, refit_base, model, train, fit.val_data, device, fit.feature_mode, fit.weights, fit.ddp)


def fit_record(trainer: Trainer) -> dict:
    """What the refit phase keeps of the fit phase (stored in its resume state)."""
    st = trainer.state
    return {"epoch": st.epoch, "history": st.history, "train_seconds": st.train_seconds,
            "best_top1": st.best.top1, "best_epoch": st.best.epoch}


def run_refit(trainer: Trainer, fit: dict, resume_path: Path, key: str,
              on_epoch_end: Optional[EpochCallback]) -> None:
    """The refit epochs still to run (no validation: val is part of the training data). Each epoch's resume
    state is the refit trainer's plus ``phase: refit`` and the fit phase's record."""
    name, epochs = trainer.exp.name, trainer.cfg.epochs
    for epoch in range(trainer.state.epoch, epochs):
        bar = progress_bar(epoch, epochs, trainer.steps_per_epoch)
        try:
            stats = trainer.train_epoch(epoch, bar)
        finally:
            bar.close()
        st = trainer.state
        st.epoch, st.train_seconds = epoch + 1, st.train_seconds + stats["seconds"]
        row = {"refit/loss": stats["loss"], "refit/top1": stats["top1"], "epoch_seconds": stats["seconds"]}
        st.history.append(row)
        save_resume(trainer, resume_path, {**trainer.resume_state(key), "phase": "refit", "fit": fit})
        say(f"[{name}] refit epoch {epoch + 1}/{epochs}: train loss {stats['loss']:.4f} top1 {stats['top1']:.4f}"
            f" | {stats['seconds']:.1f}s")
        if on_epoch_end is not None:
            on_epoch_end(fit["epoch"] + epoch, row)


def write_refit(trainer: Trainer, fit: dict, meta: dict, out_dir: Path) -> None:
    """Write the refit model (its EMA weights when on) as ``out_dir/best.pt``; ``epoch`` and ``best_val_top1``
    are the fit phase's choice (the refit itself has no validation)."""
    module = trainer.final_module()
    if module is not trainer.model:
        trainer.model.load_state_dict(module.state_dict())
    ckpt = make_checkpoint(trainer.model, trainer.exp.model, trainer.cfg, list(meta.class_names), fit["best_epoch"],
                           max(fit["best_top1"], 0.0), trainer.optimizer.state_dict(), trainer.schedule.state_dict(),
                           weights=trainer.weights, data_source=meta.source)
    ckpt["refit"] = True
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(ckpt, tmp / "best.pt")


def record_timing(trainer: Trainer, refit: Optional[Trainer]) -> None:
    """The work this run did, for the benchmark's stage log (:mod:`carbench.timing`): epochs and images per epoch
    of the fit and refit phases, validation images, backbone images of a feature cache, and the steady rate
    (median images/s of the fit epochs after the first, which pays for warm-up)."""
    if not timing.enabled():
        return
    epochs = trainer.state.epoch
    rates = sorted(row["images_per_second"] for row in trainer.state.history[1:epochs] if "images_per_second" in row)
    timing.record(epochs=epochs, train_per_epoch=len(trainer.train_data),
                  refit_epochs=refit.state.epoch if refit is not None else 0,
                  refit_per_epoch=len(refit.train_data) if refit is not None else 0,
                  val_images=epochs * len(trainer.val_data),
                  feature_images=len(trainer.train_data) + len(trainer.val_data) if trainer.feature_mode else 0,
                  steady_images_per_second=rates[len(rates) // 2] if rates else None)


def train_experiment(exp: Experiment, base: BaseConfig, crops_dir: PathLike, out_dir: PathLike,
                     live_dir: Optional[PathLike], resume_dir: PathLike = Path(".cache/resume"),
                     on_epoch_end: Optional[EpochCallback] = None, curves_dir: Optional[PathLike] = None) -> dict:
    """Train a transfer/scratch experiment; write ``out_dir/best.pt`` and the dvclive dir ``live_dir``.

    With ``curves_dir``, also ``curves_dir/{top1,loss}/<name>.tsv`` (:func:`carbench.train.train_log.write_curves`).
    ``on_epoch_end(epoch, row)`` (0-based epoch, metric row) runs after each epoch's resume state is
    saved (tests use it to interrupt a run). ``live_dir`` None: no dvclive directory. Inside a process group
    (torchrun workers, :mod:`carbench.train.distributed`) every rank trains its shard under DDP and rank 0 alone
    writes. Returns the summary (best_val_top1, best_epoch,
    params_count, train_seconds, weights_file, weights_sha256).
    """
    if not exp.trained:
        raise DataError(f"experiment {exp.name!r} is a {exp.config} experiment; only transfer/scratch ones train")
    crops_dir, out_dir, resume_dir = Path(crops_dir), Path(out_dir), Path(resume_dir)
    ddp = context()  # DDP when this process is one rank of a process group (carbench.train.distributed)
    device = select_device(base.device)  # also its CUDA settings (TF32, cuDNN) under DDP
    device = ddp.device if ddp.enabled else device
    seed_everything(base.seed)
    trainer, meta = setup_trainer(exp, base, crops_dir, device, ddp)
    key = resume_key(exp, base, device, crops_dir, meta, trainer.weights, ddp.world)
    resume_path = resume_dir / f"{exp.name}.pt"
    saved = load_resume_file(resume_path, key)
    refitting = saved is not None and saved.get("phase") == "refit"
    if refitting:  # the fit phase finished before the interruption: restore its record, resume the refit
        done = saved["fit"]
        trainer.state = TrainState(int(done["epoch"]), list(done["history"]),
                                   BestSoFar(float(done["best_top1"]), int(done["best_epoch"])),
                                   float(done["train_seconds"]))
        say(f"[{exp.name}] resuming the refit after epoch {int(saved['epoch'])} from {resume_path}")
    elif saved is not None:
        trainer.load_resume_state(saved)
        say(f"[{exp.name}] resuming after epoch {trainer.state.epoch} from {resume_path}")
    live = open_live(Path(live_dir), trainer.state.history) if ddp.main and live_dir is not None else NoLive()
    if not refitting:
        fit(trainer, live, resume_path, key, on_epoch_end)
    refit = None
    if exp.train.refit and trainer.state.best.epoch > 0:
        record = fit_record(trainer)
        refit = refit_trainer(trainer, base, crops_dir, meta)
        if refitting:
            refit.load_resume_state(saved)
        run_refit(refit, record, resume_path, key, on_epoch_end)
        trainer.state.train_seconds += refit.state.train_seconds
        if ddp.main:
            write_refit(refit, record, meta, out_dir)
    else:
        if trainer.state.best.state_dict is None:
            keep_untrained_as_best(trainer)
        if ddp.main:
            write_best(trainer, meta, out_dir)
    record_timing(trainer, refit)
    summary = finish_live(live, trainer)
    if curves_dir is not None and ddp.main:
        write_curves(Path(curves_dir), exp.name, trainer.state.history)
    if ddp.main:
        resume_path.unlink(missing_ok=True)
    ddp.barrier()  # no rank leaves before the outputs are written
    say(f"[{exp.name}] best val top1 {summary['best_val_top1']:.4f} at epoch {summary['best_epoch']}; "
        f"wrote {out_dir / 'best.pt'}")
    return summary
