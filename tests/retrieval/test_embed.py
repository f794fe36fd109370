"""carbench.retrieval.embed on a tiny crop store and a tiny checkpoint; also the tiny-world builder shared by
test_predictor / test_evaluate / test_predict (imported from here)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.params import ROOT
from support.retrieval import (
    CLASS_NAMES,
    CNN_WIDTHS,
    HEAD_HIDDEN,
    PER_CLASS,
    make_world,
    raw_params,
)

# Tiny tensors: one torch thread avoids OpenMP hand-off costs (10x slower convs on a busy 2-core box).
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- tests
RETRIEVAL = "knn_resnet50_k3"      # embedder: tl_resnet50_finetune


def test_embed_writes_the_store_format(tmp_path):
    from carbench.config import experiment
    from carbench.core.io import file_md5
    from carbench.retrieval.embed import embed_experiment
    from carbench.retrieval.embedding_store import load_embeddings

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
    from carbench.config import experiment
    from carbench.model.checkpoint import load_classifier
    from carbench.model.preprocess import eval_preprocess
    from carbench.retrieval.embed import embed_experiment
    from carbench.retrieval.embedding_store import load_embeddings

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
    from carbench.retrieval.embedding_store import load_embeddings

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
    from carbench.core.errors import UserError
    from carbench.retrieval.embed import embed_experiment

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


def test_a_pretrained_baseline_embeds_with_untrained_weights_and_its_knn_model_predicts(tmp_path, monkeypatch):
    """dag.pretrained: no checkpoint exists for the baseline; embed@ builds MobileNetV2 with its ImageNet weights (the
    offline pip package), the k-NN model pins that weights file by md5, and the predictor rebuilds the same embedder."""
    from carbench.config import experiment
    from carbench.retrieval.embed import embed_experiment
    from carbench.retrieval.knn import fit_and_save
    from carbench.retrieval.predictor import KnnPredictor, load_predictor

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))   # an empty cache: the bundled file is copied in
    raw = raw_params()
    raw["dag"]["pretrained"]["knn_imagenet_baseline"] = {"arch": "mobilenet_v2", "weights": "IMAGENET1K_V1",
                                                         "image_size": 32}
    world = make_world(tmp_path, raw)
    exp = experiment(world.params, "knn_imagenet_baseline")
    emb = tmp_path / "emb"
    meta = embed_experiment(exp, world.crops, world.models / "absent", emb, "cpu", offline=True)
    assert meta["embedder"] == {"arch": "mobilenet_v2", "weights": "IMAGENET1K_V1", "image_size": 32}
    assert meta["dim"] == 1280 and meta["checkpoint"] == "mobilenet_v2-b0353104.pth"   # no per-machine cache path
    fit_and_save(exp.knn, emb, world.models / exp.name, tmp_path / "knn.json", 0)
    predictor = load_predictor(world.models / exp.name, "cpu", world.models)
    assert isinstance(predictor, KnnPredictor) and predictor.embedder.image_size == 32
    images = np.load(world.crops / "test.npy")[:2]
    stored = np.load(emb / "embeddings.npz")["query"][:2].astype(np.float32)
    assert predictor.embed(images) == pytest.approx(stored, abs=1e-3)     # the stage's embedder, rebuilt
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    cached.write_bytes(cached.read_bytes()[:-1] + b"\0")
    with pytest.raises(Exception, match="is stale"):
        load_predictor(world.models / exp.name, "cpu", world.models)
