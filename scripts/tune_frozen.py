"""Tune a frozen-backbone experiment's head and k-NN settings on the validation split (never on test).

    python scripts/tune_frozen.py --overrides configs/overrides/dev98.yaml --crops data/crops \
        [--experiment tl_resnet50_frozen]

Reads params.yaml with the overrides file merged in (as `scripts/offline.py` runs it) and the crop store the
pipeline wrote (`data/crops`, after the `crop` stage ran with those overrides). The backbone features of train and
val are computed once (the engine's feature cache); then

* head: every combination of --lr / --epochs / --label-smoothing / --weight-decay trains the experiment's linear
  head on the cached train features (the engine's fit phase, as `train@` runs it), scored on val (best epoch);
* k-NN: gallery = train, queries = val, L2-normalised features stored as float16 (as `embed` stores them); every
  combination of k, metric, weighting and PCA size (plain and whitened) is scored (carbench.retrieval.knn).

Prints one JSON line per setting (val top-1) and, last, the best of each kind.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from carbench.core import cli  # noqa: E402
from carbench.config import experiment, parse_params  # noqa: E402
from carbench.retrieval.embedding_store import as_stored  # noqa: E402
from carbench.train.engine import RunIO, run_phase, setup_trainer, variant_trainer  # noqa: E402
from carbench.workshop.tuning import knn_scores, load_raw  # noqa: E402


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    p.add_argument("--overrides", default=None)
    p.add_argument("--crops", default=str(ROOT / "data" / "crops"))
    p.add_argument("--experiment", default="tl_resnet50_frozen")
    p.add_argument("--lr", default="0.001,0.003,0.01")
    p.add_argument("--epochs", default="30")
    p.add_argument("--label-smoothing", default="0.0,0.1")
    p.add_argument("--weight-decay", default="0.0001")
    p.add_argument("--k", default="1,3,5,7,10,15")
    p.add_argument("--pca", default="0,128,256")
    args = p.parse_args()
    params = parse_params(load_raw(Path(args.params), Path(args.overrides) if args.overrides else None))
    exp, base = experiment(params, args.experiment), params.base
    start = time.perf_counter()
    fit, meta = setup_trainer(exp, base, Path(args.crops))
    if not fit.feature_mode:
        raise SystemExit(f"{exp.name} does not train on cached features (frozen backbone, no augmentation)")
    print(json.dumps({"features_seconds": round(time.perf_counter() - start, 1), "batch_size": exp.train.batch_size, "train": len(fit.train_data),
                      "val": len(fit.val_data)}), flush=True)
    torch.set_num_threads(1)  # the head and the k-NN search are tiny: one thread is faster on a shared machine
    best: dict = {}

    def report(kind: str, row: dict) -> None:
        print(json.dumps({"kind": kind, **row}), flush=True)
        if row["val_top1"] > best.get(kind, {}).get("val_top1", -1.0):
            best[kind] = row

    for lr, epochs, ls, wd in itertools.product(floats(args.lr), floats(args.epochs), floats(args.label_smoothing),
                                                floats(args.weight_decay)):
        # patience 0: every setting trains all its epochs (the best of them is kept)
        cfg = dataclasses.replace(exp.train, lr=lr, epochs=int(epochs), label_smoothing=ls, weight_decay=wd,
                                  patience=0)
        trainer = variant_trainer(fit, dataclasses.replace(exp, train=cfg), meta.num_classes)
        tick = time.perf_counter()
        run_phase(trainer, RunIO(quiet=True))  # the engine's fit phase on the cached features, without files
        report("head", {"lr": lr, "epochs": int(epochs), "label_smoothing": ls, "weight_decay": wd,
                        "val_top1": trainer.state.best.top1, "best_epoch": trainer.state.best.epoch,
                        "seconds": round(time.perf_counter() - tick, 1)})

    def stored(data) -> np.ndarray:  # as the embed stage stores them (embed.l2_normalize of a retrieval experiment)
        return as_stored(data.features.cpu().numpy(), embed.l2_normalize)

    retrieval = next(e for e in params.experiments.values() if not e.trained)
    embed, knn = retrieval.embed, retrieval.knn
    gallery, queries = stored(fit.train_data), stored(fit.val_data)
    g_labels, q_labels = fit.train_data.labels.cpu().numpy(), fit.val_data.labels.cpu().numpy()
    grid = {"metric": ["euclidean", "cosine"], "pca_components": [int(v) for v in floats(args.pca)],
            "whiten": [False, True], "k": [int(v) for v in floats(args.k)], "weighting": ["uniform", "distance"]}
    for row in knn_scores(gallery, g_labels, queries, q_labels, knn, grid, meta.num_classes, base.seed):
        report("knn", row)
    print(json.dumps({"best": best}), flush=True)
    return 0


if __name__ == "__main__":
    cli.run_command(main)
