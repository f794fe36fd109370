"""Check the DDP training path against the plain one on a GPU machine (needs torch, no dvc or dvclive).

Trains one experiment on a crop store three ways and compares best val top-1:

1. plainly, in one process (no process group);
2. under torchrun with one process: the DDP code path with world size 1 (the worker checks it is inside a process
   group and the engine wraps the model in DistributedDataParallel);
3. under torchrun with N processes when N > 1 GPUs are visible (``--nproc`` to choose; on CPU, gloo processes).

Prints each val top-1 and the differences to the plain run; exits 1 when one exceeds ``--tolerance``.

    python scripts/ddp_check.py --crops data/crops --name tl_resnet50_finetune --epochs 3
    python scripts/ddp_check.py --crops /tmp/tiny --name cnn_basic --epochs 2 --device cpu --nproc 2   # CPU smoke

It imports the installed ``carbench``; on a machine without ``pip install -e .`` run it with ``PYTHONPATH=src``
(the torchrun workers inherit it).

Worker mode (``--worker``, started by this script under torchrun) trains and writes its summary as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def experiment(args: argparse.Namespace):
    """(base, exp) from ``--params`` with the command line's device, epochs and batch size."""
    from carbench.config import experiment as pick, load_params

    params = load_params(args.params)
    exp = pick(params, args.name)
    train = {"epochs": args.epochs, **({"batch_size": args.batch_size} if args.batch_size else {})}
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, **train))
    return dataclasses.replace(params.base, device=args.device), exp


def train(args: argparse.Namespace, out: Path) -> dict:
    """Train once (in a process group when run under torchrun); rank 0 writes ``out/summary.json``."""
    from carbench.core.runtime import configure
    from carbench.train import distributed
    from carbench.train.engine import train_experiment

    base, exp = experiment(args)
    configure(base.seed, base.threads)
    with distributed.session(base):
        ddp = distributed.context()
        summary = train_experiment(exp, base, args.crops, out / "model", None, resume_dir=out / "resume")
        if ddp.main:
            record = {"best_val_top1": summary["best_val_top1"], "ddp": ddp.enabled, "world": ddp.world}
            (out / "summary.json").write_text(json.dumps(record))
    return summary


def torchrun(args: argparse.Namespace, nproc: int, out: Path) -> dict:
    """This script's worker mode under ``torchrun --nproc_per_node=nproc``; its summary."""
    from carbench.train.distributed import launch_command

    argv = [__file__, "--worker", str(out), "--crops", args.crops, "--name", args.name, "--params", args.params,
            "--epochs", str(args.epochs), "--device", args.device]
    argv += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
    status = subprocess.call(launch_command(nproc, argv), env=env)
    if status != 0:
        sys.exit(f"torchrun with {nproc} process(es) failed (exit status {status})")
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crops", required=True, help="crop store directory")
    p.add_argument("--name", required=True, help="a trained experiment of --params")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=0, help="global batch (0: the experiment's)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--nproc", type=int, default=0, help="processes of the multi-process run (0: visible GPUs)")
    p.add_argument("--tolerance", type=float, default=0.02, help="largest |val top-1 difference| accepted")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        train(args, Path(args.worker))
        return
    import torch

    nproc = args.nproc or (torch.cuda.device_count() if args.device != "cpu" else 0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ddp_check-") as tmp:
        results["plain"] = {"best_val_top1": train(args, Path(tmp) / "plain")["best_val_top1"], "ddp": False}
        runs = [1] + ([nproc] if nproc > 1 else [])
        for n in runs:
            (Path(tmp) / f"ddp{n}").mkdir()
            record = torchrun(args, n, Path(tmp) / f"ddp{n}")
            if not record["ddp"] or record["world"] != n:
                sys.exit(f"torchrun --nproc_per_node={n} did not train under DDP with world {n}: {record}")
            results[f"torchrun x{n}"] = record
    if nproc <= 1:
        print(f"only {max(nproc, 1)} GPU visible: no multi-process run (pass --nproc)")
    plain, worst = results["plain"]["best_val_top1"], 0.0
    for label, record in results.items():
        diff = record["best_val_top1"] - plain
        worst = max(worst, abs(diff))
        print(f"{label:>14}: val top-1 {record['best_val_top1']:.4f}  (difference to plain {diff:+.4f})")
    if worst > args.tolerance:
        sys.exit(f"FAIL: a DDP run differs from the plain one by {worst:.4f} > tolerance {args.tolerance}")
    print(f"OK: every difference <= {args.tolerance}")


if __name__ == "__main__":
    main()
