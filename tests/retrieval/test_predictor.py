"""carbench.retrieval.predictor: one interface for classifier and k-NN models, with the staleness check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from support.retrieval import CLASS_NAMES, fit_retrieval, make_world, write_checkpoint

from carbench.core.errors import UserError
from carbench.retrieval.embedding_store import load_embeddings
from carbench.retrieval.knn import load_knn
from carbench.retrieval.predictor import (
    ClassifierPredictor,
    KnnPredictor,
    load_predictor,
)

pytestmark = pytest.mark.usefixtures("one_thread")

RETRIEVAL, EMBEDDER = "knn_resnet50_k3", "tl_resnet50_finetune"


@pytest.fixture()
def world(tmp_path):
    w = make_world(tmp_path)
    fit_retrieval(w, RETRIEVAL)
    return w


def test_classifier_predictor(world):
    from carbench.model.carnet import count_parameters

    pred = load_predictor(world.models / "cnn_basic", "cpu", world.models)
    assert isinstance(pred, ClassifierPredictor) and pred.kind == "classifier"
    test = np.load(world.crops / "test.npy", mmap_mode="r")          # read-only memory map is fine
    probs, logits = pred.predict(test), pred.logits(torch.from_numpy(np.array(test)))
    assert probs.shape == (len(test), len(CLASS_NAMES)) and probs.dtype == torch.float32
    assert probs.sum(1) == pytest.approx(torch.ones(len(test)), abs=1e-5)
    assert torch.allclose(torch.softmax(logits, 1), probs, atol=1e-6)
    assert pred.class_names == CLASS_NAMES
    assert pred.num_parameters == count_parameters(pred.model)
    assert pred.size_bytes == (world.models / "cnn_basic" / "best.pt").stat().st_size


def test_knn_predictor_reproduces_the_knn_stage(world):
    pred = load_predictor(world.models / RETRIEVAL, "cpu", world.models)
    assert isinstance(pred, KnnPredictor) and pred.kind == "knn" and pred.logits(None) is None
    test = np.load(world.crops / "test.npy")
    emb = load_embeddings(world.root / "data" / "embeddings" / RETRIEVAL)
    assert np.array_equal(pred.embed(test), emb.query)                 # bit-identical to the stored queries
    knn = load_knn(world.models / RETRIEVAL)
    assert np.array_equal(pred.predict(test).numpy(), knn.predict_proba(emb.query))
    dist, idx = pred.kneighbors(test[:2], k=4)
    assert dist.shape == idx.shape == (2, 4) and (np.diff(dist, axis=1) >= 0).all()
    files = [world.models / RETRIEVAL / f for f in ("knn.npz", "knn.json")] + [world.models / EMBEDDER / "best.pt"]
    assert pred.size_bytes == sum(f.stat().st_size for f in files)
    assert pred.num_parameters == load_predictor(world.models / EMBEDDER, "cpu", world.models).num_parameters


def test_stale_embedder_checkpoint_is_detected(world):
    write_checkpoint(world.models / EMBEDDER / "best.pt", seed=99)     # retrained after the k-NN was fitted
    with pytest.raises(UserError, match="stale.*re-run embed and knn"):
        load_predictor(world.models / RETRIEVAL, "cpu", world.models)


def test_missing_or_empty_model_dirs(world):
    with pytest.raises(UserError, match="model directory not found"):
        load_predictor(world.models / "nope", "cpu", world.models)
    (world.models / "empty").mkdir()
    with pytest.raises(UserError, match="neither best.pt"):
        load_predictor(world.models / "empty", "cpu", world.models)
    (world.models / EMBEDDER / "best.pt").unlink()
    with pytest.raises(UserError, match="embedder checkpoint"):
        load_predictor(world.models / RETRIEVAL, "cpu", world.models)
