"""carbench.workshop.tuning and its commands scripts/tune.py and scripts/tune_frozen.py: the val-only tuner behind the dev98
defaults (grid expansion, loud typos, val-only reads, k-NN scoring on a trained model's embeddings, and the --test
mode that refits and scores like the pipeline)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml
from support.params import ROOT, repo_params

from carbench.workshop import tuning
from carbench.config import parse_params
from carbench.core.errors import UserError
from carbench.train.engine import use_feature_cache

TINY = {"train.epochs": 2, "train.image_size": 32, "train.batch_size": 16}


@pytest.fixture
def raw() -> dict:
    """Committed params on the CPU, every retrieval experiment embedded by cnn_basic (no pretrained weights)."""
    params = repo_params({"base": {"device": "cpu", "threads": 1}})
    params["dag"]["retrieval"] = {name: "cnn_basic" for name in params["dag"]["retrieval"]}
    return params


@pytest.fixture
def reads(monkeypatch) -> list:
    """The splits the engine opens, in order."""
    import carbench.train.batches as batches

    seen: list = []
    original = batches.read_split

    def spy(crops_dir, split):
        seen.append(split)
        return original(crops_dir, split)

    monkeypatch.setattr(batches, "read_split", spy)
    return seen


def test_expand_makes_one_run_per_combination_and_filters_by_experiment():
    grid = {"runs": [{"experiment": "cnn_basic", "set": {"train.epochs": 3},
                      "vary": {"train.lr": [0.1, 0.2], "train.augment": ["none", "light", "strong"]}},
                     {"experiment": "cnn_residual"}]}
    runs = tuning.expand(grid, set())
    assert len(runs) == 7
    assert runs[0]["settings"] == {"train.epochs": 3, "train.lr": 0.1, "train.augment": "none"}
    assert runs[-1] == {"experiment": "cnn_residual", "settings": {}, "knn": None}
    assert [r["experiment"] for r in tuning.expand(grid, {"cnn_residual"})] == ["cnn_residual"]
    with pytest.raises(UserError, match="unknown keys"):
        tuning.expand({"runs": [{"experiment": "cnn_basic", "sets": {}}]}, set())


def test_settings_land_under_the_experiment_and_typos_fail_before_training(raw):
    changed = tuning.with_settings(raw, "cnn_basic", {"train.lr": 0.5, "model.cnn_dropout": 0.25})
    assert changed["experiments"]["cnn_basic"]["train"]["lr"] == 0.5
    assert changed["experiments"]["cnn_basic"]["model"]["cnn_dropout"] == 0.25
    assert "cnn_dropout" not in raw["experiments"]["cnn_basic"]["model"]  # the input is left as it was
    tuning.validate(raw, [{"experiment": "cnn_basic", "settings": {"train.lr": 0.5}, "knn": {"k": [1, 3]}}])
    from carbench.config import ConfigError

    with pytest.raises(ConfigError, match="lrr"):
        tuning.validate(raw, [{"experiment": "cnn_basic", "settings": {"train.lrr": 0.5}, "knn": None}])
    with pytest.raises(UserError, match=r"unknown knn keys \['kk'\]"):
        tuning.validate(raw, [{"experiment": "cnn_basic", "settings": {}, "knn": {"kk": [1]}}])
    with pytest.raises(UserError, match="unknown experiment"):
        tuning.with_settings(raw, "cnn_nope", {})


def test_a_run_is_scored_on_val_and_never_reads_test(raw, synthetic_crops, reads, one_thread):
    knn_grid = {"k": [1, 3], "metric": ["euclidean", "cosine"], "pca_components": [0, 4], "whiten": [False, True]}
    row = tuning.run_one(raw, {"experiment": "cnn_basic", "settings": TINY, "knn": knn_grid}, str(synthetic_crops))
    assert "test" not in reads and {"train", "val"} <= set(reads)
    assert row["experiment"] == "cnn_basic" and row["epochs_run"] == 2 and 1 <= row["best_epoch"] <= 2
    assert 0.0 <= row["last_val_top1"] <= row["val_top1"] <= 1.0
    # whitening needs PCA: 2 k x 2 metrics x (no PCA, PCA, PCA + whitening) settings
    assert len(row["knn"]) == 12 and not any(r["whiten"] and not r["pca_components"] for r in row["knn"])
    assert all(0.0 <= r["val_top1"] <= 1.0 for r in row["knn"])
    one_nn = [r["val_top1"] for r in row["knn"] if r["k"] == 1 and not r["pca_components"]]
    assert one_nn[0] == one_nn[1]  # on L2-normalised embeddings Euclidean and cosine rank alike


def test_test_mode_refits_and_scores_the_experiment_and_its_retrieval_experiments(raw, synthetic_crops, reads,
                                                                                 one_thread):
    run = {"experiment": "cnn_basic", "settings": {**TINY, "train.refit": True}, "knn": None}
    row = tuning.run_one(raw, run, str(synthetic_crops), test=True)
    test = row["test"]
    assert reads.index("test") > reads.index("val")  # test is opened only once training is over
    assert test["refit_epochs"] == row["best_epoch"]
    assert set(test) == {"refit_epochs", "cnn_basic", "knn_resnet50_k3", "knn_resnet50_k10", "knn_densenet121_cosine"}
    for name in set(test) - {"refit_epochs"}:
        assert 0.0 <= test[name]["top1"] <= test[name]["top5"] <= 1.0 and 0.0 <= test[name]["f1_macro"] <= 1.0
    no_refit = tuning.run_one(raw, {**run, "settings": TINY}, str(synthetic_crops), test=True)
    assert no_refit["test"]["refit_epochs"] == 0


def test_command_line_runs_jobs_in_parallel_and_reports_the_best(raw, synthetic_crops, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"runs": [{"experiment": "cnn_basic", "set": {**TINY, "train.epochs": 1},
                                              "vary": {"train.lr": [0.001, 0.01]}}]}))
    out = tmp_path / "runs.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "tune.py"), "--params", str(params), "--crops",
                           str(synthetic_crops), "--grid", str(grid), "--jobs", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1",
                                                                            "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    rows = [line for line in lines if "val_top1" in line]
    assert lines[0] == {"runs": 2, "jobs": 2} and len(rows) == 2
    assert sorted(r["settings"]["train.lr"] for r in rows) == [0.001, 0.01]
    assert lines[-1]["best"]["cnn_basic"]["val_top1"] == max(r["val_top1"] for r in rows)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_knn_scores_equal_the_knn_stage_model_setting_by_setting():
    """The grid shares one search per preprocessing and slices it by k: each row must equal what fit_knn's model
    (the knn stage) predicts for that one setting."""
    import numpy as np

    from carbench.config import parse_params
    from carbench.retrieval.embedding_store import Embeddings
    from carbench.retrieval.knn import fit_knn

    rng = np.random.default_rng(0)
    labels = np.arange(60) % 4
    gallery = rng.normal(size=(60, 8)).astype(np.float32) + labels[:, None]
    queries = rng.normal(size=(25, 8)).astype(np.float32) + (np.arange(25) % 4)[:, None]
    q_labels = np.arange(25) % 4
    base = parse_params(repo_params()).experiments["knn_resnet50_k3"].knn
    grid = {"k": [1, 3, 7], "weighting": ["uniform", "distance"], "metric": ["euclidean", "cosine"],
            "pca_components": [0, 4], "whiten": [False, True]}
    rows = tuning.knn_scores(gallery, labels, queries, q_labels, base, grid, 4, 0)
    assert len(rows) == 3 * 2 * 2 * 3
    emb = Embeddings(gallery=gallery, gallery_labels=labels, gallery_split=np.full(60, "train"),
                     gallery_row=np.arange(60), query=queries, query_labels=q_labels, meta={"class_names": list("abcd")})
    for row in rows:
        cfg = dataclasses.replace(base, **{k: v for k, v in row.items() if k != "val_top1"})
        expected = float((fit_knn(emb, cfg, 0).predict_proba(queries).argmax(1) == q_labels).mean())
        assert row["val_top1"] == expected, row


def test_tune_frozen_scores_heads_and_knn_on_cached_features(raw, synthetic_crops, tmp_path):
    raw["experiments"]["cnn_basic"]["model"]["freeze"] = "frozen"   # a frozen backbone needs no weights file here
    raw["experiments"]["cnn_basic"]["train"].update(augment="none", image_size=32, batch_size=16)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "tune_frozen.py"), "--params", str(params),
                           "--crops", str(synthetic_crops), "--experiment", "cnn_basic", "--lr", "0.01",
                           "--epochs", "2", "--label-smoothing", "0", "--k", "1,3", "--pca", "0,4"],
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1",
                                                                            "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    heads = [r for r in lines if r.get("kind") == "head"]
    knns = [r for r in lines if r.get("kind") == "knn"]
    assert len(heads) == 1 and 1 <= heads[0]["best_epoch"] <= 2
    assert len(knns) == 2 * 3 * 2 * 2   # metrics x (no PCA, PCA, PCA + whitening) x k x weighting
    assert lines[-1]["best"]["knn"]["val_top1"] == max(r["val_top1"] for r in knns)


def test_dev98_overrides_are_valid_and_keep_each_experiment_identity():
    import yaml
    from support.params import ROOT, deep_merge

    overrides = yaml.safe_load((ROOT / "configs" / "overrides" / "dev98.yaml").read_text())
    params = parse_params(deep_merge(repo_params(), overrides))
    ex = params.experiments
    for name in ("tl_resnet50_frozen", "tl_resnet50_finetune", "tl_densenet121_progressive"):
        assert (ex[name].model.arch, ex[name].model.weights) == ("mobilenet_v2", "IMAGENET1K_V1"), name
    frozen = ex["tl_resnet50_frozen"]
    assert frozen.model.freeze == "frozen" and frozen.model.head_hidden == 0 and use_feature_cache(frozen)
    assert ex["tl_resnet50_finetune"].model.freeze == "full"
    assert ex["tl_densenet121_progressive"].model.freeze == "progressive"
    basic, bn, res = (ex[n].model for n in ("cnn_basic", "cnn_bn_dropout", "cnn_residual"))
    assert not (basic.cnn_batch_norm or basic.cnn_dropout or basic.head_dropout or basic.cnn_residual)
    assert bn.cnn_batch_norm and bn.cnn_dropout > 0 and not bn.cnn_residual
    assert res.cnn_batch_norm and res.cnn_residual
    k3, k10, cosine = (ex[n] for n in ("knn_resnet50_k3", "knn_resnet50_k10", "knn_densenet121_cosine"))
    assert (k3.knn.k, k3.knn.metric, k3.embedder) == (3, "euclidean", "tl_resnet50_finetune")
    assert (k10.knn.k, k10.knn.weighting, k10.embedder) == (10, "distance", "tl_resnet50_finetune")
    assert (cosine.knn.metric, cosine.embedder) == ("cosine", "tl_densenet121_progressive")


def test_the_dev98_tuning_grids_are_valid_against_the_params():
    """configs/grids/ (tune_dev98_round*.yaml, final_dev98.yaml: scripts/tune.py) name real experiments and keys."""
    import yaml
    from support.params import ROOT, deep_merge

    raw = deep_merge(repo_params(), yaml.safe_load((ROOT / "configs" / "overrides" / "dev98.yaml").read_text()))
    grids = sorted((ROOT / "configs" / "grids").glob("*.yaml"))     # rounds 1-3 and final_dev98.yaml
    assert len(grids) == 4
    for grid in grids:
        runs = tuning.expand(yaml.safe_load(grid.read_text()), set())
        assert runs, grid
        tuning.validate(raw, runs)
