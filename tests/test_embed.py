"""carbench.retrieval.embed on a tiny crop store and a tiny checkpoint; also the tiny-world builder shared by
test_predictor / test_evaluate / test_predict (imported from here)."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from carbench.config import ModelConfig, TrainConfig, build, parse_params
from conftest import repo_params

ROOT = Path(__file__).resolve().parents[1]
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


def write_store(crops: Path, seed: int = 0) -> None:
    """A crop store (:func:`carbench.data.store.write_store`) of noisy single-colour crops."""
    from carbench.data.store import write_store as write

    rng = np.random.default_rng(seed)
    colours = class_colours()
    splits = {}
    for split, n in PER_CLASS.items():
        labels = np.repeat(np.arange(len(CLASS_NAMES)), n)
        pixels = colours[labels][:, None, None, :] + rng.normal(0, NOISE, (len(labels), CROP_SIZE, CROP_SIZE, 3))
        splits[split] = (np.clip(pixels, 0, 255).astype(np.uint8),
                         [f"cars_{split}/{i:05d}.jpg" for i in range(len(labels))], labels)
    write(crops, splits, CLASS_NAMES)


def write_checkpoint(path: Path, seed: int = 0) -> None:
    """A tiny untrained scratch-CNN classifier checkpoint in the real format (ARCHITECTURE.md §4)."""
    from carbench.model.checkpoint import make_checkpoint, save_checkpoint
    from carbench.model.build import build_model

    raw = raw_params()
    model_cfg = build(ModelConfig, {**raw["model"], "arch": "cnn", "weights": "none", "cnn_widths": CNN_WIDTHS,
                                    "head_hidden": HEAD_HIDDEN}, "model")
    train_cfg = build(TrainConfig, {**raw["train"], "image_size": IMAGE_SIZE}, "train")
    torch.manual_seed(seed)
    model = build_model(model_cfg, len(CLASS_NAMES), pretrained=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(make_checkpoint(model, model_cfg, train_cfg, CLASS_NAMES, 1, 0.5, {}, {}), path)


def make_world(tmp_path: Path, raw: dict | None = None) -> SimpleNamespace:
    """Crop store + a checkpoint for every trained experiment + parsed params, under ``tmp_path``."""
    raw = copy.deepcopy(raw or raw_params())
    params = parse_params(raw)
    crops, models = tmp_path / "data" / "crops", tmp_path / "models"
    write_store(crops)
    for i, name in enumerate(params.trained):
        write_checkpoint(models / name / "best.pt", seed=i)
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


# Tiny tensors: one torch thread avoids OpenMP hand-off costs (10x slower convs on a busy 2-core box).
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- tests
RETRIEVAL = "knn_resnet50_k3"      # embedder: tl_resnet50_finetune


def test_embed_writes_the_store_format(tmp_path):
    from carbench.config import experiment
    from carbench.retrieval.embed import embed_experiment
    from carbench.retrieval.embeddings import load_embeddings
    from carbench.io import file_md5

    world = make_world(tmp_path)
    out = tmp_path / "emb"
    meta = embed_experiment(experiment(world.params, RETRIEVAL), world.crops, world.models, out, "cpu")
    with np.load(out / "embeddings.npz") as z:
        assert z["gallery"].dtype == np.float16 and z["query"].dtype == np.float16
        assert z["gallery_labels"].dtype == np.int64
    emb = load_embeddings(out)
    n_cls = len(CLASS_NAMES)
    assert emb.gallery.shape == ((PER_CLASS["train"] + PER_CLASS["val"]) * n_cls, CNN_WIDTHS[-1])
    assert emb.query.shape == (PER_CLASS["test"] * n_cls, CNN_WIDTHS[-1])
    assert sorted(set(emb.gallery_split.tolist())) == ["train", "val"]
    val = emb.gallery_split == "val"
    assert emb.gallery_row[val].tolist() == list(range(PER_CLASS["val"] * n_cls))
    assert np.linalg.norm(emb.gallery, axis=1) == pytest.approx(np.ones(len(emb.gallery)), abs=2e-3)
    ckpt = world.models / "tl_resnet50_finetune" / "best.pt"
    assert meta["checkpoint_md5"] == file_md5(ckpt) and meta["embedder"] == "tl_resnet50_finetune"
    assert json.loads((out / "meta.json").read_text())["layer"] == "backbone"


def test_embed_matches_the_model_features(tmp_path):
    from carbench.model.checkpoint import load_classifier
    from carbench.config import experiment
    from carbench.retrieval.embed import embed_experiment
    from carbench.model.preprocess import eval_preprocess
    from carbench.retrieval.embeddings import load_embeddings

    world = make_world(tmp_path)
    embed_experiment(experiment(world.params, RETRIEVAL), world.crops, world.models, tmp_path / "emb", "cpu")
    emb = load_embeddings(tmp_path / "emb")
    model, ckpt = load_classifier(world.models / "tl_resnet50_finetune" / "best.pt", "cpu")
    test = np.load(world.crops / "test.npy")
    with torch.no_grad():
        feats = model.features(eval_preprocess(torch.from_numpy(test), ckpt["image_size"], ckpt["mean"], ckpt["std"]))
    feats = torch.nn.functional.normalize(feats, dim=1).numpy()
    assert emb.query == pytest.approx(feats, abs=2e-3)


def test_penultimate_layer_and_train_only_gallery(tmp_path):
    from carbench.config import experiment
    from carbench.retrieval.embed import embed_experiment
    from carbench.retrieval.embeddings import load_embeddings

    raw = raw_params()
    raw["experiments"][RETRIEVAL]["embed"] = {"layer": "penultimate", "gallery": "train", "l2_normalize": False}
    world = make_world(tmp_path, raw)
    embed_experiment(experiment(world.params, RETRIEVAL), world.crops, world.models, tmp_path / "emb", "cpu")
    emb = load_embeddings(tmp_path / "emb")
    assert emb.gallery.shape == (PER_CLASS["train"] * len(CLASS_NAMES), HEAD_HIDDEN)
    assert set(emb.gallery_split.tolist()) == {"train"}
    assert (emb.gallery >= 0).all()     # after the hidden layer's ReLU, not normalised


def test_embed_errors_name_the_problem(tmp_path):
    from carbench.config import experiment, retrieval_experiment
    from carbench.retrieval.embed import embed_experiment
    from carbench.errors import UserError

    world = make_world(tmp_path)
    with pytest.raises(UserError, match="not a retrieval"):   # the look-up by kind refuses, before any work
        embed_experiment(retrieval_experiment(world.params, "cnn_basic"), world.crops, world.models,
                         tmp_path / "e", "cpu")
    (world.models / "tl_resnet50_finetune" / "best.pt").unlink()
    with pytest.raises(UserError, match="tl_resnet50_finetune/best.pt"):
        embed_experiment(experiment(world.params, RETRIEVAL), world.crops, world.models, tmp_path / "e", "cpu")
    assert not (tmp_path / "e").exists()


def test_embed_and_knn_stages_load_no_table_or_plot_library():
    """Import time is a fixed cost of every stage process: embed@ and knn@ build no table and draw nothing."""
    code = ("import sys, runpy; sys.argv = ['x', '--help']\n"
            "for stage in ('stages/embed.py', 'stages/knn.py'):\n"
            "    try:\n        runpy.run_path(stage, run_name='__main__')\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('pandas', 'matplotlib', 'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
