"""carbench.retrieval.knn (with carbench.retrieval.embedding_store): votes, preprocessing fitted on the gallery only,
whitening, the saved model, the knn stage function."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from support.params import params_with

from carbench.config import ConfigError, KnnConfig
from carbench.core.errors import UserError
from carbench.retrieval import embedding_store as E
from carbench.retrieval import knn as K
from carbench.retrieval.knn import fit_preprocessing


def knn_cfg(**over) -> KnnConfig:
    base = dict(k=3, metric="euclidean", weighting="uniform", standardize=False, pca_components=0,
                backend="torch", faiss_min_gallery=0, retrieval_ks=(1, 2, 4), classical="none")
    return KnnConfig(**{**base, **over})


def make_store(tmp_path, gallery, gallery_labels, query, query_labels, num_classes=None):
    """Write a tiny embedding store (§5) and return its directory."""
    n_classes = num_classes or int(max(gallery_labels.max(), query_labels.max())) + 1
    emb = E.Embeddings(gallery=np.asarray(gallery, np.float32), gallery_labels=np.asarray(gallery_labels),
                       gallery_split=np.array(["train"] * len(gallery)), gallery_row=np.arange(len(gallery)),
                       query=np.asarray(query, np.float32), query_labels=np.asarray(query_labels),
                       meta={"embedder": "emb", "checkpoint_md5": "0" * 32, "layer": "backbone",
                             "l2_normalize": False, "class_names": [f"c{i}" for i in range(n_classes)]})
    out = tmp_path / "emb"
    out.mkdir()
    E.save_embeddings(emb, out)
    return out


# ----------------------------------------------------------------------------- voting
def test_uniform_vote_counts_neighbours():
    probs = K.vote(np.array([[0, 2, 2]]), np.array([[1.0, 2.0, 4.0]]), 3, "uniform")
    assert probs[0] == pytest.approx([1 / 3, 0.0, 2 / 3], abs=1e-5)
    assert probs.sum() == pytest.approx(1.0)


def test_uniform_tie_goes_to_nearer_neighbour():
    probs = K.vote(np.array([[1, 0]]), np.array([[1.0, 2.0]]), 2, "uniform")
    assert probs[0, 1] > probs[0, 0]
    assert probs[0] == pytest.approx([0.5, 0.5], abs=1e-5)


def test_distance_vote_weights_by_inverse_distance():
    # weights 1, 1/2, 1/4 -> class 0: 1/1.75; uniform voting would pick class 1
    probs = K.vote(np.array([[0, 1, 1]]), np.array([[1.0, 2.0, 4.0]]), 2, "distance")
    assert probs[0] == pytest.approx([1 / 1.75, 0.75 / 1.75])


def test_distance_vote_exact_match_takes_all():
    probs = K.vote(np.array([[1, 0, 0]]), np.array([[0.0, 0.5, 0.5]]), 2, "distance")
    assert probs[0].tolist() == [0.0, 1.0]


# ----------------------------------------------------------------------------- fitting
def test_scaler_and_pca_are_fitted_on_the_gallery_only(tmp_path):
    """Queries far from the gallery would move the fitted means if they leaked into the fit."""
    rng = np.random.default_rng(2)
    gallery = rng.standard_normal((40, 6)) * np.arange(1, 7)
    query = rng.standard_normal((40, 6)) + 1000.0
    labels = np.arange(40) % 4
    store = make_store(tmp_path, gallery, labels, query, labels)
    cfg = knn_cfg(standardize=True, pca_components=3)
    K.fit_and_save(cfg, store, tmp_path / "model", tmp_path / "knn.json", seed=0)
    model = K.load_knn(tmp_path / "model")
    g16 = gallery.astype(np.float16).astype(np.float64)                 # the store keeps float16
    assert model.prep.scaler_mean == pytest.approx(g16.mean(0), abs=1e-3)
    assert model.prep.scaler_scale == pytest.approx(g16.std(0), rel=1e-3)
    assert np.abs(model.prep.pca_mean).max() < 1e-3                      # standardised gallery has mean 0
    assert model.gallery.shape == (40, 3)
    assert np.abs(model.gallery.mean(0)).max() < 1e-3                    # projected gallery is centred


def test_pca_larger_than_data_is_a_user_error():
    with pytest.raises(UserError, match="knn.pca_components"):
        K.fit_preprocessing(np.zeros((5, 4), np.float32), knn_cfg(pca_components=6), 0)


def test_k_larger_than_the_gallery_is_a_user_error(tmp_path):
    store = make_store(tmp_path, np.zeros((4, 2)), np.array([0, 0, 1, 1]), np.zeros((1, 2)), np.array([0]))
    with pytest.raises(UserError, match=r"knn.k \(5\) is larger than the gallery \(4 embeddings\)"):
        K.fit_knn(E.load_embeddings(store), knn_cfg(k=5), 0)


def test_cosine_model_normalises_after_pca():
    rng = np.random.default_rng(3)
    prep = K.fit_preprocessing(rng.standard_normal((30, 5)).astype(np.float32), knn_cfg(metric="cosine",
                                                                                      pca_components=2), 0)
    out = prep.apply(rng.standard_normal((4, 5)))
    assert out.shape == (4, 2) and np.linalg.norm(out, axis=1) == pytest.approx(np.ones(4), abs=1e-6)


@pytest.mark.parametrize("step, loads", [({}, False), ({"standardize": True}, True), ({"pca_components": 2}, True)])
def test_scikit_learn_is_loaded_only_by_a_step_that_uses_it(step, loads):
    """Its import costs 1-2 s of every knn@ process: the default chain (no scaler, no PCA) must not pay it."""
    import subprocess
    import sys

    cfg = {**dict(k=3, metric="euclidean", weighting="uniform", standardize=False, pca_components=0,
                  backend="torch", faiss_min_gallery=0, retrieval_ks=(1,), classical="none"), **step}
    code = ("import sys, numpy as np\n"
            "from carbench.config import KnnConfig\n"
            "from carbench.retrieval import knn as K\n"
            f"K.fit_preprocessing(np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32), "
            f"KnnConfig(**{cfg!r}), 0)\n"
            "print('sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(loads)


# ----------------------------------------------------------------------------- the stage function
def test_fit_and_save_metrics_by_hand(tmp_path):
    # gallery: class 0 at 0 and 1, class 1 at 10 and 11; queries: 0.4 (class 0), 10.2 (class 0: a miss)
    gallery = np.array([[0.0], [1.0], [10.0], [11.0]])
    store = make_store(tmp_path, gallery, np.array([0, 0, 1, 1]), np.array([[0.4], [10.2]]), np.array([0, 0]))
    result = K.fit_and_save(knn_cfg(k=1, retrieval_ks=(1, 2, 4)), store, tmp_path / "m", tmp_path / "k.json", 0)
    assert result["precision_at_k"] == pytest.approx(0.5)
    assert result["recall_at_1"] == pytest.approx(0.5)
    assert result["recall_at_2"] == pytest.approx(0.5)       # query 2's two nearest are both class 1
    assert result["recall_at_4"] == pytest.approx(1.0)
    assert result["map_at_r"] == pytest.approx(0.5)          # AP@2 = 1 and 0
    assert result["mean_neighbor_distance"] == pytest.approx((0.4 + 0.2) / 2, abs=1e-2)   # float16 store
    assert result["top1"] == pytest.approx(0.5) and result["top5"] == pytest.approx(1.0)
    assert result["query_ms_per_image"] > 0
    saved = json.loads((tmp_path / "k.json").read_text())
    assert saved["map_at_r"] == pytest.approx(0.5) and saved["backend"] == "torch"


def test_saved_model_round_trips_and_logreg_runs(tmp_path):
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((3, 8)) * 5
    g_lab, q_lab = np.repeat(np.arange(3), 10), np.repeat(np.arange(3), 4)
    gallery = centres[g_lab] + rng.standard_normal((30, 8))
    query = centres[q_lab] + rng.standard_normal((12, 8))
    store = make_store(tmp_path, gallery, g_lab, query, q_lab)
    cfg = knn_cfg(k=5, weighting="distance", standardize=True, classical="logreg")
    result = K.fit_and_save(cfg, store, tmp_path / "m", tmp_path / "k.json", 0)
    assert result["logreg_top1"] > 0.9 and result["top1"] > 0.9
    model = K.load_knn(tmp_path / "m")
    assert model.config == cfg and model.info["embedder"] == "emb"
    fitted = K.fit_knn(E.load_embeddings(store), cfg, 0)
    assert np.array_equal(model.predict_proba(query), fitted.predict_proba(query))
    assert model.index("cpu") is model.index("cpu")          # built once, reused by every query


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="embeddings.npz"):
        E.load_embeddings(tmp_path)
    with pytest.raises(UserError, match="knn.json"):
        K.load_knn(tmp_path)


def _saved_model_with_config(tmp_path, **changes):
    """A saved k-NN model whose knn.json config has ``changes`` applied."""
    store = make_store(tmp_path, np.zeros((4, 2)), np.array([0, 0, 1, 1]), np.zeros((1, 2)), np.array([0]))
    K.fit_and_save(knn_cfg(k=1), store, tmp_path / "m", tmp_path / "k.json", 0)
    meta_path = tmp_path / "m" / K.KNN_META
    meta = json.loads(meta_path.read_text())
    meta["config"].update(changes)
    meta_path.write_text(json.dumps(meta))
    return tmp_path / "m"


@pytest.mark.parametrize("changes, key", [({"k": 0}, "config.k must be >= 1"),
                                          ({"metric": "manhattan"}, "config.metric must be one of"),
                                          ({"retrieval_ks": []}, "config.retrieval_ks must be a non-empty list"),
                                          ({"leaf_size": 30}, "unknown key .*knn.json:config.leaf_size")])
def test_saved_config_is_validated_on_load(tmp_path, changes, key):
    model_dir = _saved_model_with_config(tmp_path, **changes)
    with pytest.raises(ConfigError, match=key):
        K.load_knn(model_dir)


def test_whitening_equals_sklearn_and_gives_unit_variance():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    gallery = (rng.normal(size=(200, 12)) * np.linspace(0.1, 5.0, 12)).astype(np.float32)
    cfg = params_with("knn", pca_components=6, whiten=True).experiments["knn_resnet50_k3"].knn
    assert isinstance(cfg, KnnConfig) and cfg.whiten
    prep = fit_preprocessing(gallery, cfg, seed=0)
    out = prep.apply(gallery)
    reference = PCA(n_components=6, whiten=True, svd_solver="covariance_eigh").fit(gallery).transform(gallery)
    assert np.allclose(np.abs(out), np.abs(reference), atol=1e-3)  # components are defined up to sign
    assert np.allclose(out.var(0, ddof=1), 1.0, atol=1e-3)
    unwhitened = fit_preprocessing(gallery, dataclasses.replace(cfg, whiten=False), seed=0).apply(gallery)
    assert not np.allclose(unwhitened.var(0, ddof=1), 1.0, atol=0.1)


def test_random_forest_is_seeded_and_writes_its_predictions(tmp_path):
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((3, 8)) * 5
    g_lab, q_lab = np.repeat(np.arange(3), 10), np.repeat(np.arange(3), 4)
    store = make_store(tmp_path, centres[g_lab] + rng.standard_normal((30, 8)), g_lab,
                       centres[q_lab] + rng.standard_normal((12, 8)), q_lab)
    cfg = knn_cfg(classical="random_forest", forest_trees=7)
    result = K.fit_and_save(cfg, store, tmp_path / "m", tmp_path / "k.json", 3, tables_dir=tmp_path / "t")
    written = (tmp_path / "t" / K.CLASSICAL_CSV).read_text().splitlines()
    assert written[0] == "image,true,predicted,correct" and len(written) == 1 + len(q_lab)
    rows = np.array([list(map(int, line.split(","))) for line in written[1:]])
    assert rows[:, 0].tolist() == list(range(len(q_lab))) and rows[:, 1].tolist() == q_lab.tolist()
    assert result["random_forest_top1"] == pytest.approx(rows[:, 3].mean()) and result["random_forest_top1"] > 0.9
    model = K.load_knn(tmp_path / "m")
    query = E.load_embeddings(store).query
    forests = [K.classical_predictions(model, query, seed) for seed in (3, 3, 4)]
    assert np.array_equal(forests[0], forests[1]) and np.array_equal(forests[0], rows[:, 2])
    from sklearn.ensemble import RandomForestClassifier          # the trees and the seed reach scikit-learn

    clf = RandomForestClassifier(n_estimators=7, random_state=3).fit(model.gallery, model.gallery_labels)
    assert np.array_equal(clf.predict(model.prep.apply(query)), forests[0])
    K.fit_and_save(knn_cfg(), store, tmp_path / "m", tmp_path / "k.json", 3, tables_dir=tmp_path / "t")
    assert list((tmp_path / "t").iterdir()) == []                  # classical: none writes no predictions
