"""A tiny retrieval world: a crop store of coloured classes, a tiny scratch-CNN checkpoint, and the embed + knn
stages run on them (for the embed, knn, evaluate, predictor and predict tests)."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml

from carbench.config import ModelConfig, TrainConfig, build, parse_params
from support.params import repo_params

CLASS_NAMES = ["Audi A4 Sedan 2012", "Audi S4 Sedan 2012", "BMW X5 SUV 2007", "BMW M3 Coupe 2012",
               "Ford F-150 Regular Cab 2012", "Ford Mustang Convertible 2007"]


CROP_SIZE = 20


IMAGE_SIZE = 16


PER_CLASS = {"train": 5, "val": 2, "test": 3}


CNN_WIDTHS = [4, 8]       # backbone dim 8


HEAD_HIDDEN = 6           # penultimate dim 6


NOISE = 20.0


def raw_params() -> dict:
    """params.yaml with CPU-tiny evaluate/embed settings."""
    raw = repo_params()
    raw["evaluate"].update(batch_size=7, latency_warmup=1, latency_runs=2, misclassified=4, confused_pairs=3)
    raw["embed"]["batch_size"] = 5
    raw["base"]["threads"] = 1        # stage subprocesses: tiny tensors, and pytest may share the cores
    return raw


def class_colours() -> np.ndarray:
    """One distinct RGB colour per class, so even a random CNN's features separate the classes."""
    rng = np.random.default_rng(123)
    return rng.integers(30, 225, size=(len(CLASS_NAMES), 3)).astype(np.float64)


def boxed_photo(path: Path, width: int, height: int, box: tuple[int, int, int, int], label: int = 2) -> Path:
    """A black ``width`` x ``height`` JPEG with a "car" of class ``label``'s colour in ``box`` (1-based inclusive)."""
    from PIL import Image

    photo = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box
    photo[y1 - 1:y2, x1 - 1:x2] = class_colours()[label].astype(np.uint8)
    Image.fromarray(photo).save(path, quality=95)
    return path


def write_store(crops: Path, seed: int = 0, train_classes: int = 0) -> None:
    """A crop store (:func:`carbench.data.store.write_store`) of noisy single-colour crops; ``train_classes``: the
    class-disjoint protocol's store (train and val hold the first classes, test the others)."""
    from dataclasses import replace

    from carbench.data.store import write_meta
    from carbench.data.store import write_store as write

    rng = np.random.default_rng(seed)
    colours = class_colours()
    splits = {}
    for split, n in PER_CLASS.items():
        ids = np.arange(len(CLASS_NAMES))
        if train_classes:
            ids = ids[train_classes:] if split == "test" else ids[:train_classes]
        labels = np.repeat(ids, n)
        pixels = colours[labels][:, None, None, :] + rng.normal(0, NOISE, (len(labels), CROP_SIZE, CROP_SIZE, 3))
        splits[split] = (np.clip(pixels, 0, 255).astype(np.uint8),
                         [f"cars_{split}/{i:05d}.jpg" for i in range(len(labels))], labels)
    meta = write(crops, splits, CLASS_NAMES)
    if train_classes:
        write_meta(crops, replace(meta, train_classes=train_classes))


def write_checkpoint(path: Path, seed: int = 0, classes: int = len(CLASS_NAMES)) -> None:
    """A tiny untrained scratch-CNN classifier checkpoint in the real format (ARCHITECTURE.md §4)."""
    from carbench.model.build import build_model
    from carbench.model.checkpoint import make_checkpoint, save_checkpoint

    raw = raw_params()
    model_cfg = build(ModelConfig, {**raw["model"], "arch": "cnn", "weights": "none", "cnn_widths": CNN_WIDTHS,
                                    "head_hidden": HEAD_HIDDEN}, "model")
    train_cfg = build(TrainConfig, {**raw["train"], "image_size": IMAGE_SIZE}, "train")
    torch.manual_seed(seed)
    model = build_model(model_cfg, classes, pretrained=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(make_checkpoint(model, model_cfg, train_cfg, CLASS_NAMES[:classes], 1, 0.5, {}, {}), path)


def make_world(tmp_path: Path, raw: dict | None = None, train_classes: int = 0) -> SimpleNamespace:
    """Crop store + a checkpoint for every trained experiment + parsed params, under ``tmp_path``;
    ``train_classes``: under the class-disjoint protocol (the checkpoints know the train half's classes only)."""
    raw = copy.deepcopy(raw or raw_params())
    params = parse_params(raw)
    crops, models = tmp_path / "data" / "crops", tmp_path / "models"
    write_store(crops, train_classes=train_classes)
    for i, name in enumerate(params.trained):
        write_checkpoint(models / name / "best.pt", seed=i, classes=train_classes or len(CLASS_NAMES))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return SimpleNamespace(root=tmp_path, raw=raw, params=params, params_file=params_file, crops=crops,
                           models=models)


def fit_retrieval(world: SimpleNamespace, name: str) -> None:
    """embed + knn for retrieval experiment ``name`` into the world's conventional paths."""
    from carbench.config import experiment
    from carbench.retrieval.embed import embed_experiment
    from carbench.retrieval.knn import fit_and_save

    exp = experiment(world.params, name)
    emb = world.root / "data" / "embeddings" / name
    embed_experiment(exp, world.crops, world.models, emb, "cpu")
    fit_and_save(exp.knn, emb, world.models / name, world.root / "metrics" / "knn" / f"{name}.json",
                 world.params.base.seed)
