"""Training output besides the checkpoint: log lines on stderr, progress bars, the dvclive directory
(per-epoch metrics and the run summary) and the overlaid train/val curves for dvc.yaml's plots."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ..core.io import atomic_file
from ..model.carnet import count_parameters

#: Per-epoch metric names (dvclive), in logging order.
METRIC_KEYS = ("train/loss", "train/top1", "val/loss", "val/top1", "lr", "epoch_seconds", "images_per_second")
#: Logged after them when the epoch has them: the val retrieval scores of a retrieval selection (train.select).
OPTIONAL_KEYS = ("val/recall_at_1", "val/map_at_r")
#: Overlaid train/val curves written for dvc.yaml's top-level plots: file stem -> (train key, val key).
CURVES = {"top1": ("train/top1", "val/top1"), "loss": ("train/loss", "val/loss")}
#: Metrics that measure time and so differ between otherwise identical runs.
TIMING_KEYS = ("epoch_seconds", "images_per_second", "train_seconds")


def is_main_process() -> bool:
    """False in torchrun workers of rank > 0 (``RANK`` set and not 0): they log nothing, rank 0 speaks for all."""
    return os.environ.get("RANK", "0") == "0"


def say(message: str) -> None:
    """One progress/log line on stderr (stdout stays clean); nothing on torchrun ranks > 0."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- dvclive
def open_live(live_dir: Path, history: list) -> Any:
    """A fresh dvclive logger at ``live_dir`` with ``history`` (resumed epochs) replayed step by step."""
    from dvclive import Live

    shutil.rmtree(live_dir, ignore_errors=True)
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    for row in history:
        log_epoch(live, row)
    return live


class NoLive:
    """A dvclive logger that writes nothing (DDP ranks > 0, and runs without a dvclive directory)."""

    def __init__(self) -> None:
        self.summary: dict = {}

    def log_metric(self, name: str, value: float) -> None:
        pass

    def next_step(self) -> None:
        pass

    def end(self) -> None:
        pass


def log_epoch(live: Any, row: dict) -> None:
    """Log one epoch's metrics as one dvclive step."""
    for key in METRIC_KEYS:
        live.log_metric(key, float(row[key]))
    for key in OPTIONAL_KEYS:
        if key in row:
            live.log_metric(key, float(row[key]))
    live.next_step()


def write_curves(curves_dir: Path, name: str, history: list) -> None:
    """``curves_dir/{top1,loss}/<name>.tsv`` (columns step, train, val): train and val overlaid in one
    DVC plot per experiment (``plots:`` in dvc.yaml)."""
    for kind, (train_key, val_key) in CURVES.items():
        with atomic_file(curves_dir / kind / f"{name}.tsv") as handle:
            handle.write("step\ttrain\tval\n")
            for step, row in enumerate(history):
                handle.write(f"{step}\t{row[train_key]!r}\t{row[val_key]!r}\n")


def finish_live(live: Any, trainer: Any) -> dict:
    """Add the run summary of ``trainer`` (a :class:`carbench.train.trainer.Trainer`) to metrics.json and close
    the logger; returns the summary values."""
    st = trainer.state
    select = getattr(trainer, "select", "top1")
    chosen = st.history[st.best.epoch - 1] if 0 < st.best.epoch <= len(st.history) else {}
    # under a retrieval selection best.top1 holds that score: report the chosen epoch's top-1 beside it
    top1 = st.best.top1 if select == "top1" else chosen.get("val/top1", 0.0)
    summary = {"best_val_top1": max(top1, 0.0), "best_epoch": st.best.epoch,
               "params_count": count_parameters(trainer.model), "train_seconds": st.train_seconds,
               **(trainer.weights or {})}
    if select != "top1":
        summary.update({"selected_on": f"val/{select}", f"best_val_{select}": max(st.best.top1, 0.0)})
    if trainer.cfg.refit:  # epochs the final model was refitted for on train+val (0: none)
        summary["refit_epochs"] = st.best.epoch
    live.summary.update(summary)
    live.end()
    return summary


# ----------------------------------------------------------------------------- progress
class NoBar:
    """A progress bar that shows nothing (``progress_bar`` off a terminal; scripts and benchmarks)."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(epoch: int, epochs: int, steps: int) -> Any:
    """A tqdm bar on a terminal; nothing otherwise (one summary line per epoch is printed anyway)."""
    if not sys.stderr.isatty() or not is_main_process():
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr, unit="batch")


def epoch_line(name: str, epoch: int, epochs: int, row: dict, blocks: str) -> str:
    """The one summary line logged per epoch (``blocks``: trainable backbone blocks, or empty)."""
    return (f"[{name}] epoch {epoch + 1}/{epochs}: train loss {row['train/loss']:.4f} top1 {row['train/top1']:.4f}"
            f" | val loss {row['val/loss']:.4f} top1 {row['val/top1']:.4f}"
            + (f" R@1 {row['val/recall_at_1']:.4f} MAP@R {row['val/map_at_r']:.4f}" if "val/map_at_r" in row else "")
            + f" | lr {row['lr']:.3g}{blocks}"
            f" | {row['epoch_seconds']:.1f}s, {row['images_per_second']:.0f} img/s")


def refit_line(name: str, epoch: int, epochs: int, row: dict) -> str:
    """The line logged per refit epoch (no validation: the refit trains on train+val)."""
    return (f"[{name}] refit epoch {epoch + 1}/{epochs}: train loss {row['refit/loss']:.4f} top1 "
            f"{row['refit/top1']:.4f} | {row['epoch_seconds']:.1f}s")
