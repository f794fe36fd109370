"""The :class:`Trainer`: one phase of a :class:`carbench.train.plan.RunPlan` on one model (or only its head on
cached features): one epoch, one step, validation, the predictions of a split, and its resume state.

Losses/correct counts accumulate on the device and are read once per epoch (no host-device sync per step).
``train/loss`` is the training objective (label smoothing / focal); ``val/loss`` is plain cross-entropy,
comparable across experiments. ``lr`` is the head's lr at the epoch's last step.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from ..core import timing
from ..core.errors import DataError
from ..model.carnet import CarNet
from ..model.checkpoint import cpu_state
from ..model.preprocess import eval_preprocess
from ..core.runtime import generator
from .augment import BatchMixer, build_augmenter
from .batches import BatchSource, Order, batches
from .freeze import apply_freeze
from . import selection
from .losses import build_loss
from .metric_losses import EmbeddingForward, build_criterion, freeze_batchnorm, loss_param_groups
from .optim import build_optimizer, build_scheduler, param_groups
from .plan import Phase, RunPlan
from .resume import BestSoFar, ResumeState, Streams, TrainState, capture_rng, restore_rng
from .sampler import m_per_class_order

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


def trainable_names(model: torch.nn.Module) -> tuple[str, ...]:
    """Names of the parameters that require grad (DDP is rebuilt when they change)."""
    return tuple(name for name, p in model.named_parameters() if p.requires_grad)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """ceil(n / batch_size), minus a last batch smaller than MIN_TRAIN_BATCH (never below 1)."""
    full, rest = divmod(n, batch_size)
    return max(1, full + (1 if rest >= MIN_TRAIN_BATCH else 0))


class Trainer:
    """Trains ``model`` (its head alone on cached features) for one phase of ``plan``; ``epochs``: the refit's
    epoch count (the fit phase's best epoch)."""

    def __init__(self, plan: RunPlan, model: CarNet, train: BatchSource, val: BatchSource,
                 phase: Optional[Phase] = None, epochs: Optional[int] = None) -> None:
        self.plan, self.phase = plan, phase or plan.fit
        self.exp = plan.experiment(self.phase, epochs)
        self.cfg, self.model, self.device, self.ddp = self.exp.train, model, plan.device, plan.ddp
        self.train_data, self.val_data, self.feature_mode = train, val, plan.feature_mode
        self.batch_size = plan.batch_size
        # DDP: each rank takes an equal shard, so every rank runs the same number of steps
        self.steps_per_epoch = batches_per_epoch(len(self.ddp.shard(torch.arange(len(train)), even=True)),
                                                 self.batch_size)
        groups = param_groups(model, self.exp.model, self.cfg)
        if self.cfg.metric_loss:   # the embedding trains with the metric loss, its proxies in their own group
            if self.ddp.enabled:
                raise DataError("a metric-learning train.loss runs in one process (base.gpus: 1): its proxies are "
                                "not synchronised across DDP ranks")
            self.criterion: torch.nn.Module = build_criterion(self.cfg, model.num_classes,
                                                              model.embedding_dim).to(self.device)
            groups += loss_param_groups(self.criterion, self.cfg)
        else:
            self.criterion = build_loss(self.cfg)
        self.optimizer = build_optimizer(groups, self.cfg)
        self.schedule = build_scheduler(self.optimizer, self.cfg, self.steps_per_epoch)
        # which val score picks the best epoch: top1 only where the val photos' classes are trained
        self.select = selection.resolve(self.cfg.select, bool(torch.isin(val.labels, train.labels).any()))
        self.amp_dtype = plan.amp
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.channels_last, self.cudnn_tune = plan.channels_last, plan.cudnn_tune
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.forward = model.head if self.feature_mode else model
        if plan.compile:
            self.forward = torch.compile(self.forward)
        self.train_forward, self.trainable = self.forward, trainable_names(model)  # DDP-wrapped under DDP
        if self.cfg.metric_loss:   # -> (embedding, probe logits)
            self.train_forward = EmbeddingForward(model, head_only=self.feature_mode)
            if plan.compile:
                self.train_forward = torch.compile(self.train_forward)
        if self.ddp.enabled:
            self.train_forward = self.wrap()
        rank = self.ddp.rank
        self.shuffle_gen = generator(self.phase.shuffle_seed())
        self.augment_gen = generator(self.phase.augment_seed(rank), self.device)
        self.augment = build_augmenter(plan.policy, self.cfg.randaugment, self.cfg.image_size,
                                       model.mean, model.std, self.augment_gen)
        self.mix_gen = generator(self.phase.mix_seed(rank))
        self.mixer = (BatchMixer(self.cfg.mixup_alpha, self.cfg.cutmix_alpha, model.num_classes, self.mix_gen)
                      if self.cfg.mixing else None)
        self.ema = make_ema(model, self.cfg.ema_decay)
        self.state = TrainState()
        self.last_lr = self.schedule.last_lr()

    @property
    def weights(self) -> dict:
        """The pretrained weights' record (checkpoint and metrics)."""
        return self.plan.weights_record

    def wrap(self) -> Callable:
        """The training forward under DDP: the model (its head on cached features) in DistributedDataParallel,
        compiled on CUDA when ``train.compile``."""
        wrapped = self.ddp.wrap(self.model.head if self.feature_mode else self.model)
        return torch.compile(wrapped) if self.plan.compile else wrapped

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision on CUDA when ``train.amp``; nothing on CPU."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def final_module(self) -> CarNet:
        """The weights that are validated and saved: the EMA copy when ``train.ema_decay > 0``, else the model."""
        return self.model if self.ema is None else self.ema.module

    def snapshot(self, top1: float, epoch: int) -> BestSoFar:
        """The current final weights, optimizer and schedule as the checkpoint of ``epoch`` scoring ``top1``."""
        return BestSoFar(top1, epoch, cpu_state(self.final_module().state_dict()),
                         cpu_state(self.optimizer.state_dict()), self.schedule.state_dict())

    def prepare(self, raw: torch.Tensor, train: bool) -> torch.Tensor:
        """Raw batch -> model input: augmented/preprocessed images (or the cached features as they are)."""
        if self.feature_mode:
            return raw
        x = self.augment(raw) if train else eval_preprocess(raw, self.cfg.image_size, self.model.mean,
                                                            self.model.std, self.cfg.resize_size)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # ------------------------------------------------------------------ one epoch
    def run_epoch(self, epoch: int, progress: Any) -> dict:
        """Train one epoch (0-based ``epoch``), validate it when the phase is validated (then update the best
        epoch); updates state and history; returns the epoch's metric row."""
        stats = self.train_epoch(epoch, progress)
        st = self.state
        if not self.phase.validated:  # the refit: val is part of its training data
            row = {"refit/loss": stats["loss"], "refit/top1": stats["top1"], "epoch_seconds": stats["seconds"]}
        else:
            self.ddp.broadcast_buffers(self.final_module())  # every rank validates rank 0's BatchNorm statistics
            val_loss, val_top1 = self.evaluate()
            row = {"train/loss": stats["loss"], "train/top1": stats["top1"], "val/loss": val_loss,
                   "val/top1": val_top1, "lr": self.last_lr, "epoch_seconds": stats["seconds"],
                   "images_per_second": stats["images"] / stats["seconds"] if stats["seconds"] > 0 else 0.0}
            if self.select != "top1":
                row.update(self.val_retrieval())
            self.schedule.epoch_end(selection.score(row, self.select))
        st.epoch, st.train_seconds = epoch + 1, st.train_seconds + stats["seconds"]
        st.history.append(row)
        # BestSoFar.top1 holds the selection score (val top-1 unless train.select says otherwise)
        if self.phase.validated and selection.score(row, self.select) > st.best.top1:
            st.best = self.snapshot(selection.score(row, self.select), epoch + 1)
        return row

    def train_epoch(self, epoch: int, progress: Any) -> dict:
        """One pass over the training split (0-based ``epoch``); returns loss, top-1, images and seconds."""
        if not self.feature_mode:
            apply_freeze(self.model, self.exp.model, epoch)
            if self.cfg.freeze_bn:
                freeze_batchnorm(self.model)
            if self.ddp.enabled and trainable_names(self.model) != self.trainable:
                # DDP's reducer covers the parameters that required grad when it was built: build it anew
                self.train_forward, self.trainable = self.wrap(), trainable_names(self.model)
        self.model.train()
        if self.cfg.freeze_bn:
            freeze_batchnorm(self.model)
        start = time.perf_counter()
        if self.cfg.sampler == "m_per_class":
            drawn = m_per_class_order(self.train_data.labels, self.cfg.m_per_class, self.cfg.batch_size,
                                      self.steps_per_epoch, self.shuffle_gen)
        else:
            drawn = torch.randperm(len(self.train_data), generator=self.shuffle_gen)
        perm = self.ddp.shard(drawn, even=True)
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
            output = self.train_forward(x)
            loss = self.criterion(output, y)
        logits = output[1] if isinstance(output, tuple) else output   # a metric loss's: (embedding, probe logits)
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

    def should_stop(self) -> bool:
        """Early stopping: ``train.patience`` epochs without a new best val top-1 (0 = never; the refit's)."""
        st = self.state
        return self.cfg.patience > 0 and st.best.epoch > 0 and st.epoch - st.best.epoch >= self.cfg.patience

    # ------------------------------------------------------------------ evaluation
    def logits(self, forward: Callable, data: BatchSource, order: Order,
               prepare: Callable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, labels) per batch of ``train.eval_batch_size``, under autocast (call in inference mode)."""
        for raw, y in batches(data, order, self.cfg.eval_batch_size):
            with self.autocast():
                logits = forward(prepare(raw))
            yield logits, y

    @torch.inference_mode()
    def evaluate(self) -> tuple[float, float]:
        """(val cross-entropy, val top-1)."""
        self.tune_cudnn(False)
        self.model.eval()
        module = self.final_module().eval()
        forward = self.forward if self.ema is None else (module.head if self.feature_mode else module)
        data = self.val_data
        order = Order.make(self.ddp.shard(torch.arange(len(data)), even=False), self.device)  # DDP: a shard each
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for logits, y in self.logits(forward, data, order, lambda raw: self.prepare(raw, train=False)):
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        loss_total, correct_total = self.ddp.sum(torch.stack([loss_sum, correct.float()])).tolist()
        return loss_total / len(data), correct_total / len(data)

    @torch.inference_mode()
    def val_retrieval(self) -> dict[str, float]:
        """Leave-one-out ``val/recall_at_1`` and ``val/map_at_r`` among the val photos, on the embedding the
        retrieval experiments use (the head's L2-normalised projection, else the backbone features)."""
        module = self.final_module().eval()
        embed = module.head.penultimate if module.embedding_dim else (lambda f: f)
        chunks = []
        for raw, _ in batches(self.val_data, Order.make(torch.arange(len(self.val_data)), self.device),
                              self.cfg.eval_batch_size):
            x = self.prepare(raw, train=False)
            with self.autocast():
                chunks.append(embed(x if self.feature_mode else module.features(x)).float())
        return selection.loo_retrieval(torch.cat(chunks), self.val_data.labels)

    @torch.inference_mode()
    def predict(self, module: CarNet, data: BatchSource) -> tuple[torch.Tensor, torch.Tensor]:
        """(softmax probabilities (N, C) float32, labels (N,)) of the whole ``module`` on an image split (e.g.
        test), on the CPU, preprocessed as for inference (NCHW input, as the predictor feeds it)."""
        module.eval()
        size, mean, std, resize_size = self.cfg.image_size, module.mean, module.std, self.cfg.resize_size
        chunks, labels = [], []
        for logits, y in self.logits(module, data, Order.make(torch.arange(len(data)), self.device),
                                     lambda raw: eval_preprocess(raw, size, mean, std, resize_size)):
            chunks.append(torch.softmax(logits.float(), 1).cpu())
            labels.append(y.cpu())
        return torch.cat(chunks), torch.cat(labels)

    # ------------------------------------------------------------------ resume state
    def streams(self) -> Streams:
        """This rank's random streams (DDP: each rank's differ)."""
        return Streams(capture_rng(), self.augment_gen.get_state().cpu(), self.mix_gen.get_state())

    def resume_state(self, key: str, fit: Optional[TrainState] = None) -> ResumeState:
        """Everything needed to continue bit-identically after the last completed epoch (``fit``: the fit
        phase's state, saved with a refit's). Collective under DDP with several ranks: every rank calls it."""
        ranks = self.ddp.gather(self.streams()) if self.ddp.world > 1 else None
        return ResumeState(key, self.state, cpu_state(self.model.state_dict()),
                           cpu_state(self.optimizer.state_dict()), self.schedule.state_dict(),
                           self.scaler.state_dict(), self.shuffle_gen.get_state(), self.streams(),
                           None if self.ema is None else cpu_state(self.ema.state_dict()), ranks, fit,
                           cpu_state(self.criterion.state_dict()) if self.cfg.metric_loss else None)

    def load_resume_state(self, saved: ResumeState) -> None:
        """Restore :meth:`resume_state` output."""
        self.model.load_state_dict(saved.model)
        self.optimizer.load_state_dict(saved.optimizer)
        self.schedule.load_state_dict(saved.scheduler)
        self.scaler.load_state_dict(saved.scaler)
        streams = saved.streams_of(self.ddp.rank)
        restore_rng(streams.rng)
        self.shuffle_gen.set_state(saved.shuffle_gen)
        self.augment_gen.set_state(streams.augment_gen)
        self.mix_gen.set_state(streams.mix_gen)
        if self.ema is not None:
            self.ema.load_state_dict(saved.ema)
        if saved.loss is not None:
            self.criterion.load_state_dict(saved.loss)
        self.state = saved.state
