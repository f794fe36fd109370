"""The train stage: train one transfer/scratch experiment on the crop store (:mod:`carbench.train.engine` does the work).

Writes ``models/<name>/best.pt``, the dvclive directory ``metrics/train/<name>`` and the train/val curves; an
interrupted run resumes from ``.cache/resume/<name>.pt`` (docs/train.md).
"""
from __future__ import annotations

from pathlib import Path

from ..config import BaseConfig, Experiment
from ..core.runtime import set_threads
from . import distributed


def run(base: BaseConfig, exp: Experiment, crops_dir: str | Path, out_dir: str | Path, live_dir: str | Path,
        curves_dir: str | Path, resume_dir: str | Path) -> dict:
    """Stage entry point (stages/train.py): set torch's threads, then train. ``base.gpus > 1`` or
    ``base.nodes > 1`` outside a torchrun worker: run this script again as ``base.gpus`` torchrun workers (on each of
    ``base.nodes`` nodes) and exit with their status."""
    if distributed.should_launch(base.gpus, base.nodes):
        # refuse before starting any process
        distributed.local_batch_size(exp.train.batch_size, base.gpus * base.nodes)
        raise SystemExit(distributed.launch(base.gpus, nodes=base.nodes, endpoint=base.rdzv_endpoint))
    set_threads(base.threads)  # not configure: the engine seeds once, with the plan's seed, before it builds the model
    from .engine import train_experiment  # after set_threads: torch threads are set before torch does work

    with distributed.session(base):  # a torchrun worker joins the process group (nothing otherwise)
        return train_experiment(exp, base, crops_dir, out_dir, live_dir, resume_dir, curves_dir=curves_dir)
