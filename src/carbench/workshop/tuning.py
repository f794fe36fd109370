"""Tuning on the validation split, behind scripts/tune.py and scripts/tune_frozen.py: params overrides per
experiment, grid files expanded and checked before any training, one run of a grid through the engine's fit phase
(the pipeline's own loop, not a copy), the val top-1 of every k-NN setting of a grid, and the final test scores of
``--test`` (the only place test is read)."""
from __future__ import annotations

import copy
import dataclasses
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from carbench.workshop.bench.overrides import deep_merge
from carbench.config import experiment, parse_params
from carbench.core.errors import UserError


def load_raw(params: Path, overrides: Path | None) -> dict:
    raw = yaml.safe_load(Path(params).read_text())
    if overrides:
        raw = deep_merge(raw, yaml.safe_load(Path(overrides).read_text()) or {})
    return raw


def with_settings(raw: dict, name: str, settings: dict) -> dict:
    """``raw`` with dotted ``settings`` (``train.lr: 0.01``) set under ``experiments.<name>``."""
    if name not in raw.get("experiments", {}):
        raise UserError(f"unknown experiment {name!r}; known: {', '.join(raw.get('experiments', {}))}")
    out = copy.deepcopy(raw)
    for key, value in settings.items():
        node = out["experiments"][name]
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def product(vary: dict) -> list[dict]:
    """Every combination of ``{key: [values]}`` (one empty combination when nothing varies)."""
    keys = list(vary)
    return [dict(zip(keys, values)) for values in itertools.product(*(vary[k] for k in keys))]


def knn_scores(gallery: Any, g_labels: Any, queries: Any, q_labels: Any, base_knn: Any, grid: dict,
               num_classes: int, seed: int) -> list:
    """Val top-1 of every k-NN setting of ``grid`` (``{KnnConfig field: [values]}`` over ``base_knn``) with
    ``gallery`` as the gallery and ``queries`` as the queries. Settings that differ only in ``k`` and
    ``weighting`` share one preprocessing fit and one search (exact search sorted by distance then gallery index:
    the k nearest are the first k of the largest k)."""
    import numpy as np
    import torch

    from carbench.retrieval.index import search
    from carbench.retrieval.knn import fit_preprocessing, vote

    grid = {"k": [base_knn.k], "weighting": [base_knn.weighting], **grid}
    ks, weightings = grid.pop("k"), grid.pop("weighting")
    rows = []
    for combo in product(grid):
        knn = dataclasses.replace(base_knn, **combo)
        if knn.whiten and not knn.pca_components:
            continue
        prep = fit_preprocessing(gallery, knn, seed)
        with torch.inference_mode():
            dist, idx = search(prep.apply(queries), prep.apply(gallery), max(ks), knn.metric)
        for k, weighting in itertools.product(ks, weightings):
            probs = vote(g_labels[idx[:, :k]], dist[:, :k], num_classes, weighting)
            rows.append({"k": k, "weighting": weighting, **combo,
                         "val_top1": float((np.asarray(probs).argmax(1) == q_labels).mean())})
    return rows


#: A long run reports its val top-1 to stderr every this many epochs.
PROGRESS_EVERY = 25


def expand(grid: dict, only: set[str]) -> list[dict]:
    """The grid file's runs, one per combination of ``vary``, as {experiment, settings, knn}."""
    runs = []
    for spec in grid.get("runs", []):
        unknown = set(spec) - {"experiment", "set", "vary", "knn"}
        if unknown:
            raise UserError(f"grid run {spec}: unknown keys {sorted(unknown)} (experiment, set, vary, knn)")
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
        raise UserError("a `knn:` grid needs a retrieval experiment in params (its k-NN settings are the base)")
    return next((e for e in retrieval if e.embedder == name), retrieval[0]).knn


def validate(raw: dict, runs: list[dict]) -> None:
    """Parse every run's params before any training starts, so a typo fails at once, not after an hour."""
    for run in runs:
        params = parse_params(with_settings(raw, run["experiment"], run["settings"]))
        experiment(params, run["experiment"])
        if run["knn"]:
            knn = base_knn(params, run["experiment"])
            unknown = set(run["knn"]) - {f.name for f in dataclasses.fields(knn)}
            if unknown:
                raise UserError(f"grid run of {run['experiment']}: unknown knn keys {sorted(unknown)} "
                                f"(known: {', '.join(f.name for f in dataclasses.fields(knn))})")


def score_knn(model: Any, trainer: Any, crops: Path, meta: Any, base_knn: Any, grid: dict, seed: int) -> list:
    """:func:`knn_scores` on the best model's embeddings (gallery train, queries val), L2-normalised and stored
    as float16 as the embed stage stores them."""
    from carbench.retrieval.embedding_store import as_stored
    from carbench.train.batches import compute_features, load_split_data

    cfg, device, n = trainer.cfg, trainer.device, meta.num_classes
    feats = {}
    for split in ("train", "val"):
        data = load_split_data(crops, split, device, n, size=cfg.resize_size or cfg.image_size)
        out = compute_features(model, data, cfg.image_size, cfg.eval_batch_size, device, trainer.plan.amp,
                               cfg.resize_size)
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
    from carbench.retrieval.embedding_store import Embeddings, as_stored
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
    test = load_split_data(crops, "test", device, n, size=cfg.resize_size or cfg.image_size)
    probs, labels = (refit or trainer).predict(model, test)
    metrics = classification_metrics(probs.numpy(), labels.numpy())
    out[exp.name] = {k: round(float(v), 4) for k, v in metrics.items()}
    raw_features: dict = {}  # split -> (backbone features, labels), computed once for every retrieval experiment
    for ret in (e for e in params.experiments.values() if not e.trained and e.embedder == exp.name):
        if ret.embed.layer != "backbone":  # compute_features gives the head's input, as embed.layer: backbone
            raise UserError(f"{ret.name}: --test scores embed.layer: backbone only, not {ret.embed.layer!r}")
        for split in ("train", "val", "test"):
            if split not in raw_features:
                data = load_split_data(crops, split, device, n, size=cfg.resize_size or cfg.image_size)
                f = compute_features(model, data, cfg.image_size, cfg.eval_batch_size, device, amp, cfg.resize_size)
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
