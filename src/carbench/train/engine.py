"""One training engine for every trained experiment (transfer and scratch).

``train_experiment(exp, base, crops_dir, out_dir, live_dir, resume_dir)`` trains ``exp`` on the crop store
and writes ``out_dir/best.pt`` (atomically: ``out_dir`` appears only once training finished) and the dvclive
directory ``live_dir`` (per-epoch ``train/loss``, ``train/top1``, ``val/loss``, ``val/top1``, ``lr``,
``epoch_seconds``, ``images_per_second``; summary ``metrics.json`` adds ``best_val_top1``, ``best_epoch``,
``params_count``, ``train_seconds``, and the strings ``weights_file`` / ``weights_sha256`` naming the pretrained
weights file training started from, also stored in ``best.pt``, so ``dvc metrics diff`` shows a change of
weights). Pretrained weights may be downloaded (torchvision's cache) unless ``base.offline`` forbids it.

Design: :func:`carbench.train.plan.make_plan` decides everything once (device, phases and seeds, feature cache,
augmentation, sizes, per-rank batch, weights); a :class:`carbench.train.trainer.Trainer` executes one phase;
this module sets each phase up (seeding once per phase, right before its model is built), runs its epochs in
one loop (:func:`run_phase`: ``fit`` validated, ``refit`` not), and writes the one checkpoint
(:func:`write_checkpoint`). The device data, batches and feature cache are :mod:`carbench.train.batches`; the
resume files and their format :mod:`carbench.train.resume`; dvclive, curves and progress output
:mod:`carbench.train.train_log`.

* Data: each split is placed once on the device (resident, resized once) or streamed from the memory-mapped
  store (:func:`carbench.train.batches.load_split_data`); batches come from seeded permutations: no DataLoader,
  no per-image Python. Augmentation runs batched on the device (:mod:`carbench.train.augment`).
* Frozen backbone + ``augment: none`` + ``train.feature_cache``: backbone features of train/val are
  computed once and only the head is trained on them (identical maths, orders of magnitude faster).
* channels-last memory (``train.channels_last``) on CPU and CUDA (1.25-1.4x faster training steps on a 2-core
  CPU for MobileNetV2 and the scratch CNNs). CUDA only: autocast (bf16 if supported, else fp16 with GradScaler),
  torch.compile, cuDNN autotuning of the full training batch (``train.cudnn_benchmark``).
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
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from ..core import timing
from ..config import BaseConfig, Experiment
from ..data.store import StoreMeta, load_meta
from ..core.errors import DataError
from ..core.io import atomic_dir
from ..model.build import build_model
from ..model.carnet import CarNet, count_parameters
from ..model.checkpoint import make_checkpoint, save_checkpoint
from ..model.weights import WEIGHTS_NONE
from ..core.runtime import seed_everything
from .batches import ConcatData, FeatureData, compute_features, load_split_data
from .distributed import SINGLE, Ddp, context
from .freeze import apply_freeze
from .plan import Phase, RunPlan, make_plan, use_feature_cache  # noqa: F401 (use_feature_cache: callers' import)
from .resume import BestSoFar, ResumeState, TrainState, load_resume, resume_key, save_resume
from .train_log import (NoBar, NoLive, epoch_line, finish_live, log_epoch, open_live, progress_bar, refit_line, say,
                        write_curves)
from .trainer import Trainer

PathLike = Union[str, os.PathLike]
EpochCallback = Callable[[int, dict], None]


# ----------------------------------------------------------------------------- setting a phase up
def phase_model(plan: RunPlan, phase: Phase, num_classes: int) -> CarNet:
    """The phase's fresh model (the plan's weights) with the first epoch's freezing; the one place training
    seeds: with the phase's seed, right before the model's init draws from it."""
    seed_everything(phase.seed)
    model = build_model(plan.exp.model, num_classes, pretrained=True, offline=plan.offline, spec=plan.weights)
    apply_freeze(model.to(plan.device), plan.exp.model, 0)
    return model


def setup_trainer(exp: Experiment, base: BaseConfig, crops_dir: PathLike, device: Optional[torch.device] = None,
                  ddp: Ddp = SINGLE) -> tuple[Trainer, StoreMeta]:
    """The fit phase's trainer: read the store, plan the run (``device``: instead of ``base.device``), build the
    model, optionally cache features; -> (trainer, meta)."""
    crops_dir = Path(crops_dir)
    meta = load_meta(crops_dir).trained()   # disjoint protocol: the train half's classes only
    plan = make_plan(exp, base, meta, ddp, device)
    device, cfg = plan.device, exp.train
    train = load_split_data(crops_dir, "train", device, meta.num_classes, size=plan.train_size)
    val = load_split_data(crops_dir, "val", device, meta.num_classes, size=cfg.resize_size or cfg.image_size)
    model = phase_model(plan, plan.fit, meta.num_classes)
    weights = plan.weights_record
    placement = (f"resident on the device at {train.images.shape[1]}px" if train.resident
                 else "streamed from the memory-mapped store")
    say(f"[{exp.name}] {exp.model.arch} ({count_parameters(model):,} params, {model.num_blocks} backbone blocks, "
        f"freeze {exp.model.freeze}) on {device}: train {len(train)} / val {len(val)} crops {train.source.shape[1]}px"
        f" -> {cfg.image_size}px, {placement}, augment {cfg.augment}; weights {weights['weights_file']}"
        + ("" if weights["weights_sha256"] == WEIGHTS_NONE else f" (sha256 {weights['weights_sha256'][:12]}...)"))
    if plan.feature_mode:
        say(f"[{exp.name}] feature cache: frozen backbone and no augmentation, so backbone features are computed "
            f"once and only the head is trained on them ({model.feature_dim}-d features)")
        train = compute_features(model, train, cfg.image_size, cfg.eval_batch_size, device, plan.amp, cfg.resize_size)
        val = compute_features(model, val, cfg.image_size, cfg.eval_batch_size, device, plan.amp, cfg.resize_size)
    if ddp.enabled:
        say(f"[{exp.name}] DDP: {ddp.world} rank(s), batch {plan.batch_size} per rank (global {cfg.batch_size})")
    return Trainer(plan, model, train, val), meta


def refit_trainer(fit: Trainer, crops_dir: PathLike, meta: StoreMeta) -> Trainer:
    """``train.refit``: a fresh trainer for train+val, ``train.epochs`` = the best epoch found with validation
    (its schedule spans those epochs), seeded with the refit phase's seed. The data are ``fit``'s (cached
    features, or the resident train crops plus val reloaded at the train crops' size)."""
    plan, epochs = fit.plan, fit.state.best.epoch
    model = phase_model(plan, plan.refit, meta.num_classes)
    if plan.feature_mode:
        train: Any = FeatureData(torch.cat([fit.train_data.features, fit.val_data.features]),
                                 torch.cat([fit.train_data.labels, fit.val_data.labels]))
    else:
        val = load_split_data(Path(crops_dir), "val", plan.device, meta.num_classes, size=plan.train_size)
        train = ConcatData([fit.train_data, val])
    say(f"[{plan.exp.name}] refit: training a fresh model on train+val ({len(train)} crops) for {epochs} epochs "
        f"(the best epoch on val)")
    return Trainer(plan, model, train, fit.val_data, plan.refit, epochs)


def variant_trainer(fit: Trainer, exp: Experiment, num_classes: int) -> Trainer:
    """A fresh fit of ``exp``, a variant of ``fit``'s experiment with other train settings (lr, epochs, loss),
    on ``fit``'s data (its cached features): tuning a head without computing features again."""
    plan = dataclasses.replace(fit.plan, exp=exp)
    return Trainer(plan, phase_model(plan, plan.fit, num_classes), fit.train_data, fit.val_data)


# ----------------------------------------------------------------------------- the loop
@dataclass
class RunIO:
    """Where a phase's epochs go: dvclive (validated phases), the resume file (``resume_path`` with ``key``;
    None: none), a callback after each epoch, and a log line per epoch unless ``quiet``."""

    live: Any = field(default_factory=NoLive)
    resume_path: Optional[Path] = None
    key: str = ""
    on_epoch_end: Optional[EpochCallback] = None
    quiet: bool = False


def run_phase(trainer: Trainer, io: RunIO, fit: Optional[TrainState] = None) -> None:
    """The phase's remaining epochs: train (and validate, log, stop early on patience when the phase is
    validated), save the resume state, call back. ``fit``: the fit phase's state while refitting (saved with the
    refit's resume state; the callback's epochs count on from it)."""
    name, epochs, offset = trainer.exp.name, trainer.cfg.epochs, fit.epoch if fit is not None else 0
    for epoch in range(trainer.state.epoch, epochs):
        if trainer.should_stop():
            if not io.quiet:
                say(f"[{name}] early stopping: no better val top-1 for {trainer.cfg.patience} epochs "
                    f"(best {trainer.state.best.top1:.4f} at epoch {trainer.state.best.epoch})")
            break
        bar = NoBar() if io.quiet else progress_bar(epoch, epochs, trainer.steps_per_epoch)
        try:
            row = trainer.run_epoch(epoch, bar)
        finally:
            bar.close()
        if trainer.phase.validated:
            log_epoch(io.live, row)
        if io.resume_path is not None:
            state = trainer.resume_state(io.key, fit)  # every rank: it gathers the ranks' random streams
            if trainer.ddp.main:
                save_resume(io.resume_path, state)
            trainer.ddp.barrier()  # the other ranks wait until it is written
        if not io.quiet:
            blocks = ("" if trainer.feature_mode
                      else f" | {trainer.model.trainable_blocks}/{trainer.model.num_blocks} blocks")
            say(epoch_line(name, epoch, epochs, row, blocks) if trainer.phase.validated
                else refit_line(name, epoch, epochs, row))
        if io.on_epoch_end is not None:
            io.on_epoch_end(offset + epoch, row)


def final_weights(trainer: Trainer, fit: TrainState) -> BestSoFar:
    """What the checkpoint holds: the fit phase's best epoch (``train.epochs: 0``: the initial model, scored on
    val), or a refit's final weights under the fit phase's choice of epoch and score (the refit validates
    nothing)."""
    if trainer.phase.validated:
        if fit.best.state_dict is None:
            fit.best = trainer.snapshot(trainer.evaluate()[1], 0)
        return fit.best
    return trainer.snapshot(fit.best.top1, fit.best.epoch)


def write_checkpoint(trainer: Trainer, best: BestSoFar, meta: StoreMeta, out_dir: Path) -> None:
    """Write ``out_dir/best.pt`` atomically: ``best``'s weights in ``trainer``'s model, with its phase's config
    (``refit: true`` after a refit)."""
    trainer.model.load_state_dict(best.state_dict)
    ckpt = make_checkpoint(trainer.model, trainer.exp.model, trainer.cfg, list(meta.class_names), best.epoch,
                           max(best.top1, 0.0), best.optimizer, best.scheduler, weights=trainer.weights,
                           data_source=meta.source)
    if not trainer.phase.validated:
        ckpt["refit"] = True
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(ckpt, tmp / "best.pt")


def record_timing(trainer: Trainer, refit: Optional[Trainer]) -> None:
    """The work this run did, for the benchmark's stage log (:mod:`carbench.core.timing`): epochs and images per epoch
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


# ----------------------------------------------------------------------------- the whole run
def refit_phase(fit: Trainer, crops_dir: PathLike, meta: StoreMeta, io: RunIO,
                saved: Optional[ResumeState] = None) -> Optional[Trainer]:
    """After the fit phase: the refit when planned and the fit found a best epoch (``saved``: an interrupted
    refit's resume state); returns the refit trainer, or None."""
    if fit.plan.refit is None or fit.state.best.epoch == 0:
        return None
    refit = refit_trainer(fit, crops_dir, meta)
    if saved is not None:
        refit.load_resume_state(saved)
    run_phase(refit, io, fit=fit.state)
    return refit


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
    trainer, meta = setup_trainer(exp, base, crops_dir, ddp=ddp)
    plan = trainer.plan
    key = resume_key(exp, base, plan.device, crops_dir, meta, plan.weights_record, ddp.world)
    resume_path = resume_dir / f"{exp.name}.pt"
    saved = load_resume(resume_path, key)
    refitting = saved is not None and saved.fit is not None
    if refitting:  # the fit phase finished before the interruption: restore its record, resume the refit
        trainer.state = saved.fit
        say(f"[{exp.name}] resuming the refit after epoch {saved.state.epoch} from {resume_path}")
    elif saved is not None:
        trainer.load_resume_state(saved)
        say(f"[{exp.name}] resuming after epoch {trainer.state.epoch} from {resume_path}")
    live = open_live(Path(live_dir), trainer.state.history) if ddp.main and live_dir is not None else NoLive()
    io = RunIO(live, resume_path, key, on_epoch_end)
    if not refitting:
        run_phase(trainer, io)
    refit = refit_phase(trainer, crops_dir, meta, io, saved if refitting else None)
    final = refit or trainer
    best = final_weights(final, trainer.state)
    if refit is not None:
        trainer.state.train_seconds += refit.state.train_seconds
    if ddp.main:
        write_checkpoint(final, best, meta, out_dir)
    record_timing(trainer, refit)
    summary = finish_live(live, trainer)
    if curves_dir is not None and ddp.main:
        write_curves(Path(curves_dir), exp.name, trainer.state.history)
    if ddp.main:
        resume_path.unlink(missing_ok=True)
    ddp.barrier()  # no rank leaves before the outputs are written
    chosen = summary.get("selected_on", "val/top1")   # train.select: the score that picked the epoch
    score = summary.get(f"best_{chosen.replace('/', '_')}", summary["best_val_top1"])
    say(f"[{exp.name}] best {chosen.replace('/', ' ')} {score:.4f} at epoch {summary['best_epoch']}; "
        f"wrote {out_dir / 'best.pt'}")
    return summary
