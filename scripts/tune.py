"""Tune trained experiments on the validation split (never on test): a grid of params overrides, scored on val.

    python scripts/tune.py --overrides configs/overrides/dev98.yaml --crops data/crops \
        --grid configs/grids/tune_dev98_round1.yaml [--jobs 4] [--only tl_resnet50_finetune] [--out tune.jsonl]

Reads params.yaml with the overrides file merged in (as `scripts/offline.py` runs it) and the crop store the
pipeline wrote (`data/crops`, after the `crop` stage ran with those overrides). The grid file lists runs:

    runs:
      - experiment: tl_resnet50_finetune
        set: {train.lr: 0.01, model.backbone_lr_mult: 1.0}       # applied to experiments.<name>
        vary: {train.lr: [0.005, 0.01, 0.02]}                    # one run per combination (optional)
        knn: {k: [3, 10], metric: [euclidean, cosine], pca_components: [0, 256], whiten: [false, true]}

Every run goes through `carbench.config` (a typo in a key fails loudly) and trains with the pipeline's own engine
(`carbench.train.engine`: its fit phase, and its refit and test predictions with `--test`), as `train@<name>` does,
keeping the best epoch on val. With `knn:`, the best model then
embeds train and val (backbone features, L2-normalised and stored as float16, as `embed@` does) and every k-NN
setting of the product is scored with train as the gallery and val as the queries (`carbench.retrieval.knn`).
`train.refit` is ignored here: a refitted model has no validation score.

`--jobs N` trains N runs at once in separate processes (on one GPU, small models leave it mostly idle otherwise).
Prints one JSON line per run (val top-1, best epoch, seconds) and, last, the best run of each experiment.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import dataclasses
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

from carbench.config import experiment, parse_params
from carbench.tuning import knn_scores, load_raw, product, with_settings  # noqa: E402

#: A long run reports its val top-1 to stderr every this many epochs.
PROGRESS_EVERY = 25


def expand(grid: dict, only: set[str]) -> list[dict]:
    """The grid file's runs, one per combination of ``vary``, as {experiment, settings, knn}."""
    runs = []
    for spec in grid.get("runs", []):
        unknown = set(spec) - {"experiment", "set", "vary", "knn"}
        if unknown:
            raise SystemExit(f"grid run {spec}: unknown keys {sorted(unknown)} (experiment, set, vary, knn)")
        if only and spec["experiment"] not in only:
            continue
        for combo in product(spec.get("vary") or {}):
            runs.append({"experiment": spec["experiment"], "settings": {**(spec.get("set") or {}), **combo},
                         "knn": spec.get("knn")})
    return runs


def base_knn(params: Any, name: str) -> Any:
    """The k-NN config the grid varies: that of a retrieval experiment embedded by ``name`` (else the first)."""
    retrieval = [e for e in params.experiments.values() if not e.trained]
    if not retrieval:
        raise SystemExit("a `knn:` grid needs a retrieval experiment in params (its k-NN settings are the base)")
    return next((e for e in retrieval if e.embedder == name), retrieval[0]).knn


def validate(raw: dict, runs: list[dict]) -> None:
    """Parse every run's params before any training starts, so a typo fails at once, not after an hour."""
    for run in runs:
        params = parse_params(with_settings(raw, run["experiment"], run["settings"]))
        experiment(params, run["experiment"])
        if run["knn"]:
            for combo in product(run["knn"]):
                dataclasses.replace(base_knn(params, run["experiment"]), **combo)


def score_knn(model: Any, trainer: Any, crops: Path, meta: Any, base_knn: Any, grid: dict, seed: int) -> list:
    """:func:`knn_scores` on the best model's embeddings (gallery train, queries val), L2-normalised and stored
    as float16 as the embed stage stores them."""
    from carbench.retrieval.embeddings import as_stored
    from carbench.train.batches import compute_features, load_split_data

    cfg, device, n = trainer.cfg, trainer.device, meta.num_classes
    feats = {}
    for split in ("train", "val"):
        data = load_split_data(crops, split, device, n, size=cfg.image_size)
        out = compute_features(model, data, cfg.image_size, cfg.eval_batch_size, device, trainer.plan.amp)
        feats[split] = (as_stored(out.features.cpu().numpy(), True), out.labels.cpu().numpy())
    return knn_scores(*feats["train"], *feats["val"], base_knn, dict(grid), n, seed)


def run_one(raw: dict, run: dict, crops: str, test: bool = False) -> dict:
    """Train one run (best epoch on val); with ``knn``, also score k-NN on its embeddings."""
    from carbench.train.engine import RunIO, run_phase, setup_trainer

    params = parse_params(with_settings(raw, run["experiment"], run["settings"]))
    exp, base = experiment(params, run["experiment"]), params.base
    start = time.perf_counter()
    trainer, meta = setup_trainer(exp, base, Path(crops))

    def progress(epoch: int, row: dict) -> None:
        if (epoch + 1) % PROGRESS_EVERY == 0 and epoch + 1 < exp.train.epochs:  # what a killed long run reached
            print(f"[tune] {exp.name} {run['settings']}: epoch {epoch + 1}/{exp.train.epochs} val top-1 "
                  f"{row['val/top1']:.4f} (best {trainer.state.best.top1:.4f})", file=sys.stderr, flush=True)

    run_phase(trainer, RunIO(on_epoch_end=progress, quiet=True))  # the engine's fit phase, without files
    best = trainer.state.best
    row = {"experiment": exp.name, "settings": run["settings"], "val_top1": round(best.top1, 4),
           "best_epoch": best.epoch, "epochs_run": trainer.state.epoch,
           "last_val_top1": round(trainer.state.history[-1]["val/top1"], 4) if trainer.state.history else None,
           "train_seconds": round(trainer.state.train_seconds, 1)}
    if run["knn"]:
        module = trainer.final_module()
        module.load_state_dict(best.state_dict)
        row["knn"] = score_knn(module, trainer, Path(crops), meta, base_knn(params, exp.name), run["knn"],
                              base.seed)
    if test:
        row["test"] = final_test(params, trainer, Path(crops), meta)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def final_test(params: Any, trainer: Any, crops: Path, meta: Any) -> dict:
    """``--test``: the experiment's final model (refitted on train+val when ``train.refit``, as `train@` does)
    scored on test like `evaluate@` (top-1, top-5, macro-F1), and every retrieval experiment it embeds for scored
    like `knn@` + `evaluate@` (gallery ``embed.gallery``, queries test)."""
    import numpy as np

    from carbench.report.evaluate import classification_metrics
    from carbench.retrieval.embeddings import Embeddings, as_stored
    from carbench.retrieval.knn import fit_knn
    from carbench.train.batches import compute_features, load_split_data
    from carbench.train.engine import RunIO, refit_phase

    exp, base, cfg, device = trainer.exp, params.base, trainer.cfg, trainer.device
    n, amp = meta.num_classes, trainer.plan.amp
    out: dict = {"refit_epochs": 0}
    refit = refit_phase(trainer, crops, meta, RunIO(quiet=True))  # the engine's refit, without files
    if refit is not None:
        model, out["refit_epochs"] = refit.final_module(), refit.cfg.epochs
    else:
        model = trainer.final_module()
        model.load_state_dict(trainer.state.best.state_dict)
    test = load_split_data(crops, "test", device, n, size=cfg.image_size)
    probs, labels = (refit or trainer).predict(model, test)
    metrics = classification_metrics(probs.numpy(), labels.numpy())
    out[exp.name] = {k: round(float(v), 4) for k, v in metrics.items()}
    raw_features: dict = {}  # split -> (backbone features, labels), computed once for every retrieval experiment
    for ret in (e for e in params.experiments.values() if not e.trained and e.embedder == exp.name):
        if ret.embed.layer != "backbone":  # compute_features gives the head's input, as embed.layer: backbone
            raise SystemExit(f"{ret.name}: --test scores embed.layer: backbone only, not {ret.embed.layer!r}")
        for split in ("train", "val", "test"):
            if split not in raw_features:
                data = load_split_data(crops, split, device, n, size=cfg.image_size)
                f = compute_features(model, data, cfg.image_size, cfg.eval_batch_size, device, amp)
                raw_features[split] = (f.features.cpu().numpy(), f.labels.cpu().numpy())
        feats = {split: (as_stored(x, ret.embed.l2_normalize), y) for split, (x, y) in raw_features.items()}
        parts = ("train", "val") if ret.embed.gallery == "train+val" else ("train",)
        emb = Embeddings(gallery=np.concatenate([feats[s][0] for s in parts]),
                         gallery_labels=np.concatenate([feats[s][1] for s in parts]),
                         gallery_split=np.concatenate([np.full(len(feats[s][1]), s) for s in parts]),
                         gallery_row=np.concatenate([np.arange(len(feats[s][1])) for s in parts]),
                         query=feats["test"][0], query_labels=feats["test"][1],
                         meta={"class_names": list(meta.class_names)})
        probs = fit_knn(emb, ret.knn, base.seed).predict_proba(emb.query)  # as knn@ fits and evaluate@ votes
        out[ret.name] = {k: round(float(v), 4) for k, v in classification_metrics(probs, emb.query_labels).items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    p.add_argument("--overrides", default=None, help="a YAML file merged over params.yaml (configs/overrides/dev98.yaml)")
    p.add_argument("--crops", default=str(ROOT / "data" / "crops"), help="the crop stage's store")
    p.add_argument("--grid", required=True, help="YAML file with `runs:` (see above)")
    p.add_argument("--only", default="", help="comma-separated experiments of the grid to run (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    p.add_argument("--test", action="store_true",
                   help="after tuning is over: also score each run's final model on test (see final_test)")
    args = p.parse_args()
    raw = load_raw(Path(args.params), Path(args.overrides) if args.overrides else None)
    runs = expand(yaml.safe_load(Path(args.grid).read_text()) or {}, {s for s in args.only.split(",") if s})
    validate(raw, runs)
    print(json.dumps({"runs": len(runs), "jobs": args.jobs}), flush=True)
    sink = open(args.out, "a") if args.out else None
    best: dict = {}

    def report(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()
        if row["val_top1"] > best.get(row["experiment"], {}).get("val_top1", -1.0):
            best[row["experiment"]] = row

    if args.jobs <= 1:
        for run in runs:
            report(run_one(raw, run, args.crops, args.test))
    else:
        spawn = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        with futures.ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            pending = [pool.submit(run_one, raw, run, args.crops, args.test) for run in runs]
            for done in futures.as_completed(pending):
                report(done.result())
    print(json.dumps({"best": best}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
