"""Tuning on the validation split, shared by scripts/tune.py and scripts/tune_frozen.py: params overrides per
experiment, grids of settings, and the val top-1 of every k-NN setting of a grid (never the test split)."""
from __future__ import annotations

import copy
import dataclasses
import itertools
from pathlib import Path
from typing import Any

import yaml


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base`` (nested dicts key by key; anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_raw(params: Path, overrides: Path | None) -> dict:
    raw = yaml.safe_load(Path(params).read_text())
    if overrides:
        raw = merge(raw, yaml.safe_load(Path(overrides).read_text()) or {})
    return raw


def with_settings(raw: dict, name: str, settings: dict) -> dict:
    """``raw`` with dotted ``settings`` (``train.lr: 0.01``) set under ``experiments.<name>``."""
    if name not in raw.get("experiments", {}):
        raise SystemExit(f"unknown experiment {name!r}; known: {', '.join(raw.get('experiments', {}))}")
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
